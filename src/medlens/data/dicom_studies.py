"""DICOM studies annotated in a clinical viewer: image series with SEG or RTSTRUCT objects (layout ``dicom_labels``).

A folder of studies (or one study folder): DICOM image series and SEG / RTSTRUCT files anywhere below it,
in any arrangement. Each label object is one case: its referenced series (found by SeriesInstanceUID
anywhere under the folder) is the image, the label object read onto that series' grid is the mask
(:func:`medlens.io.dicom_labels.read_dicom_labels`). The patient of a case is its series' (pseudonymised)
PatientID, so splits keep a patient's studies together.

Class names: ``background`` then every segment label / ROI name (ROIs with contours only), in order of first
appearance over the label files sorted by path; names that differ only in case or surrounding spaces are one
class. Each name has the same label value in every case.

Findings, not failures: a label object whose referenced series is not under the folder (``labels.series_missing``)
or that names none (``labels.no_reference``) is left out; a file that is not readable (``labels.unreadable``) too.
Contours off the image or on absent slices are found when the mask is read (``medlens inspect``:
``mask.unreadable``, with the reason).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from medlens.data.dataset import Dataset, Finding, class_name_problem
from medlens.errors import DatasetError, MedlensError
from medlens.io import Image, read_image
from medlens.io.formats import SUFFIXES, is_clutter
from medlens.types import Case, Task

LAYOUT = "dicom_labels"
# files never opened while looking for label objects: formats that are not DICOM, and notes
_NOT_DICOM = {s for s, fmt in SUFFIXES.items() if fmt != "dicom"} | {".csv", ".tsv", ".json", ".txt", ".md", ".yaml",
                                                                     ".yml", ".xml", ".html", ".pdf", ".zip", ".gz"}


def _candidate_files(root: Path):
    """Files under ``root`` that may be DICOM, in sorted order (hidden files and folders skipped)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_clutter(d))
        for name in sorted(files):
            path = Path(folder) / name
            if not is_clutter(name) and path.suffix.lower() not in _NOT_DICOM \
                    and not name.lower().endswith(".nii.gz"):
                yield path


def looks_like_dicom_studies(root: Path) -> bool:
    """Whether any file under ``root`` is a DICOM SEG or RTSTRUCT (reads each candidate's first bytes; stops at
    the first one found)."""
    from medlens.io.dicom_labels import label_kind

    return any(label_kind(path) for path in _candidate_files(root))


def open_dicom_studies(root: Path) -> Dataset:
    """One segmentation case per SEG / RTSTRUCT under ``root`` (see the module docstring).

    Raises:
        DatasetError: no label object whose referenced series is under ``root``.
    """
    from medlens.io.dicom_labels import label_kind

    files = list(_candidate_files(root))
    labels = [p for p in files if label_kind(p)]
    label_set = set(labels)
    series, skipped, findings = _scan(root, [p for p in files if p not in label_set])
    cases, names = [], []
    for path in labels:
        case, found, problem = _case(root, path, series)
        if problem is not None:
            findings.append(problem)
            continue
        cases.append(case)
        names += found
    class_names = ("background", *_union(names))
    findings += _name_findings(class_names[1:]) + _ignored(root, skipped, labels)
    if not cases:
        shown = "; ".join(f.message for f in findings[:3])
        raise DatasetError(f"{root}: {len(labels)} DICOM label object(s) (SEG / RTSTRUCT) found, none usable "
                           f"({shown}); put each label object in the folder with the series it references")
    modalities = sorted({headers[0].modality for uid, headers in series.items()
                         if any(c.extra["series_uid"] == uid for c in cases)})
    meta = {"label_values": list(range(len(class_names))), "modality": modalities[0] if len(modalities) == 1 else "",
            "label_objects": len(labels)}
    return Dataset(root, LAYOUT, Task.SEGMENTATION, class_names, cases, meta=meta, findings=findings,
                   loader=load_series, mask_loader=functools.partial(load_labels, names=class_names[1:]))


