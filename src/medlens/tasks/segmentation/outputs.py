"""What a segmentation prediction returns: through ``Predictor``, the HTTP service and ``medlens predict``."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from medlens.data.inputs import expand_inputs, output_name
from medlens.errors import MedlensError
from medlens.io import Image, write_image
from medlens.tasks.base import print_rows
from medlens.tasks.segmentation.infer import class_labels, segment_image


def predict(predictor, image, *, tta: bool | None, probabilities: bool, where: str) -> dict:
    """``task, mask`` (an ``Image`` on the input's grid, in the dataset's mask values), ``voxels {class: n}``,
    ``model_version``, and ``probabilities (K, *S)`` when asked for."""
    config = predictor.config
    mirror = config.evaluate.tta if tta is None else tta
    result = segment_image(predictor.model, image, config, predictor.postprocess, mirror=mirror,
                           keep_probs=probabilities, where=where)
    out = {"task": config.dataset.task, "mask": result.as_image(), "model_version": predictor.card.get("model_version"),
           "voxels": {n: int((result.labels == v).sum()) for v, n in class_labels(config).items()}}
    if probabilities:
        out["probabilities"] = result.probs
    return out


def to_json(result: dict, options: dict[str, bool], folder: Path) -> dict:
    """Voxels per class and the model version; the mask as base64 NIfTI when asked for."""
    body = {key: result[key] for key in ("task", "voxels", "model_version")}
    if options.get("mask"):
        body["mask_nifti"] = base64.b64encode(write_image(result["mask"], folder / "mask.nii.gz").read_bytes()).decode()
    return body


def write_outputs(predictor, inputs: list[Path], out: Path | None, *, tta: bool | None, probabilities: bool,
                  log) -> int:
    """Write ``<out>/<name>_seg<suffix>`` (and ``_probs.nii.gz``) on each input's own grid; print one line each."""
    out_dir = out or Path("predictions")
    rows = []
    for path in expand_inputs(inputs):
        try:
            result = predictor.predict(path, tta=tta, probabilities=probabilities)
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": str(path), "error": str(exc)})
            continue
        mask = result["mask"]
        row = {"path": str(path), "mask": str(write_image(mask, out_dir / output_name(path, "_seg"))),
               "voxels": result["voxels"]}
        if probabilities:
            probs = Image(result["probabilities"].astype(np.float32), mask.spacing_mm, mask.origin_mm, mask.direction)
            row["probabilities"] = str(write_image(probs, out_dir / output_name(path, "_probs", ".nii.gz")))
        rows.append(row)
    return print_rows(rows, lambda row: f"{row['path']} -> {row['mask']}  voxels: "
                      + "  ".join(f"{n}={v}" for n, v in row["voxels"].items()), log)
