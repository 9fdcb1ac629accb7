"""Segmentation preprocessing: resample to the plan's spacing, normalise, and map back.

What the network sees is the image on the *target grid*: same origin and direction, the plan's
``target_spacing``, and a shape that keeps the physical extent (``round(shape * spacing /
target)``). Images are resampled linearly, masks by nearest neighbour; when the grid already has
the target spacing nothing is resampled. :func:`to_original_grid` takes class probabilities
back to the image's own grid, so predicted masks have exactly the input's shape and geometry.

Every array made here is checked against the work budget (:mod:`medlens.budget`) before it is
allocated: a small file with huge voxels (16 mm, or 1000 mm) asks the resampler for billions of them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medlens.budget import check_voxels
from medlens.config import DataSection
from medlens.errors import ConfigError, DatasetError
from medlens.io import Image

# how many times more voxels prediction may make of an image by resampling it to the plan's spacing:
# 8x coarser than the plan in every axis. A 4 mm scan for a 0.8 mm model is 125-fold; a 16 mm header, 4096.
MAX_GROWTH = 512
_MAX_SIDE = float(1 << 40)  # a side past any budget: an overflowed (inf) size still becomes a whole number


def target_shape(image: Image, data: DataSection) -> tuple[int, ...]:
    """Spatial shape on the target grid; the image's own shape when no target spacing is planned.

    Nothing is allocated here: callers check the shape against the work budget before resampling.

    Raises:
        DatasetError: the image's spacing is not positive and finite (a corrupt header).
        ConfigError: the plan's ``data.target_spacing`` is not positive and finite.
    """
    if not data.target_spacing or not image.spacing_known:
        return image.spatial_shape
    if not all(math.isfinite(t) and t > 0 for t in data.target_spacing):
        raise ConfigError(f"data.target_spacing must be positive numbers of mm, found {list(data.target_spacing)}; "
                          "fix the plan (e.g. --set data.target_spacing=[1,1,1])")
    if not all(math.isfinite(s) and s > 0 for s in image.spacing_mm):
        raise DatasetError(f"the image's voxel spacing {image.spacing_mm} mm is not a positive finite size; its "
                           "header is corrupt, export the image again")
    # n * s / t overflows to inf for absurd headers; capped, the budget check refuses it with its size
    return tuple(max(int(round(min(n * s / t, _MAX_SIDE))), 1) for n, s, t in
                 zip(image.spatial_shape, image.spacing_mm, data.target_spacing))


def resample(array: np.ndarray, shape: tuple[int, ...], *, nearest: bool = False,
             what: str = "resampling the image") -> np.ndarray:
    """Resample ``(C, *spatial)`` to ``(C, *shape)``: linear, or nearest neighbour for label maps.

    Args:
        what: the step, as a refusal names it ("resampling to the plan's spacing ...").

    Raises:
        BudgetError: ``(C, *shape)`` is past the work budget in force (checked before interpolating).
    """
    if tuple(array.shape[1:]) == tuple(shape):
        return array
    check_voxels((array.shape[0], *shape), what)
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
        DatasetError: the channels differ from the plan's, or the image's spacing is corrupt.
        BudgetError: the image on the target grid would be past the work budget in force.
    """
    if image.channels != data.channels:
        raise DatasetError(f"{where}: {image.channels} channel(s) but the plan expects {data.channels}; every case "
                           "needs the same modalities, in the same order")
    array = image.array.astype(np.float32, copy=False)
    array = resample(array, target_shape(image, data), what=_resampling("the image", image, data))
    return np.ascontiguousarray(np.nan_to_num(normalize(array, data)), dtype=np.float32)


def check_growth(image: Image, data: DataSection, where: str) -> None:
    """Refuse an image whose voxels are far coarser than the plan's (prediction only).

    Resampling a 16^3 volume of 16 mm voxels to a 1 mm plan makes 256^3 voxels from 4,096: minutes of
    sliding-window work, from an 8 KB file, for an image unlike anything the model was trained on.
    Past :data:`MAX_GROWTH` the image is refused rather than guessed at.

    Raises:
        DatasetError: resampling would multiply the voxel count more than ``MAX_GROWTH``-fold.
    """
    growth = math.prod(target_shape(image, data)) / max(math.prod(image.spatial_shape), 1)
    if growth > MAX_GROWTH:
        raise DatasetError(f"{where}: its voxels are far coarser than the model's: {_resampling('it', image, data)} "
                           f"would multiply its voxel count {growth:,.0f}-fold (at most {MAX_GROWTH}-fold is "
                           "accepted). Send the image at its acquired resolution, or check the spacing in its header")


def _resampling(what: str, image: Image, data: DataSection) -> str:
    """The resampling step, as a refusal names it: the two spacings say why the grid grows."""
    spacing = ", ".join(f"{s:g}" for s in image.spacing_mm)
    target = ", ".join(f"{t:g}" for t in data.target_spacing)
    return f"resampling {what} to the plan's spacing ({target} mm) from its own ({spacing} mm)"


def label_lookup(values: list[int]) -> np.ndarray:
    """A table mapping mask values (e.g. 0, 1, 7, 8) to class indices 0..K-1; unknown values -> 255."""
    table = np.full(max(values) + 1, 255, dtype=np.uint8)
    table[np.asarray(values)] = np.arange(len(values), dtype=np.uint8)
    return table


def prepare_mask(mask: Image, image: Image, data: DataSection, values: list[int], where: str) -> np.ndarray:
    """A mask on the image's grid -> class indices ``uint8 (*target_shape)``.

    Raises:
        DatasetError: the mask's grid is not the image's, or it holds undeclared label values.
        BudgetError: the mask on the target grid would be past the work budget in force.
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
    return resample(indices, target_shape(image, data), nearest=True, what=_resampling("the mask", image, data))[0]


def to_original_grid(probs: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Class probabilities ``(K, *target_shape)`` -> ``(K, *shape)`` on the image's own grid (linear).

    Raises:
        BudgetError: ``(K, *shape)`` is past the work budget in force (checked before interpolating).
    """
    if tuple(probs.shape[1:]) == tuple(shape):
        return probs
    check_voxels((probs.shape[0], *shape), "mapping the class probabilities back to the image's grid")
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return torch.nn.functional.interpolate(probs[None].float(), size=shape, mode=mode, align_corners=False)[0]
