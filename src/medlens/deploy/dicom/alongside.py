"""DICOM results written alongside ``medlens predict``'s usual outputs, from the same prediction.

The task's ``write_outputs`` predicts each input once through a :class:`Predictor`; handing it a
:class:`DicomAlongside` instead writes, for each DICOM series folder it predicts, the DICOM objects of that
same result (no second prediction) into ``<base>/<series folder name>_dicom/`` (``<file stem>_dicom/`` for a
DICOM file). A case of several DICOM series (a study's series picked by the plan's series rules) gets the results
of that one prediction in ``<base>/<study folder name>_dicom/``, referring to its first view's series.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from medlens.deploy.dicom.results import check_kinds, parse_kinds, write_results


class DicomAlongside:
    """A predictor that also writes DICOM results for DICOM inputs; otherwise the predictor it wraps.

    Args:
        predictor: the :class:`~medlens.deploy.Predictor`.
        kinds: DICOM result kinds (``"seg,sr"`` or a sequence), checked against the task at once.
        base: the folder that gets one ``<name>_dicom/`` folder per series.
        log: prints one line per object written, and what was skipped.

    Attributes:
        written: every path written so far.

    Raises:
        ConfigError: an unknown kind, or one the task cannot give.
    """

    def __init__(self, predictor, kinds: str | Sequence[str], base: Path, log: Callable[[str], None]):
        self._predictor, self.kinds, self.base, self.log = predictor, parse_kinds(kinds), Path(base), log
        check_kinds(predictor, self.kinds)
        self.written: list[Path] = []

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def predict(self, source, **options) -> dict:
        """``Predictor.predict``; for a DICOM series folder or file the heat map too when a capture is asked for,
        and the DICOM results written from the answer."""
        reference = dicom_reference(source)
        if reference is not None and "capture" in self.kinds:
            options["heatmap"] = True
        result = self._predictor.predict(source, **options)
        if reference is None:
            self.log(f"{_name(source)}: not a DICOM series folder or DICOM file, no DICOM results (--dicom writes "
                     "them for DICOM inputs; give the folder that holds the slices)")
            return result
        study = isinstance(source, dict)  # a study's series: named by the study folder
        shown = reference.parent if study else reference
        out_dir = self.base / f"{shown.name if study else _stem(reference)}_dicom"
        for kind, path in zip(self.kinds, write_results(self._predictor, reference, result, out_dir, self.kinds)):
            self.log(f"{shown} -> {path}  (DICOM {kind})")
            self.written.append(path)
        return result


def dicom_reference(source) -> Path | None:
    """The DICOM series (folder or file) the results of ``source`` refer to: ``source`` itself, or the first view of
    a case of several views when that view is DICOM; ``None`` when there is none."""
    if isinstance(source, dict):
        first = next(iter(source.values()), None)
        return Path(first) if is_dicom_source(first) else None
    return Path(source) if is_dicom_source(source) else None


def is_dicom_source(source) -> bool:
    """A DICOM series folder (``expand_inputs`` passes on a folder only when it is one) or a DICOM file."""
    from medlens.io.formats import sniff

    if not isinstance(source, (str, Path)):
        return False
    path = Path(source)
    return path.is_dir() or (path.is_file() and sniff(path) == "dicom")


def _stem(path: Path) -> str:
    return path.name if path.is_dir() else path.name.removesuffix(path.suffix) or path.name


def _name(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else "case"
