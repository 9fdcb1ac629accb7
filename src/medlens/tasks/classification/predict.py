"""Classifying one image, the way every prediction path does it (CLI, ``Predictor``, service, explain).

Nothing comes from code defaults: input size, channels, normalisation, temperature and threshold
are read from the run (or bundle). :class:`medlens.deploy.Predictor` puts them together.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens._files import write_text_atomic
from medlens.config import Config
from medlens.models.inference import to_probs


@dataclass
class Classified:
    """One image through a classifier: ``array (C, *input_size)`` as the network saw it, calibrated
    ``probs (K,)``, the decision (class name, or names joined by ``;``) and the class a map should explain."""

    array: np.ndarray
    probs: np.ndarray
    predicted: str
    target: int


def classify_image(logits_of, image, config: Config, calibration: dict, *, tta: bool = False,
                   where: str = "image") -> Classified:
    """Preprocess ``image`` as the run was trained, score it, calibrate, decide.

    Args:
        logits_of: ``images (B, C, *input_size) -> logits (B, K)`` (PyTorch, TorchScript or ONNX Runtime).
        tta: average the logits over the mirrored copies along ``augment.flip_axes``.
    """
    import torch

    from medlens.transforms import Preprocessor, flip_variants

    names, task = list(config.dataset.class_names), config.dataset.task
    array = Preprocessor(config.data)(image, where=where)
    variants = flip_variants(torch.from_numpy(array[None]), tuple(config.augment.flip_axes) if tta else ())
    logits = np.mean([logits_of(v.numpy()) for v in variants], axis=0)
    probs = to_probs(logits, multilabel=task == "multilabel", temperature=calibration["temperature"])[0]
    predicted = decide(probs, task, names, calibration["threshold"])
    target = int(np.argmax(probs)) if task == "multilabel" or not predicted else names.index(predicted)
    return Classified(array, probs, predicted, target)


def decide(probs: np.ndarray, task: str, names: list[str], threshold: float) -> str:
    """The predicted class: binary at the run's threshold, multi-class argmax, multi-label every label >= 0.5."""
    if task == "binary":
        return names[int(probs[1] >= threshold)]
    if task == "multilabel":
        return ";".join(n for n, p in zip(names, probs) if p >= 0.5)
    return names[int(np.argmax(probs))]


def write_predictions(rows: list[dict], out: Path, names: list[str]) -> Path:
    """CSV (``path, predicted, p_<class>..., ood_score, in_distribution, error``; the last two empty without a
    guard) or JSON when ``out`` ends in ``.json``."""
    if out.suffix.lower() == ".json":
        return write_text_atomic(out, json.dumps(rows, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "predicted", *[f"p_{n}" for n in names], "ood_score", "in_distribution", "error"])
    for row in rows:
        probs = row.get("probabilities", {})
        ood = [_cell(row.get(key)) for key in ("ood_score", "in_distribution")]
        writer.writerow([row["path"], row.get("predicted", ""), *[probs.get(n, "") for n in names], *ood,
                         row.get("error", "")])
    return write_text_atomic(out, buffer.getvalue())


def _cell(value) -> str:
    """A CSV cell: empty for ``None`` (no guard, or the input failed), ``true`` / ``false`` for booleans."""
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)
