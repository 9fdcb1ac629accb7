"""Detection preprocessing: images to the plan's grid with their boxes, and the training patches drawn from them.

The plan's grid is the image resampled to ``data.target_spacing`` (for a PNG or JPEG, whose spacing is
unknown, a pixel counts as 1 mm: a target of 2 halves the image), then normalised. Boxes are scaled with
the image: a corner at continuous coordinate ``c`` moves to ``c * new_shape / old_shape`` per axis, and
predictions go back the same way.

:class:`BoxPatches` draws the training patches: item *i* of epoch *e* comes from its own generator seeded
by ``(seed, e, i)``, so a resumed run sees the same patches. Images no larger than the patch are
zero-padded to it (a box-centred crop may place the image anywhere inside the padding, its boxes moved
with it); larger ones are cropped, a share ``positive_fraction`` of the crops
centred on a random box. A box is kept in a crop when its centre is inside, clipped to the crop.
Flips along the plan's axes and intensity scale / shift / noise augment image and boxes together.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from medlens.budget import check_voxels
from medlens.config import Config, DataSection
from medlens.errors import DatasetError, MedlensError
from medlens.io import Image
from medlens.transforms.volume import normalize, resample


@dataclass
class BoxImage:
    """One preprocessed case: ``image (C, *S)`` float32 on the plan's grid, ``boxes (N, 2D)`` float32 corners
    on that grid, ``labels (N,)`` int64, and ``scale (D,)`` = grid shape / original shape per axis."""

    case_id: str
    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scale: np.ndarray
    patient_id: str | None = None


def grid_shape(image: Image, data: DataSection) -> tuple[int, ...]:
    """The image's shape on the plan's grid (a pixel of unknown spacing counts as 1 mm)."""
    if not data.target_spacing:
        return image.spatial_shape
    spacing = image.spacing_mm if image.spacing_known else (1.0,) * image.spatial_dims
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise DatasetError(f"the image's voxel spacing {spacing} mm is not a positive finite size; its header is "
                           "corrupt, export the image again")
    return tuple(max(int(round(n * s / t)), 1) for n, s, t in zip(image.spatial_shape, spacing, data.target_spacing))


def prepare_array(image: Image, data: DataSection, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(C, *S)`` of any dtype -> normalised float32 on the plan's grid, and the per-axis ``scale (D,)``.

    Raises:
        DatasetError: channels differ from the plan's, or a corrupt spacing.
        BudgetError: the resampled image would be past the work budget in force.
    """
    if image.channels != data.channels:
        raise DatasetError(f"{where}: {image.channels} channel(s) but the plan expects {data.channels}; every image "
                           "needs the same channels (convert greyscale and colour images to one kind)")
    shape = grid_shape(image, data)
    check_voxels((image.channels, *shape), f"resampling {where} to the plan's grid {list(shape)}")
    array = resample(image.array.astype(np.float32, copy=False), shape)
    array = np.ascontiguousarray(np.nan_to_num(normalize(array, data)), dtype=np.float32)
    return array, np.asarray(shape, np.float64) / np.asarray(image.spatial_shape, np.float64)