def _scan(root: Path, files: list[Path]) -> tuple[dict, list[Path], list[Finding]]:
    """Image slices grouped by series, files that are not image slices, and a finding for unreadable headers."""
    from medlens.io.dicom import read_header

    series: dict = {}
    skipped, unreadable = [], []
    for path in files:
        try:
            header = read_header(path)
        except MedlensError:
            unreadable.append(path.relative_to(root).as_posix())
            continue
        if header is None or not header.is_image:
            skipped.append(path)
        else:
            series.setdefault(header.series_uid, []).append(header)
    findings = [Finding("warning", "file.unreadable", f"{root}: {len(unreadable)} DICOM file(s) have a header that "
                        f"cannot be parsed (e.g. {unreadable[0]}); they are left out of the series", unreadable)
                ] if unreadable else []
    return series, skipped, findings


def load_series(case: Case) -> Image:
    """The image of a ``dicom_labels`` case: the series its label object references."""
    return read_image(case.image, series_uid=case.extra["series_uid"])


def load_labels(case: Case, names: tuple[str, ...]) -> Image:
    """The mask of a ``dicom_labels`` case: value ``k`` = ``names[k - 1]`` in every case."""
    from medlens.io.dicom_labels import read_dicom_labels

    return read_dicom_labels(case.mask, case.image, names=names)[0]


def _case(root: Path, path: Path, series: dict) -> tuple[Case | None, list[str], Finding | None]:
    """The case of one label object, its structure names, or the finding that leaves it out."""
    from medlens.io.dicom_labels import read_label_header, series_referenced_by

    where = path.relative_to(root).as_posix()
    try:
        header = read_label_header(path)
        uid = series_referenced_by(header, path)
    except MedlensError as exc:
        code = "labels.no_reference" if "names no referenced" in str(exc) else "labels.unreadable"
        return None, [], Finding("warning", code, f"{exc}; left out", [where])
    if uid not in series:
        return None, [], Finding("warning", "labels.series_missing", f"{path}: the {header.Modality} references a "
                                 f"series that is not under {root} ({len(series)} image series there); left out. Copy "
                                 "the referenced series into the study folder", [where])
    headers = series[uid]
    folder = Path(os.path.commonpath([h.path.parent for h in headers]))
    case = Case(case_id=where, images=(folder,), mask=path, patient_id=headers[0].patient_key,
                extra={"series_uid": uid})
    return case, _structure_names(header), None


def _structure_names(header) -> list[str]:
    """Segment labels of a SEG, names of the ROIs with contours of an RTSTRUCT, in file order."""
    if header.Modality == "RTSTRUCT":
        drawn = {int(c.ReferencedROINumber) for c in header.get("ROIContourSequence", [])
                 if "ReferencedROINumber" in c and c.get("ContourSequence")}
        return [str(r.get("ROIName", "") or "").strip() or f"ROI {r.ROINumber}"
                for r in header.get("StructureSetROISequence", []) if int(r.ROINumber) in drawn]
    return [str(s.get("SegmentLabel", "") or f"segment {s.SegmentNumber}") for s in header.get("SegmentSequence", [])]


def _union(names: list[str]) -> list[str]:
    """Names in order of first appearance; one per spelling that differs only in case or surrounding spaces."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.strip().casefold(), name.strip())
    return [n for n in seen.values() if n.casefold() != "background"]


def _name_findings(names: tuple[str, ...]) -> list[Finding]:
    problems = [f"{name!r}: {problem}" for name in names if (problem := class_name_problem(name))]
    if not problems:
        return []
    return [Finding.blocking("labels.names", f"{len(problems)} structure name(s) cannot be class names "
                             f"({'; '.join(problems[:3])}); rename the structures in the viewer")]


def _ignored(root: Path, skipped: list[Path], labels: list[Path]) -> list[Finding]:
    """``file.ignored`` (info): files under the folder that are neither image slices nor label objects."""
    others = sorted(set(skipped) - set(labels))
    if not others:
        return []
    shown = ", ".join(p.relative_to(root).as_posix() for p in others[:3])
    return [Finding("info", "file.ignored", f"{root}: {len(others)} file(s) are neither image slices nor SEG / "
                    f"RTSTRUCT objects and were left out (e.g. {shown})")]
