"""``write_results``: a prediction on a DICOM series written back as DICOM objects in the series' study.

Kinds: ``seg`` (DICOM SEG), ``rtstruct`` (RT Structure Set), ``sr`` (Comprehensive 3D SR, TID 1500) and
``capture`` (the heat-map overlay as a Secondary Capture). Every object is built before any is written, each
is written atomically, and each gets new Series / SOP Instance UIDs; patient and study are copied from the
source series (what links a result to its study), nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medlens.errors import ConfigError

DICOM_KINDS = ("seg", "rtstruct", "sr", "capture")  # what a task's answer can be written as: Task.dicom_kinds
FILE_NAMES = {"seg": "seg.dcm", "rtstruct": "rtstruct.dcm", "sr": "sr.dcm", "capture": "capture.dcm"}


def parse_kinds(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"seg,sr"`` (or a sequence of kinds) as ``("seg", "sr")``, in :data:`DICOM_KINDS` order, each once.

    Raises:
        ConfigError: an unknown kind, or none.
    """
    given = [k.strip().lower() for k in (text.split(",") if isinstance(text, str) else text) if k.strip()]
    unknown = [k for k in given if k not in DICOM_KINDS]
    if unknown or not given:
        raise ConfigError(f"DICOM result kind {', '.join(map(repr, unknown)) or '(none)'}: choose from "
                          f"{', '.join(DICOM_KINDS)}, comma-separated (e.g. --dicom seg,sr)")
    return tuple(k for k in DICOM_KINDS if k in given)


def check_kinds(predictor, kinds: Sequence[str]) -> None:
    """Refuse a kind this model's task cannot give, before anything is predicted.

    Raises:
        ConfigError: naming the kinds the task gives.
    """
    task, possible = predictor.task.name, predictor.task.dicom_kinds
    refused = [k for k in kinds if k not in possible]
    if refused:
        reason = {"seg": "it predicts no mask", "rtstruct": "it predicts no mask", "sr": "it has no measurements",
                  "capture": "it draws no heat map"}
        raise ConfigError(f"--dicom {','.join(refused)}: a {task} model cannot give "
                          + "; ".join(f"{k} ({reason[k]})" for k in refused)
                          + (f"; it gives {','.join(possible)}: use --dicom {','.join(possible)}" if possible
                             else "; it writes no DICOM results"))


def write_results(predictor, series_folder: Path, result: dict, out_dir: Path, kinds: Sequence[str], *,
                  series_uid: str | None = None) -> list[Path]:
    """Write the DICOM objects of ``result`` (``predictor.predict(series_folder, heatmap="capture" in kinds)``)
    into ``out_dir``: ``seg.dcm``, ``rtstruct.dcm``, ``sr.dcm``, ``capture.dcm`` as asked.

    Args:
        series_folder: the DICOM series folder the prediction was made on, or the one DICOM file (a
            radiograph, a single slice).
        kinds: a subset of :data:`DICOM_KINDS`.
        series_uid: the series, when the folder holds several (as ``read_image``'s ``series_uid``).

    Returns:
        The written paths, in :data:`DICOM_KINDS` order.

    Raises:
        ConfigError: a kind the task cannot give, or a result without what a kind needs (no heat map).
        DicomError: the series cannot be read again. MedlensError: the mask is not on the series' grid.
    """
    from medlens.deploy.dicom._common import save_dataset

    kinds = parse_kinds(kinds)
    check_kinds(predictor, kinds)
    mask = result.get("mask")
    uid = series_uid or (mask.meta.get("series_uid") if mask is not None else None)
    source = source_datasets(Path(series_folder), uid)
    built = _build(predictor, result, source, kinds, where=str(series_folder))
    return [save_dataset(dataset, Path(out_dir) / FILE_NAMES[kind]) for kind, dataset in built.items()]


def source_datasets(path: Path, series_uid: str | None = None) -> list:
    """The source's pydicom datasets (headers) in the order of the image's last axis: a series folder's slices,
    or one single-frame DICOM file.

    Raises:
        DicomError: the series cannot be read again; a multi-frame file (not supported here).
    """
    from medlens.errors import DicomError
    from medlens.io.dicom import series_datasets

    if not path.is_file():
        return series_datasets(path, series_uid)
    import pydicom

    from medlens.io.dicom_checks import quiet_pydicom

    with quiet_pydicom():
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    if int(dataset.get("NumberOfFrames") or 1) > 1:
        raise DicomError(f"{path}: a multi-frame DICOM file; medlens writes DICOM results for series of single-frame "
                         "files and single images only (convert it to a series, e.g. with dcmtk's dcmsplit)")
    return [dataset]


def _build(predictor, result: dict, source: list, kinds: tuple[str, ...], *, where: str) -> dict:
    """``{kind: dataset}``, all built before anything is written (a failure leaves no partial set)."""
    from medlens.deploy.dicom.capture import build_capture
    from medlens.deploy.dicom.seg import build_segmentation
    from medlens.deploy.dicom.sr import build_report

    version, built = result.get("model_version"), {}
    classes = _classes(predictor) if "mask" in result else None
    if {"seg", "rtstruct"} & set(kinds) and "mask" not in result:
        raise ConfigError(f"{where}: the prediction holds no mask for seg / rtstruct")
    if "seg" in kinds:
        built["seg"] = build_segmentation(result["mask"], classes, source, model_version=version, where=where)
    if "rtstruct" in kinds:
        built["rtstruct"] = _rtstruct(result["mask"], classes, source)
    if "sr" in kinds:
        built["sr"] = build_report(result, source, classes=classes, segmentation=built.get("seg"))
    if "capture" in kinds:
        if not result.get("heatmap_png"):
            raise ConfigError(f"{where}: capture needs the heat map: predict with heatmap=True")
        built["capture"] = build_capture(result["heatmap_png"], source, model_version=version)
    return built


def _classes(predictor) -> dict[int, str]:
    from medlens.tasks.segmentation.infer import class_labels

    return class_labels(predictor.config)


def _rtstruct(mask, classes: dict[int, str], source: list):
    """The RT Structure Set of ``mask`` (one ROI per class, values relabelled 1..K in class order), as
    :func:`medlens.io.rtstruct.write_rtstruct` writes it (into a temporary folder, read back)."""
    try:
        from medlens.io.rtstruct import write_rtstruct
    except ImportError:
        raise ConfigError("rtstruct: this medlens has no RTSTRUCT writer (medlens.io.rtstruct); write seg instead "
                          "(--dicom seg), or update medlens") from None
    import tempfile

    import numpy as np
    import pydicom

    array = np.asarray(mask.array)
    numbered = np.zeros(array.shape, dtype=np.int16)
    for number, value in enumerate(classes, start=1):
        numbered[array == value] = number
    with tempfile.TemporaryDirectory(prefix="medlens-rtstruct-") as folder:
        path = write_rtstruct(mask.with_array(numbered), list(classes.values()), source, Path(folder) / "rt.dcm")
        return pydicom.dcmread(path)
