"""What a classification prediction returns: through ``Predictor``, the HTTP service and ``medlens predict``."""

from __future__ import annotations

import base64
from pathlib import Path

from medlens.data.inputs import expand_inputs
from medlens.errors import MedlensError
from medlens.tasks.base import print_rows
from medlens.tasks.classification.ood import guard_for, ood_fields
from medlens.tasks.classification.predict import classify_image, write_predictions

JSON_KEYS = ("task", "label", "probabilities", "confidence", "ood_score", "in_distribution", "model_version",
             "explained_class")


def predict(predictor, image, *, heatmap: bool, tta: bool | None, where: str) -> dict:
    """``task, label, probabilities {class: p}, confidence, ood_score, in_distribution, model_version,
    explained_class, heatmap_png``.

    ``label`` is decided at the card's threshold (binary), by argmax (multi-class) or every label >= 0.5
    (multi-label); ``confidence`` is the probability of the decided class (the lowest of several labels).
    ``ood_score`` is the image's distance from the training data in the network's features and
    ``in_distribution`` whether it is within the guard's threshold (see :mod:`.ood`); both ``None`` for a
    model without a guard. The features always come from the PyTorch network, whatever runs the logits.
    """
    config = predictor.config
    tta = config.evaluate.tta if tta is None else tta
    result = classify_image(predictor.logits_of, image, config, predictor.calibration, tta=tta, where=where)
    ood = ood_fields(guard_for(predictor), predictor.model, result.array)
    names = list(config.dataset.class_names)
    chosen = [n for n in result.predicted.split(";") if n] or [names[result.target]]
    return {"task": config.dataset.task, "label": result.predicted,
            "probabilities": {n: round(float(p), 6) for n, p in zip(names, result.probs)},
            "confidence": round(float(min(result.probs[names.index(n)] for n in chosen)), 6), **ood,
            "model_version": predictor.card.get("model_version"),
            "explained_class": names[result.target] if heatmap else None,
            "heatmap_png": _heatmap(predictor.model, image, result.array, result.target) if heatmap else None}


def _heatmap(model, image, array, target: int) -> bytes:
    from medlens.explain import compute_cams, map_on_grid, overlay_png

    cam = compute_cams(model, array[None], class_indices=[target])[0]
    return overlay_png(image, map_on_grid(image, cam))


def to_json(result: dict, options: dict[str, bool], folder: Path) -> dict:
    """The label, probabilities, confidence, OOD score and decision (``null`` without a guard) and model version;
    the heat map as base64 PNG when asked for."""
    body = {key: result.get(key) for key in JSON_KEYS}
    if result.get("heatmap_png"):
        body["heatmap_png"] = base64.b64encode(result["heatmap_png"]).decode()
    return body


def write_outputs(predictor, inputs: list[Path], out: Path | None, *, tta: bool | None, log) -> int:
    """Print one line per input (the class and probabilities, a warning when it is out of distribution, or its
    error); ``out``: also a CSV or JSON file (with ``ood_score`` and ``in_distribution``)."""
    rows = []
    for path in expand_inputs(inputs):
        try:
            result = predictor.predict(path, tta=tta)
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": str(path), "error": str(exc)})
            continue
        rows.append({"path": str(path), "predicted": result["label"], "probabilities": result["probabilities"],
                     "ood_score": result["ood_score"], "in_distribution": result["in_distribution"]})
    failed = print_rows(rows, _describe, log)
    if out:
        log(f"predictions written to {write_predictions(rows, out, list(predictor.config.dataset.class_names))}")
    return failed


def _describe(row: dict) -> str:
    line = f"{row['path']}: {row['predicted'] or '(none)'}  " + "  ".join(
        f"{n}={p:.3f}" for n, p in row["probabilities"].items())
    if row["in_distribution"] is False:
        line += (f"  WARNING: out of distribution (ood_score {row['ood_score']:.3g} above the guard's threshold): "
                 "unlike the training images, so the prediction is not reliable")
    return line
