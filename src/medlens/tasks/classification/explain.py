"""Explaining a classifier: the prediction, the Grad-CAM map of a class, and the randomisation test."""

from __future__ import annotations

import numpy as np

from medlens.config import Config
from medlens.models.inference import predict_logits
from medlens.tasks.base import Explained
from medlens.tasks.classification.predict import classify_image


def explain_image(model, config: Config, calibration: dict, image, *, method: str, class_name: str | None,
                  where: str) -> Explained:
    """One input: the calibrated prediction (as ``predict`` gives it) and the map of ``class_name``
    (default: the predicted class) on the network's grid."""
    from medlens.explain import compute_cams

    names = list(config.dataset.class_names)
    result = classify_image(lambda x: predict_logits(model, x), image, config, calibration, where=where)
    target = names.index(class_name) if class_name else result.target
    cam = compute_cams(model, result.array[None], class_indices=[target], method=method)[0]
    row = {"predicted": result.predicted, "probabilities": {n: round(float(p), 6) for n, p in zip(names, result.probs)},
           "explained_class": names[target]}
    return Explained(row, cam, (result.array, target))


def randomisation_test(model, initial, items: list, method: str) -> dict:
    """The model-parameter randomisation test over every explained image: ``items`` are ``(array, class)``."""
    from medlens.explain import randomisation_check

    images = np.stack([a for a, _ in items])
    return randomisation_check(model, initial, images, class_indices=[t for _, t in items], method=method)
