"""Post-processing chosen on validation: keep only the largest connected component of a class when that helps."""

from __future__ import annotations

import numpy as np
import torch

from medlens.config import Config
from medlens.models.sliding import sliding_probs


def choose_postprocessing(model, config: Config, volumes) -> dict:
    """Per foreground class, keep only its largest connected component if that raises validation Dice.

    ``segment.keep_largest`` = ``always`` / ``never`` skips the comparison.
    """
    from medlens.tasks.segmentation.module import dice_per_class

    names = list(config.dataset.class_names[1:])
    rule = config.segment.keep_largest
    if rule != "auto":
        return {"keep_largest": {n: rule == "always" for n in names}, "rule": rule}
    plain, kept = [], []
    for volume in volumes:
        labels = sliding_probs(model, torch.from_numpy(np.ascontiguousarray(volume.image))[None], config)[0].argmax(0)
        target = torch.from_numpy(volume.mask.astype(np.int64))
        plain.append(dice_per_class(labels, target, len(names) + 1))
        largest = keep_largest_component(labels.numpy(), range(1, len(names) + 1))
        kept.append(dice_per_class(torch.from_numpy(largest), target, len(names) + 1))
    plain_mean, kept_mean = np.nanmean(np.stack(plain), 0), np.nanmean(np.stack(kept), 0)
    return {"keep_largest": {n: bool(k > p) for n, p, k in zip(names, plain_mean, kept_mean)},
            "rule": "auto: chosen on the validation split",
            "validation_dice": {n: {"plain": round(float(p), 4), "largest_component": round(float(k), 4)}
                                for n, p, k in zip(names, plain_mean, kept_mean)}}


def keep_largest_component(labels: np.ndarray, classes) -> np.ndarray:
    """Label map with, for each class in ``classes``, only its largest connected component (face-connected)."""
    from scipy import ndimage

    out = labels.copy()
    for k in classes:
        components, count = ndimage.label(labels == k)
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return out
