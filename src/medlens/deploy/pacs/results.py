"""A series in, its DICOM result objects out: what a prediction worker does for the PACS listener, and what
``medlens predict dicomweb://...`` does in its own process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DEFAULT_OUTPUTS = {"segmentation": ("seg", "sr"), "classification": ("sr",), "detection": ("sr",),
                   "anomaly": ("capture",)}


def default_outputs(task: str) -> tuple[str, ...]:
    """The DICOM result kinds sent when none are named: SEG and SR for segmentation, the heat map for anomaly,
    SR otherwise."""
    return DEFAULT_OUTPUTS.get(task, ("sr",))


def predict_series(predictor, series_folder: Path, out_dir: Path, kinds: Sequence[str]) -> list[Path]:
    """Predict the one series in ``series_folder`` and write its DICOM results into ``out_dir``.

    Args:
        predictor: a :class:`~medlens.deploy.Predictor`.
        series_folder: a folder holding the instances of one image series.
        out_dir: where the result objects go (created; one file per object, written atomically).
        kinds: result kinds of ``medlens.deploy.dicom.DICOM_KINDS`` (``seg``, ``rtstruct``, ``sr``, ``capture``).

    Returns:
        The written files.

    Raises:
        MedlensError: the series cannot be read, or the task cannot give a kind (the message says how to fix it).
    """
    from medlens.deploy.dicom import write_results

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = predictor.predict(Path(series_folder), heatmap="capture" in kinds)
    return write_results(predictor, Path(series_folder), result, out_dir, list(kinds))


def answer_dicom_job(predictor, job: dict) -> dict:
    """A worker's answer to ``{"path": series folder, "dicom": {"out": folder, "kinds": [...]}}``.

    Returns:
        ``{"files": [path, ...]}``: the written result objects.
    """
    paths = predict_series(predictor, Path(job["path"]), Path(job["dicom"]["out"]), job["dicom"]["kinds"])
    return {"files": [str(p) for p in paths]}
