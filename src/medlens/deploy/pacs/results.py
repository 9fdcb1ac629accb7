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


def predict_series(predictor, series_folder: Path, out_dir: Path, kinds: Sequence[str], *,
                   views: dict | None = None) -> list[Path]:
    """Predict the one series in ``series_folder`` and write its DICOM results into ``out_dir``.

    Args:
        predictor: a :class:`~medlens.deploy.Predictor`.
        series_folder: a folder holding the instances of one image series (with ``views``: the series the
            results refer to).
        out_dir: where the result objects go (created; one file per object, written atomically).
        kinds: result kinds of ``medlens.deploy.dicom.DICOM_KINDS`` (``seg``, ``rtstruct``, ``sr``, ``capture``).
        views: ``{view: series folder}``, the case of a model of several series (a study's series its rules
            picked), instead of ``series_folder`` alone.

    Returns:
        The written files.

    Raises:
        MedlensError: the series cannot be read, or the task cannot give a kind (the message says how to fix it).
    """
    from medlens.deploy.dicom import write_results

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = {name: Path(folder) for name, folder in views.items()} if views else Path(series_folder)
    result = predictor.predict(source, heatmap="capture" in kinds)
    return write_results(predictor, Path(series_folder), result, out_dir, list(kinds))


def answer_dicom_job(predictor, job: dict) -> dict:
    """A worker's answer to ``{"path": series folder, "dicom": {"out": folder, "kinds": [...]}}``; with ``"views":
    {view: series folder}`` (a study, for a model of several series) the case is those series, and the results
    refer to ``path`` (the first view's series).

    Returns:
        ``{"files": [path, ...]}``: the written result objects.
    """
    paths = predict_series(predictor, Path(job["path"]), Path(job["dicom"]["out"]), job["dicom"]["kinds"],
                           views=job.get("views"))
    return {"files": [str(p) for p in paths]}
