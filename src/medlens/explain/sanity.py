"""The model-parameter randomisation test: do the explanations depend on what the model learnt?

Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018: explain the same images with the
trained model and with the same architecture whose weights are re-drawn at random. An explanation
method that shows what the model learnt must change; when the maps of the two models are still
rank-correlated (Spearman's rho over the pixels of each image), the maps mostly reflect the image
and the architecture, not the training, and should not be trusted.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from medlens.explain.cam import Method, compute_cams, predicted_classes

SIMILAR_RHO = 0.5  # mean rank correlation at or above which the maps "barely change"


def randomised_copy(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The same architecture with every layer's weights re-initialised (its own initialiser, seeded)."""
    clone = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in clone.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
    finally:
        torch.random.set_rng_state(generator_state)
    return clone.eval()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho between two maps' pixels; 0 when either map is constant (no ranking to compare)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomisation_check(model: torch.nn.Module, randomised: torch.nn.Module, images: np.ndarray, *,
                        class_indices: Sequence[int] | None = None, method: Method = "gradcam",
                        maps: np.ndarray | None = None, threshold: float = SIMILAR_RHO) -> dict:
    """Compare the maps of ``model`` with those of ``randomised`` on the same images and classes.

    Args:
        randomised: the same architecture with random weights (e.g. :func:`randomised_copy`, or the
            network re-initialised with the run's seed).
        images: float32 ``(N, C, *spatial)`` preprocessed images.
        class_indices: target class per image; ``None`` takes the trained model's prediction (the
            randomised model explains the same class, so only the weights differ).
        maps: the trained model's maps if already computed ``(N, *spatial)``.
        threshold: the mean rho at or above which ``passed`` is False.

    Returns:
        ``{"test": ..., "method", "n_images", "spearman_mean", "spearman_per_image", "threshold",
        "passed", "message"}``.
    """
    if class_indices is None:
        class_indices = predicted_classes(model, images)
    if maps is None:
        maps = compute_cams(model, images, class_indices=class_indices, method=method)
    random_maps = compute_cams(randomised.eval(), images, class_indices=class_indices, method=method)
    rhos = [rank_correlation(a, b) for a, b in zip(maps, random_maps)]
    mean = float(np.mean(rhos)) if rhos else float("nan")
    passed = bool(mean < threshold)
    message = (f"explanations change when the weights are randomised (mean Spearman rho {mean:.2f} < {threshold})"
               if passed else
               f"WARNING: the explanations barely change when the model's weights are randomised (mean Spearman "
               f"rho {mean:.2f} >= {threshold}): they show the image and the architecture more than what the "
               "model learnt; do not read them as the model's reasons")
    return {"test": "model-parameter randomisation (Adebayo et al. 2018)", "method": method, "n_images": len(rhos),
            "spearman_mean": round(mean, 4), "spearman_per_image": [round(r, 4) for r in rhos],
            "threshold": threshold, "passed": passed, "message": message}
