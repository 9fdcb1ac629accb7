"""Explaining a segmenter: region Grad-CAM of the voxels predicted as a class."""

from __future__ import annotations

import numpy as np
import torch

from medlens.config import Config
from medlens.errors import MedlensError
from medlens.tasks.base import Explained


def explain_region(model, config: Config, image, *, method: str, class_name: str | None, where: str) -> Explained:
    """The map of the predicted region of ``class_name`` (default: the class with most predicted voxels),
    on the preprocessed grid.

    Raises:
        MedlensError: no voxel is predicted as the class.
    """
    from medlens.explain.regions import region_cam
    from medlens.models.sliding import sliding_probs
    from medlens.transforms.volume import prepare_image

    array = prepare_image(image, config.data, where)
    probs = sliding_probs(model, torch.from_numpy(array)[None], config)[0]
    labels = probs.argmax(0).cpu().numpy()
    names = list(config.dataset.class_names)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    target = names.index(class_name) if class_name else int(np.argmax(counts[1:]) + 1) if len(names) > 1 else 0
    if not counts[target]:
        raise MedlensError(f"{where}: no voxel is predicted as {names[target]}, so there is no region to explain; "
                           "choose another --class")
    with torch.enable_grad():
        cam = region_cam(model, array, labels == target, target, tuple(config.data.input_size), method)
    row = {"explained_class": names[target], "predicted_voxels": {n: int(c) for n, c in zip(names[1:], counts[1:])}}
    return Explained(row, cam)
