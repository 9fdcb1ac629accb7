"""Whole-image segmentation by MONAI's sliding-window inferer, with optional mirroring.

Windows of the training patch size overlap by ``segment.overlap`` and are blended with Gaussian
weights (centre voxels count more than edges, as in nnU-Net). The network runs on the model's
device; when a volume's stitched output would be large on a GPU, stitching happens in CPU
memory instead (``device="cpu"``). The stitched output, ``K`` classes over the image padded to at
least one window, is checked against the work budget (:mod:`medlens.budget`) before any window runs.
"""

from __future__ import annotations

from itertools import combinations

import torch

from medlens.budget import check_voxels
from medlens.config import Config

GPU_STITCH_LIMIT = 512 ** 3  # output voxels x classes above which stitching moves to CPU memory


@torch.no_grad()
def sliding_probs(model: torch.nn.Module, x: torch.Tensor, config: Config, *, mirror: bool = False) -> torch.Tensor:
    """Class probabilities ``(B, K, *S)`` for preprocessed images ``x (B, C, *S)``.

    Args:
        model: in eval mode, ``(B, C, *P) -> (B, K, *P)`` logits.
        mirror: also predict mirrored copies along every combination of ``augment.flip_axes`` and
            average (test-time augmentation, ``2 ** len(flip_axes)`` passes).

    Raises:
        BudgetError: the stitched output ``(B, K, *padded S)`` is past the work budget in force.
    """
    from monai.inferers import sliding_window_inference

    k = len(config.dataset.class_names)
    check_voxels(output_shape(tuple(x.shape), k, tuple(config.data.input_size)),
                 f"stitching the sliding-window output ({k} classes)")
    device = next(model.parameters()).device
    stitch = "cpu" if device.type == "cuda" and x[0, 0].numel() * k > GPU_STITCH_LIMIT else device
    flips = mirror_sets(tuple(config.augment.flip_axes)) if mirror else [()]
    total = None
    for axes in flips:
        dims = [2 + a for a in axes]
        image = x.flip(dims) if dims else x
        logits = sliding_window_inference(image.to(device), roi_size=tuple(config.data.input_size),
                                          sw_batch_size=config.segment.sw_batch_size, predictor=model,
                                          overlap=config.segment.overlap, mode="gaussian", sw_device=device,
                                          device=stitch)
        probs = torch.softmax(logits.float(), dim=1)
        probs = probs.flip(dims) if dims else probs
        total = probs if total is None else total + probs
    return total / len(flips)


def output_shape(shape: tuple[int, ...], num_classes: int, window: tuple[int, ...]) -> tuple[int, ...]:
    """``(B, K, *padded)`` the stitched output of ``x (B, C, *S)`` occupies: MONAI pads every side
    shorter than the window up to it."""
    return (shape[0], num_classes, *(max(s, w) for s, w in zip(shape[2:], window)))


def mirror_sets(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every subset of ``axes``: ``(0, 1) -> [(), (0,), (1,), (0, 1)]``."""
    return [c for r in range(len(axes) + 1) for c in combinations(axes, r)]
