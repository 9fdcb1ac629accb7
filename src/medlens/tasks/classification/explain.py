"""Explaining a classifier: the prediction, the Grad-CAM map of a class, and the randomisation test.

A network of several inputs (:class:`~medlens.models.fusion.FusionClassifier`) is explained case by case
(:func:`explain_case`): one map per view, with the case's clinical values given, and no map for a view the
case lacks. Its randomisation test compares the maps of every view a case has (:func:`randomisation_test`).
"""

from __future__ import annotations

import numpy as np

from medlens.config import Config
from medlens.models.inference import predict_logits, to_probs
from medlens.tasks.base import Explained
from medlens.tasks.classification.predict import classify_image, decide


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


def explain_case(model, config: Config, calibration: dict, array: np.ndarray, clinical: np.ndarray | None, *,
                 method: str, class_name: str | None) -> Explained:
    """One case of several inputs, already preprocessed: the calibrated prediction and one map per view.

    Args:
        array: ``(V * C, *input_size)`` as :func:`~medlens.data.tensors.preprocess_cases` gives it (a view the case
            lacks all NaN).
        clinical: ``(F,)`` the case's encoded clinical values, or ``None`` (none are inputs).

    Returns:
        ``row``: ``predicted``, ``probabilities``, ``explained_class``, ``missing_views``; ``cam``: ``(V, *input_size)``
        in [0, 1], all NaN for a missing view; ``sanity_item``: ``(array, clinical, class)``.
    """
    from medlens.explain.cam import compute_view_cams
    from medlens.tasks.classification.inputs import missing_views, view_count

    names, task = list(config.dataset.class_names), config.dataset.task
    batch = None if clinical is None else clinical[None].astype(np.float32)
    logits = predict_logits(model, array[None], clinical=batch)
    probs = to_probs(logits, multilabel=task == "multilabel", temperature=calibration["temperature"])[0]
    predicted = decide(probs, task, names, calibration["threshold"])
    target = names.index(class_name) if class_name else (
        int(np.argmax(probs)) if task == "multilabel" or not predicted else names.index(predicted))
    cam = compute_view_cams(model, array[None], clinical=batch, class_indices=[target], method=method)[0]
    view_names = tuple(config.data.views) if view_count(config.data) > 1 else ()
    row = {"predicted": predicted, "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs)},
           "explained_class": names[target], "missing_views": missing_views(array[None], view_names)[0]}
    return Explained(row, cam, (array, clinical, target))


def randomisation_test(model, initial, items: list, method: str) -> dict:
    """The model-parameter randomisation test over every explained image: ``items`` are ``(array, class)``, or
    ``(array, clinical, class)`` for cases of several inputs (every view a case has is compared)."""
    from medlens.explain import randomisation_check

    if any(len(item) == 3 for item in items):  # an image of a run with clinical inputs: every value missing
        return _view_randomisation(model, initial, [(*i[:1], None, i[-1]) if len(i) == 2 else i for i in items],
                                   method)
    images = np.stack([a for a, _ in items])
    return randomisation_check(model, initial, images, class_indices=[t for _, t in items], method=method)


def _view_randomisation(model, initial, items: list, method: str) -> dict:
    """:func:`~medlens.explain.randomisation_check` for cases of several inputs: per case, Spearman's rho over the
    pixels of the views it has, between the trained network's maps and the re-initialised one's (same classes,
    same clinical values)."""
    from medlens.explain.cam import compute_view_cams
    from medlens.explain.sanity import SIMILAR_RHO, rank_correlation

    rhos = []
    for array, clinical, target in items:
        batch = None if clinical is None else np.asarray(clinical, dtype=np.float32)[None]
        a, b = (compute_view_cams(m.eval(), array[None], clinical=batch, class_indices=[target], method=method)[0]
                for m in (model, initial))
        present = ~np.isnan(a).reshape(len(a), -1).all(axis=1)
        rhos.append(float(np.mean([rank_correlation(x, y) for x, y in zip(a[present], b[present])]))
                    if present.any() else 0.0)
    mean = float(np.mean(rhos)) if rhos else float("nan")
    passed = bool(mean < SIMILAR_RHO)
    message = (f"explanations change when the weights are randomised (mean Spearman rho {mean:.2f} < {SIMILAR_RHO}, "
               "over every view a case has)" if passed else
               f"WARNING: the explanations barely change when the model's weights are randomised (mean Spearman "
               f"rho {mean:.2f} >= {SIMILAR_RHO}, over every view a case has): they show the images and the "
               "architecture more than what the model learnt; do not read them as the model's reasons")
    return {"test": "model-parameter randomisation (Adebayo et al. 2018)", "method": method, "n_images": len(rhos),
            "per": "case (rho averaged over the views it has)", "spearman_mean": round(mean, 4),
            "spearman_per_image": [round(r, 4) for r in rhos], "threshold": SIMILAR_RHO, "passed": passed,
            "message": message}
