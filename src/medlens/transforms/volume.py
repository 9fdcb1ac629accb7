"""Segmentation preprocessing: resample to the plan's spacing, normalise, and map back.

What the network sees is the image on the *target grid*: same origin and direction, the plan's
``target_spacing``, and a shape that keeps the physical extent (``round(shape * spacing /
target)``). Images are resampled linearly, masks by nearest neighbour; when the grid already has
the target spacing nothing is resampled. :func:`to_original_grid` takes class probabilities
back to the image's own grid, so predicted masks have exactly the input's shape and geometry.
"""

from __future__ import annotations

import numpy as np
import torch

from medlens.config import DataSection
from medlens.errors import DatasetError
from medlens.io import Image


def target_shape(image: Image, data: DataSection) -> tuple[int, ...]:
    """Spatial shape on the target grid; the image's own shape when no target spacing is planned."""
    if not data.target_spacing or not image.spacing_known:
        return image.spatial_shape
    return tuple(max(int(round(n * s / t)), 1) for n, s, t in
                 zip(image.spatial_shape, image.spacing_mm, data.target_spacing))


def resample(array: np.ndarray, shape: tuple[int, ...], *, nearest: bool = False) -> np.ndarray:
    """Resample ``(C, *spatial)`` to ``(C, *shape)``: linear, or nearest neighbour for label maps."""
    if tuple(array.shape[1:]) == tuple(shape):
        return array
    tensor = torch.as_tensor(np.ascontiguousarray(array))[None]
    if nearest:
        out = torch.nn.functional.interpolate(tensor.float(), size=shape, mode="nearest-exact")
        return out[0].numpy().astype(array.dtype)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return torch.nn.functional.interpolate(tensor.float(), size=shape, mode=mode, align_corners=False)[0].numpy()


def normalize(array: np.ndarray, data: DataSection) -> np.ndarray:
    """Intensity normalisation of ``(C, *spatial)`` float32, per the plan.

    ``ct_foreground``: clip to ``intensity_range`` then ``(x - mean) / std`` with the foreground
    statistics (nnU-Net's CT scheme); ``zscore``: per image and channel; ``scale01``: clip the range
    to [0, 1]; ``none``: unchanged.
    """
    kind = data.normalization
    if kind == "ct_foreground":
        low, high = data.intensity_range
        mean, std = data.foreground_stats
        return (np.clip(array, low, high) - mean) / max(std, 1e-8)
    if kind in ("scale01", "ct_window"):
        low, high = data.intensity_range
        return np.clip((array - low) / max(high - low, 1e-8), 0.0, 1.0)
    if kind == "zscore":
        axes = tuple(range(1, array.ndim))
        mean, std = array.mean(axis=axes, keepdims=True), array.std(axis=axes, keepdims=True)
        return (array - mean) / np.maximum(std, 1e-8)
    return array


def prepare_image(image: Image, data: DataSection, where: str) -> np.ndarray:
    """``(C, *spatial)`` of any dtype -> normalised float32 ``(C, *target_shape)``.

    Raises:
        DatasetError: the channels differ from the plan's.
    """
    if image.channels != data.channels:
        raise DatasetError(f"{where}: {image.channels} channel(s) but the plan expects {data.channels}; every case "
                           "needs the same modalities, in the same order")
    array = image.array.astype(np.float32, copy=False)
    array = resample(array, target_shape(image, data))
    return np.ascontiguousarray(np.nan_to_num(normalize(array, data)), dtype=np.float32)


def label_lookup(values: list[int]) -> np.ndarray:
    """A table mapping mask values (e.g. 0, 1, 7, 8) to class indices 0..K-1; unknown values -> 255."""
    table = np.full(max(values) + 1, 255, dtype=np.uint8)
    table[np.asarray(values)] = np.arange(len(values), dtype=np.uint8)
    return table


def prepare_mask(mask: Image, image: Image, data: DataSection, values: list[int], where: str) -> np.ndarray:
    """A mask on the image's grid -> class indices ``uint8 (*target_shape)``.

    Raises:
        DatasetError: the mask's grid is not the image's, or it holds undeclared label values.
    """
    if mask.spatial_dims != image.spatial_dims or not image.same_geometry(mask):
        raise DatasetError(f"{where}: the mask (shape {mask.spatial_shape}, spacing {mask.spacing_mm}) is not on "
                           f"the image's grid (shape {image.spatial_shape}, spacing {image.spacing_mm}); resample "
                           "the mask onto the image (nearest neighbour)")
    raw = np.rint(mask.array[:1]).astype(np.int64)
    unknown = sorted(set(np.unique(raw).tolist()) - set(values))
    if unknown:
        raise DatasetError(f"{where}: mask values {unknown} are not among the planned labels {values}; fix the mask "
                           "or the dataset's label list")
    indices = label_lookup(values)[raw]
    return resample(indices, target_shape(image, data), nearest=True)[0]


def to_original_grid(probs: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Class probabilities ``(K, *target_shape)`` -> ``(K, *shape)`` on the image's own grid (linear)."""
    if tuple(probs.shape[1:]) == tuple(shape):
        return probs
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return torch.nn.functional.interpolate(probs[None].float(), size=shape, mode=mode, align_corners=False)[0]
