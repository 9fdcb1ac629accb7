"""Detecting in a whole image: preprocess like training, run the detector (sliding windows when the image is
larger than the patch), map the boxes back to the image's own voxel grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medlens.config import Config
from medlens.io import Image
from medlens.tasks.detection.prepare import prepare_array, scale_boxes


@dataclass
class Detections:
    """Boxes on one image's own grid: ``boxes (P, 2D)`` voxel corners, ``scores (P,)``, ``labels (P,)`` class
    indices, best first."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def detect_array(model, array: torch.Tensor, config: Config) -> Detections:
    """Boxes on the plan's grid for one preprocessed image ``array (C, *S)``.

    Images no larger than the patch go through whole (the detector pads them to its size multiple);
    larger ones through MONAI's sliding-window inferer over patches of ``data.input_size``.
    """
    patch = tuple(config.data.input_size)
    device = next(model.parameters()).device
    whole = all(s <= p for s, p in zip(array.shape[1:], patch))
    if not whole:
        model.set_sliding_window_inferer(roi_size=list(patch), sw_batch_size=2, overlap=config.detect.overlap,
                                         mode="constant", padding_mode="constant", cval=0.0, device=device)
    with torch.no_grad():
        out = model(array[None].to(device), use_inferer=not whole)[0]
    scores = out["label_scores"].detach().cpu().numpy().astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    return Detections(out["box"].detach().cpu().numpy().astype(np.float32)[order], scores[order],
                      out["label"].detach().cpu().numpy().astype(np.int64)[order])


def detect_image(model, image: Image, config: Config, *, where: str = "image") -> Detections:
    """Boxes on the image's own voxel grid (corners clipped to the image).

    Raises:
        DatasetError: channels differ from the plan's, or a corrupt spacing.
        BudgetError: the resampled image would be past the work budget in force.
    """
    array, scale = prepare_array(image, config.data, where)
    found = detect_array(model.eval(), torch.from_numpy(array), config)
    boxes = scale_boxes(found.boxes, 1.0 / scale)
    shape = np.asarray(image.spatial_shape, np.float32)
    boxes = np.clip(boxes, 0, np.concatenate([shape, shape]))
    return Detections(boxes, found.scores, found.labels)
