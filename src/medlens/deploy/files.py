"""Predicting files and folders with a :class:`Predictor`: one row per input; a bad file is an error row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlens.deploy.predictor import Predictor
from medlens.engine.predict import expand_inputs
from medlens.engine.segment_io import output_name
from medlens.errors import MedlensError
from medlens.io import Image, write_image


def classify_files(predictor: Predictor, inputs: list[Path], *, tta: bool | None = None) -> list[dict]:
    """``[{"path", "predicted", "probabilities"} | {"path", "error"}]`` for every image under ``inputs``."""
    rows = []
    for path in expand_inputs(inputs):
        try:
            result = predictor.predict(path, tta=tta)
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": str(path), "error": str(exc)})
            continue
        rows.append({"path": str(path), "predicted": result["label"], "probabilities": result["probabilities"]})
    return rows


def segment_files(predictor: Predictor, inputs: list[Path], out_dir: Path, *, tta: bool | None = None,
                  probabilities: bool = False) -> list[dict]:
    """Write ``<out_dir>/<name>_seg<suffix>`` (and ``_probs.nii.gz``) on each input's own grid.

    Returns one dict per input: ``path``, ``mask`` (written file), ``voxels`` per class, or ``error``.
    """
    rows = []
    for path in expand_inputs(inputs):
        try:
            result = predictor.predict(path, tta=tta, probabilities=probabilities)
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": str(path), "error": str(exc)})
            continue
        mask = result["mask"]
        target = write_image(mask, out_dir / output_name(path, "_seg"))
        row = {"path": str(path), "mask": str(target), "voxels": result["voxels"]}
        if probabilities:
            probs = Image(result["probabilities"].astype(np.float32), mask.spacing_mm, mask.origin_mm, mask.direction)
            row["probabilities"] = str(write_image(probs, out_dir / output_name(path, "_probs", ".nii.gz")))
        rows.append(row)
    return rows
