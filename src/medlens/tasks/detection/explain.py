"""Explaining a detector: where its classification head scores a class, on the image's planned grid.

RetinaNet scores every anchor of every pyramid level for every class; the map is the highest sigmoid
score of the class over the anchors at each location of the finest level, up-sampled to the grid. It
shows what the detector responds to before boxes are selected, including what it almost detected.
"""

from __future__ import annotations

import numpy as np
import torch

from medlens.config import Config
from medlens.tasks.base import Explained


def explain_detection(model, config: Config, image, *, class_name: str | None, where: str) -> Explained:
    """The class-score map of ``class_name`` (default: the class of the highest-scoring box) ``(*S)`` in [0, 1].

    Raises:
        MedlensError: ``class_name`` is not one of the model's classes.
    """
    from medlens.errors import MedlensError
    from medlens.models.detectors import network_multiple
    from medlens.tasks.detection.infer import detect_array
    from medlens.tasks.detection.prepare import prepare_array

    names = list(config.dataset.class_names)
    if class_name is not None and class_name not in names:
        raise MedlensError(f"--class {class_name}: the model detects {', '.join(names)}; choose one of them")
    array, _ = prepare_array(image, config.data, where)
    found = detect_array(model.eval(), torch.from_numpy(array), config)
    target = names.index(class_name) if class_name else int(found.labels[0]) if len(found) else 0
    shape = array.shape[1:]
    multiple = network_multiple(len(shape), config.detect.returned_layers)
    padded = [-(-s // m) * m for s, m in zip(shape, multiple)]
    x = torch.zeros(1, array.shape[0], *padded)
    x[(slice(None), slice(None), *[slice(0, s) for s in shape])] = torch.from_numpy(array)
    with torch.no_grad():
        logits = model.network(x)["classification"][0]  # (1, A * K, *S0), the finest level
    k = len(names)
    scores = torch.sigmoid(logits.reshape(1, -1, k, *logits.shape[2:])[:, :, target]).amax(1, keepdim=True)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    cam = torch.nn.functional.interpolate(scores, size=padded, mode=mode, align_corners=False)[0, 0]
    cam = cam[tuple(slice(0, s) for s in shape)].numpy().astype(np.float32)
    shown = [names[int(label)] for label, score in zip(found.labels, found.scores) if score >= 0.5]
    row = {"explained_class": names[target], "boxes_scored_0_5": {n: shown.count(n) for n in names},
           "map": "class scores of the finest pyramid level (the detector before box selection)"}
    return Explained(row, cam)
