"""What an anomaly prediction returns: through ``Predictor``, the HTTP service and ``medlens predict``.

The map is the network's output on its input grid, put back on the image's own grid; for display it is
scaled so that the threshold sits at the middle of the colour map (:func:`display_map`).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np

from medlens._files import write_text_atomic
from medlens.data.inputs import expand_inputs, output_name
from medlens.errors import MedlensError
from medlens.io import Image, write_image
from medlens.tasks.base import print_rows


def score_image(logits_of, image, config, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(array (C, *input_size) as the network saw it, anomaly map (*input_size))`` of one image."""
    from medlens.transforms import Preprocessor

    array = Preprocessor(config.data)(image, where=where)
    return array, np.asarray(logits_of(array[None]))[0, 0]


def display_map(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """The map in [0, 1] with the threshold at 0.5 (values twice the threshold or more are 1)."""
    return np.clip(anomaly_map / (2 * threshold), 0, 1) if threshold > 0 else (anomaly_map > 0).astype(np.float32)


def predict(predictor, image: Image, *, heatmap: bool, where: str) -> dict:
    """``task, anomaly_score, decision`` (``normal`` / ``anomalous``), ``threshold``, ``model_version``,
    ``anomaly_map`` (an ``Image`` on the input's grid) and ``heatmap_png`` (2D overlay bytes, with ``heatmap``)."""
    import torch

    from medlens.transforms.volume import to_original_grid

    config, threshold = predictor.config, float(predictor.calibration["threshold"])
    _, anomaly_map = score_image(predictor.logits_of, image, config, where)
    score = float(anomaly_map.max())
    on_grid = to_original_grid(torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))[None],
                               image.spatial_shape).numpy()
    result = {"task": "anomaly", "anomaly_score": round(score, 6), "threshold": threshold,
              "decision": "anomalous" if score > threshold else "normal",
              "model_version": predictor.card.get("model_version"),
              "anomaly_map": Image(on_grid, image.spacing_mm, image.origin_mm, image.direction,
                                   spacing_known=image.spacing_known, meta={}),
              "heatmap_png": None}
    if heatmap:
        from medlens.explain import overlay_png

        result["heatmap_png"] = overlay_png(image, display_map(on_grid[0], threshold))
    return result


def to_json(result: dict, options: dict[str, bool], folder: Path) -> dict:
    """Score, decision, threshold and model version; the overlay as base64 PNG with ``heatmap``, the map as
    base64 NIfTI with ``map``."""
    body = {key: result.get(key) for key in ("task", "anomaly_score", "decision", "threshold", "model_version")}
    if result.get("heatmap_png"):
        body["heatmap_png"] = base64.b64encode(result["heatmap_png"]).decode()
    if options.get("map"):
        body["map_nifti"] = base64.b64encode(write_image(result["anomaly_map"], folder / "map.nii.gz")
                                             .read_bytes()).decode()
    return body


def write_outputs(predictor, inputs: list[Path], out: Path | None, *, log) -> int:
    """One line per input; ``out``: a CSV (or ``.json``) of scores and decisions, or for 3D models a folder of
    anomaly maps (``<name>_anomaly.nii.gz`` on each input's grid) with ``scores.csv`` in it."""
    three_d = predictor.config.dataset.spatial_dims == 3
    rows = []
    for path in expand_inputs(inputs):
        try:
            result = predictor.predict(path)
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": str(path), "error": str(exc)})
            continue
        row = {"path": str(path), "anomaly_score": result["anomaly_score"], "decision": result["decision"]}
        if three_d and out:
            row["map"] = str(write_image(result["anomaly_map"], out / output_name(path, "_anomaly", ".nii.gz")))
        rows.append(row)
    failed = print_rows(rows, lambda r: f"{r['path']}: {r['decision']}  anomaly_score={r['anomaly_score']:.4g}"
                        + (f"  map -> {r['map']}" if "map" in r else ""), log)
    if out:
        log(f"scores written to {write_scores(rows, out / 'scores.csv' if three_d else out)}")
    return failed


def write_scores(rows: list[dict], out: Path) -> Path:
    """CSV (``path, anomaly_score, decision, map, error``) or JSON when ``out`` ends in ``.json``."""
    if out.suffix.lower() == ".json":
        return write_text_atomic(out, json.dumps(rows, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "anomaly_score", "decision", "map", "error"])
    for row in rows:
        writer.writerow([row["path"], row.get("anomaly_score", ""), row.get("decision", ""), row.get("map", ""),
                         row.get("error", "")])
    return write_text_atomic(out, buffer.getvalue())
