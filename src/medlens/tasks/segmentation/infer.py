"""Segmenting a whole image: preprocess like training, slide the network over it, map back to its own grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medlens.config import Config
from medlens.io import Image
from medlens.models.sliding import sliding_probs
from medlens.tasks.segmentation.postprocess import keep_largest_component
from medlens.transforms.volume import check_growth, prepare_image, to_original_grid


@dataclass
class Segmentation:
    """A predicted mask on the input's grid: ``labels (*S)`` in the dataset's mask values, ``probs (K, *S)``."""

    labels: np.ndarray
    probs: np.ndarray | None
    image: Image

    def as_image(self) -> Image:
        """The mask with exactly the input image's spacing, origin and direction."""
        return Image(self.labels[None], self.image.spacing_mm, self.image.origin_mm, self.image.direction,
                     spacing_known=self.image.spacing_known, meta={})


def segment_image(model, image: Image, config: Config, postprocess: dict, *, mirror: bool = False,
                  keep_probs: bool = False, where: str = "image") -> Segmentation:
    """Preprocess like training, slide the network over the whole image, map back to its own grid.

    Every array this makes is checked against the work budget before it is allocated: the image on the
    plan's grid (``C x target shape``), the stitched output (``K x`` that, padded to one window) and the
    probabilities back on the image's grid (``K x`` its shape).

    Raises:
        BudgetError: one of those arrays would be past the work budget in force.
        DatasetError: the image does not fit the plan (channels), its spacing is corrupt, or it is far
            coarser than the plan's spacing (:func:`~medlens.transforms.volume.check_growth`).
    """
    check_growth(image, config.data, where)
    array = prepare_image(image, config.data, where)
    probs = sliding_probs(model, torch.from_numpy(array)[None], config, mirror=mirror)[0].cpu()
    probs = to_original_grid(probs, image.spatial_shape)
    indices = probs.argmax(0).numpy().astype(np.uint8)
    names = list(config.dataset.class_names)
    chosen = [names.index(n) for n, keep in postprocess.get("keep_largest", {}).items() if keep and n in names]
    if chosen:
        indices = keep_largest_component(indices, chosen)
    values = np.asarray(config.dataset.label_values or range(len(names)))
    dtype = np.uint8 if values.max() < 256 else np.uint16
    return Segmentation(values[indices].astype(dtype), probs.numpy() if keep_probs else None, image)


def class_labels(config: Config) -> dict[int, str]:
    """Mask value -> class name for the foreground classes."""
    values = config.dataset.label_values or tuple(range(len(config.dataset.class_names)))
    return {int(v): n for v, n in zip(values[1:], config.dataset.class_names[1:])}