def scale_boxes(boxes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(N, 2D)`` corners times ``scale (D,)`` per axis (``1 / scale`` maps predictions back)."""
    return (np.asarray(boxes, np.float64).reshape(-1, 2 * len(scale)) * np.concatenate([scale, scale])).astype(
        np.float32)


def prepare_boxes(dataset, cases: list, config: Config, *, progress=None) -> list[BoxImage]:
    """Read and preprocess every case with its boxes (voxel corners of the original image, then scaled).

    Raises:
        DatasetError: an unreadable case, naming it and what to do.
    """
    if not cases:
        raise DatasetError("a split with no case; make splits with `medlens split` or add data")
    items = []
    for i, case in enumerate(cases):
        where = f"case {case.case_id} ({case.image})"
        try:
            image = dataset.load_image(case)
            array, scale = prepare_array(image, config.data, where)
            boxes, labels = dataset.load_boxes(case, image)
        except MedlensError as exc:
            raise DatasetError(f"{exc}. Run `medlens inspect` to list every problem case") from None
        except Exception as exc:  # noqa: BLE001 - whatever a bad file raises, training stops with its name
            raise DatasetError(f"{where}: could not be read ({type(exc).__name__}); run `medlens inspect`") from None
        items.append(BoxImage(case.case_id, array, scale_boxes(boxes, scale), np.asarray(labels, np.int64), scale,
                              case.patient_id))
        if progress:
            progress(i + 1, len(cases))
    return items


class BoxPatches(torch.utils.data.Dataset):
    """Training patches with their boxes; ``item -> (image (C, *P) float32, boxes (n, 2D), labels (n,))``.

    Args:
        items: the preprocessed training images.
        patch: ``P``, the patch shape (images no larger are padded to it).
        length: items per epoch.
        positive_fraction: share of crops centred on a box, for images larger than the patch.
        flip_axes: spatial axes that may be mirrored; intensity: +/- fraction of scale and shift; noise_std.
    """

    def __init__(self, items: list[BoxImage], patch: tuple[int, ...], *, length: int, positive_fraction: float,
                 flip_axes: tuple[int, ...] = (), intensity: float = 0.0, noise_std: float = 0.0,
                 probability: float = 0.5, seed: int = 0):
        self.items, self.patch, self.length = items, tuple(patch), int(length)
        self.positive_fraction, self.flip_axes = positive_fraction, tuple(flip_axes)
        self.intensity, self.noise_std, self.probability, self.seed = intensity, noise_std, probability, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        order = np.random.default_rng(_seed(self.seed, self.epoch, -1)).permutation(len(self.items))
        item = self.items[order[index % len(self.items)]]  # every image once per pass, in an order fixed per epoch
        rng = np.random.default_rng(_seed(self.seed, self.epoch, index))
        image, boxes, labels = crop_with_boxes(item, self.patch, rng, self.positive_fraction)
        image, boxes = self._augment(image, boxes, rng)
        return torch.from_numpy(image), torch.from_numpy(boxes), torch.from_numpy(labels)

    def _augment(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
        dims = image.ndim - 1
        for axis in self.flip_axes:
            if rng.random() < 0.5:
                image = np.flip(image, axis + 1)
                size = image.shape[axis + 1]
                boxes = boxes.copy()
                boxes[:, [axis, axis + dims]] = size - boxes[:, [axis + dims, axis]]
        if self.intensity and rng.random() < self.probability:
            image = image * (1 + rng.uniform(-self.intensity, self.intensity)) + rng.uniform(-self.intensity,
                                                                                              self.intensity)
        if self.noise_std and rng.random() < self.probability:
            image = image + rng.normal(0, self.noise_std, image.shape).astype(np.float32)
        return np.ascontiguousarray(image, dtype=np.float32), boxes


def crop_with_boxes(item: BoxImage, patch: tuple[int, ...], rng: np.random.Generator,
                    positive_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``(C, *patch)`` crop (zero-padded where the image ends) and the boxes whose centre lies inside, clipped."""
    shape = np.asarray(item.image.shape[1:])
    size = np.asarray(patch)
    dims = len(size)
    if len(item.boxes) and rng.random() < positive_fraction:
        box = item.boxes[rng.integers(len(item.boxes))]
        centre = (box[:dims] + box[dims:]) / 2 + rng.uniform(-0.25, 0.25, dims) * size
        start = np.round(centre - size / 2).astype(int)
    else:
        start = np.asarray([rng.integers(0, max(n - p, 0) + 1) for n, p in zip(shape, size)])
    start = np.clip(start, np.minimum(shape - size, 0), np.maximum(shape - size, 0))
    out = np.zeros((item.image.shape[0], *patch), np.float32)
    source = tuple(slice(max(s, 0), min(s + p, n)) for s, p, n in zip(start, size, shape))
    target = tuple(slice(max(-s, 0), max(-s, 0) + (sl.stop - sl.start)) for s, sl in zip(start, source))
    out[(slice(None), *target)] = item.image[(slice(None), *source)]
    boxes = item.boxes - np.concatenate([start, start]).astype(np.float32)
    centres = (boxes[:, :dims] + boxes[:, dims:]) / 2
    keep = np.all((centres >= 0) & (centres < size), axis=1)
    boxes = np.concatenate([np.clip(boxes[keep, :dims], 0, size), np.clip(boxes[keep, dims:], 0, size)], axis=1)
    return out, boxes.astype(np.float32), item.labels[keep]


def collate(batch):
    """``[(image, boxes, labels)]`` -> ``(images (B, C, *P), [{"box", "label"}])`` as MONAI's detector takes them."""
    from medlens.models.detectors import BOX_KEY, LABEL_KEY

    images = torch.stack([b[0] for b in batch])
    return images, [{BOX_KEY: b[1], LABEL_KEY: b[2]} for b in batch]


def _seed(seed: int, epoch: int, index: int) -> int:
    return int(hashlib.sha1(f"{seed}/{epoch}/{index}".encode()).hexdigest()[:12], 16)
