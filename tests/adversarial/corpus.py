"""The project's own adversarial corpus: hundreds of malformed and hostile files in every accepted format.

>>> cases = build_corpus()                  # deterministic, a few seconds, every file small
>>> python tests/adversarial/corpus.py OUT  # the same cases on disk, with OUT/manifest.json

Each :class:`Case` says which class of attack it belongs to (:data:`CLASSES`), which targets it
applies to (the HTTP service, ``medlens info``, ``medlens predict``), which model it goes to (2D
classifier, 3D segmenter) and what a correct answer is: ``error`` (a clean refusal: a 4xx JSON
answer, exit status 2), ``ok`` (a valid file that must be answered) or ``either`` (a clean answer of
either kind, e.g. a bit flip in a field no reader uses). Whatever the expectation, no answer may
take more than 5 s or 1 GB, print a traceback or quote a marker string. The classes follow issue 20;
the builders live in :mod:`adversarial.classes`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adversarial import classes
from adversarial.samples import MARKER, MARKERS

__all__ = ["CLASSES", "Case", "MARKER", "MARKERS", "build_corpus", "fast_subset", "write_corpus"]

#: attack class -> what it is
CLASSES = {
    "valid": "control: small valid files in every format (the judge must be able to pass)",
    "truncation": "a valid file cut at many offsets",
    "bitflip": "a valid file with seeded bit flips in its header",
    "dims": "absurd declared dimensions over little data",
    "spacing": "absurd spacings and spacing ratios (resampling, heat-map overlays)",
    "bomb": "decoder bombs: gzip / zlib / deflate / JPEG / PNG streams far larger than declared",
    "lying": "headers that contradict their data or the standard",
    "zip": "zip oddities: empty, marker and odd entry names",
    "marker": "a marker string in every text field, UID, entry name and file name",
    "upload": "tests/deploy/corpus.py's malformed uploads",
}
TARGETS = ("service", "info", "predict")
EXTENSIONS = {"dicom": ".dcm", "dicom_zip": ".zip", "nifti": ".nii", "nifti_gz": ".nii.gz", "mha": ".mha",
              "nrrd": ".nrrd", "png": ".png", "jpeg": ".jpg", "npy": ".npy", "npz": ".npz", "other": ".bin"}


@dataclass(frozen=True)
class Case:
    """One adversarial file.

    Attributes:
        name: unique, ``[a-z0-9_]``; the file on disk is ``name + extension`` unless ``filename`` says otherwise.
        data: the file's bytes (a zipped series for ``dicom_zip``).
        format: a key of :data:`EXTENSIONS`.
        kind: a key of :data:`CLASSES`.
        expect: ``error``, ``ok`` or ``either``.
        dims: 2 (the classification bundle) or 3 (the segmentation bundle).
        targets: a subset of :data:`TARGETS`.
        members: for a DICOM series, its files (relative name, bytes): the CLI reads them as a folder.
        filename: the name sent or written, when it is part of the attack (a marker in it).
        cli_expect: the CLI's expectation where it differs from the service's (the CLI may follow a header
            to another of the user's own files, which the service must refuse).
        info_expect: ``medlens info``'s where it differs again (it reads without resampling, and reports NaN).
        cli_limits: whether the 5 s / 1 GB limits hold in the CLI: not for a valid image whose work fits the
            CLI's larger budget (a real 12000 x 12000 JPEG, 16 mm voxels resampled to the plan's spacing).
        note: why the expectation is what it is, where that is not obvious.
    """

    name: str
    data: bytes
    format: str
    kind: str
    expect: str = "error"
    dims: int = 2
    targets: frozenset[str] = frozenset(TARGETS)
    members: tuple[tuple[str, bytes], ...] = ()
    filename: str = ""
    cli_expect: str = ""
    info_expect: str = ""
    cli_limits: bool = True
    note: str = field(default="", compare=False)

    @property
    def file_name(self) -> str:
        return self.filename or self.name + EXTENSIONS[self.format]

    def applies_to(self, target: str) -> bool:
        return target in self.targets

    def expectation(self, target: str) -> str:
        """``error``, ``ok`` or ``either`` for ``target`` (``service``, ``info``, ``predict``, ``inspect``)."""
        if target == "service":
            return self.expect
        if target == "info" and self.info_expect:
            return self.info_expect
        return self.cli_expect or self.expect

    def write(self, folder: Path) -> Path:
        """The case on disk under ``folder``: a file, or a folder of DICOM slices for a CLI series."""
        if self.members:
            root = folder / self.name
            for name, data in self.members:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
            return root
        path = folder / self.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.data)
        return path


def build_corpus() -> list[Case]:
    """Every case, in a fixed order; names are unique."""
    cases = [case for build in classes.BUILDERS for case in build(Case)]
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate case names: {duplicates}")
    unknown = sorted({c.kind for c in cases} - set(CLASSES)) + sorted({c.format for c in cases} - set(EXTENSIONS))
    if unknown:
        raise ValueError(f"unknown classes or formats: {unknown}")
    return cases


def fast_subset(cases: list[Case], per_class: int = 2, where=lambda case: True) -> list[Case]:
    """The first ``per_class`` cases of each class for each model size (among those ``where`` accepts): what
    ``make test`` runs."""
    chosen, seen = [], {}
    for case in filter(where, cases):
        key = (case.kind, case.dims)
        if seen.get(key, 0) < per_class:
            chosen.append(case)
            seen[key] = seen.get(key, 0) + 1
    return chosen


def manifest(cases: list[Case]) -> list[dict]:
    return [{"name": c.name, "file": c.file_name, "format": c.format, "class": c.kind, "expect": c.expect,
             "dims": c.dims, "targets": sorted(c.targets), "bytes": len(c.data), "members": len(c.members),
             "note": c.note} for c in cases]


def write_corpus(out: Path, cases: list[Case] | None = None) -> Path:
    """Write every case under ``out/files`` (series also as folders under ``out/series``) and ``out/manifest.json``."""
    cases = build_corpus() if cases is None else cases
    out = Path(out)
    for case in cases:
        (out / "files").mkdir(parents=True, exist_ok=True)
        (out / "files" / case.file_name).write_bytes(case.data)
        if case.members:
            case.write(out / "series")
    path = out / "manifest.json"
    path.write_text(json.dumps({"classes": CLASSES, "cases": manifest(cases)}, indent=1))
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/adversarial/corpus.py OUTDIR", file=sys.stderr)
        return 2
    start = time.perf_counter()
    cases = build_corpus()
    path = write_corpus(Path(argv[0]), cases)
    counts = {kind: sum(c.kind == kind for c in cases) for kind in CLASSES}
    print(f"{len(cases)} cases in {time.perf_counter() - start:.1f} s -> {path}")
    print("  " + "  ".join(f"{k}={n}" for k, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
