"""Box geometry: annotated boxes placed on an image's voxel grid, back to world millimetres, and from masks.

Conventions (see :class:`medlens.types.Boxes`): corners are ``(x_min, y_min[, z_min], x_max, y_max[, z_max])``
along the array's spatial axes ``(X, Y[, Z])`` in continuous voxel coordinates, voxel ``i`` spanning
``[i, i + 1)`` (MONAI's ``xyxy`` / ``xyzxyz`` mode on a ``(C, X, Y[, Z])`` array). The centre of voxel ``i``
sits in the world at ``origin + direction @ (spacing * i)``, so continuous coordinate ``c`` sits at
``origin + direction @ (spacing * (c - 0.5))``.
"""

from __future__ import annotations

import itertools

import numpy as np

from medlens.errors import DatasetError
from medlens.io import Image
from medlens.types import Boxes


def corners_of(values: np.ndarray, form: str) -> np.ndarray:
    """``(N, 2D)`` corners from ``(N, 2D)`` values in ``form`` (``"corners"`` or ``"center_size"``)."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    if form == "corners":
        return values
    if form == "center_size":
        dims = values.shape[1] // 2
        centre, size = values[:, :dims], values[:, dims:]
        return np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    raise ValueError(f"box form must be 'corners' or 'center_size', got {form!r}")


def boxes_on_grid(boxes: Boxes, image: Image, *, case_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Place a case's annotated boxes on ``image``'s voxel grid.

    Boxes in millimetres are world axis-aligned boxes: their ``2^D`` world corners are taken to continuous
    index space and the enclosing axis-aligned box is kept (exact when the direction matrix is a signed
    permutation; a slightly larger box on an oblique image). Nothing is clipped here: the audit reports
    boxes outside the image, :meth:`~medlens.data.dataset.Dataset.load_boxes` clips them.

    Args:
        boxes: the case's boxes as annotated.
        image: the image they belong to (``(C, X, Y[, Z])`` with its geometry).
        case_id: named in errors.

    Returns:
        ``(N, 2D)`` float32 voxel corners and ``(N,)`` int64 class indices.

    Raises:
        DatasetError: boxes of another dimensionality than the image, or millimetre boxes on an image without
            known geometry.
    """
    dims = image.spatial_dims
    labels = np.asarray(boxes.labels, dtype=np.int64).reshape(-1)
    if not len(boxes):
        return np.zeros((0, 2 * dims), np.float32), labels
    where = f"case {case_id}" if case_id else f"image {image.path or '(in memory)'}"
    values = np.asarray(boxes.values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 2 * dims:
        raise DatasetError(f"{where}: boxes have {values.shape[-1]} numbers each but the image is {dims}D "
                           f"(shape {image.spatial_shape}), which needs {2 * dims}; give {dims} minimum and {dims} "
                           "maximum coordinates (or centre and size) per box")
    corners = corners_of(values, boxes.form)
    if boxes.unit == "mm":
        if not image.spacing_known:
            raise DatasetError(f"{where}: boxes are in millimetres but {image.path or 'the image'} stores no "
                               "geometry (spacing, origin, direction), so they cannot be placed on it; give the "
                               "boxes in voxels (box_unit 'voxel', or the voxel columns of a CSV), or use an image "
                               "format that keeps geometry (NIfTI, NRRD, MHA, DICOM)")
        corners = _enclosing(world_to_index(_all_corners(corners), image))
    elif boxes.unit != "voxel":
        raise DatasetError(f"{where}: box unit must be 'voxel' or 'mm', got {boxes.unit!r}")
    return corners.astype(np.float32), labels


def boxes_to_world(corners: np.ndarray, image: Image) -> np.ndarray:
    """Voxel corners on ``image`` as world axis-aligned boxes: ``(N, 2D)`` centre + size in millimetres.

    The inverse of :func:`boxes_on_grid` for millimetre ``center_size`` boxes (exact on an image whose
    direction is a signed permutation; the enclosing world box on an oblique one).
    """
    corners = np.asarray(corners, dtype=np.float64)
    dims = image.spatial_dims
    if not len(corners):
        return np.zeros((0, 2 * dims), np.float64)
    world = _enclosing(index_to_world(_all_corners(corners), image))
    low, high = world[:, :dims], world[:, dims:]
    return np.concatenate([(low + high) / 2, high - low], axis=1)


def index_to_world(points: np.ndarray, image: Image) -> np.ndarray:
    """``(..., D)`` continuous voxel coordinates to ``(..., D)`` world millimetres."""
    direction, spacing, origin = _geometry(image)
    return origin + (spacing * (np.asarray(points, np.float64) - 0.5)) @ direction.T


def world_to_index(points: np.ndarray, image: Image) -> np.ndarray:
    """``(..., D)`` world millimetres to ``(..., D)`` continuous voxel coordinates."""
    direction, spacing, origin = _geometry(image)
    return (np.asarray(points, np.float64) - origin) @ np.linalg.inv(direction).T / spacing + 0.5


def _geometry(image: Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dims = image.spatial_dims
    return (np.asarray(image.direction, np.float64).reshape(dims, dims), np.asarray(image.spacing_mm, np.float64),
            np.asarray(image.origin_mm, np.float64))


def _all_corners(corners: np.ndarray) -> np.ndarray:
    """``(N, 2D)`` boxes to ``(N, 2^D, D)`` points: every combination of each axis' minimum and maximum."""
    dims = corners.shape[1] // 2
    picks = np.array(list(itertools.product((0, 1), repeat=dims)))  # (2^D, D): 0 = minimum, 1 = maximum
    columns = picks * dims + np.arange(dims)
    return corners[:, columns]


def _enclosing(points: np.ndarray) -> np.ndarray:
    """``(N, K, D)`` points to the ``(N, 2D)`` axis-aligned boxes that enclose each row's points."""
    return np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1)


def clip_boxes(corners: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """``(N, 2D)`` corners clipped to the image ``[0, shape)`` along each axis."""
    dims = len(spatial_shape)
    upper = np.asarray(spatial_shape, dtype=np.float64)
    low = np.clip(corners[:, :dims], 0, upper)
    high = np.clip(corners[:, dims:], 0, upper)
    return np.concatenate([low, high], axis=1).astype(corners.dtype)


def box_sizes(corners: np.ndarray) -> np.ndarray:
    """``(N, D)`` side lengths (negative for an inverted box) of ``(N, 2D)`` corners."""
    dims = corners.shape[1] // 2
    return corners[:, dims:] - corners[:, :dims]


def boxes_from_mask(mask: np.ndarray, label_values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One box per connected component of each label of a label map.

    Components use full connectivity (voxels touching by a face, an edge or a corner are one object),
    and each box spans its component's voxels ``[min, max + 1)`` along every axis.

    Args:
        mask: ``(X, Y[, Z])`` integer label map.
        label_values: the foreground values in class order: class ``k`` is ``label_values[k]``.

    Returns:
        ``(N, 2D)`` float32 corners and ``(N,)`` int64 class indices, ordered by class then component.
    """
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    corners, labels = [], []
    for class_index, value in enumerate(label_values):
        components, count = ndimage.label(mask == value, structure=structure)
        for region in ndimage.find_objects(components)[:count]:
            if region is None:
                continue
            corners.append([s.start for s in region] + [s.stop for s in region])
            labels.append(class_index)
    return (np.asarray(corners, np.float32).reshape(-1, 2 * mask.ndim), np.asarray(labels, np.int64))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` intersection over union of ``(N, 2D)`` and ``(M, 2D)`` corners (0 for empty boxes)."""
    dims = a.shape[1] // 2
    low = np.maximum(a[:, None, :dims], b[None, :, :dims])
    high = np.minimum(a[:, None, dims:], b[None, :, dims:])
    inter = np.clip(high - low, 0, None).prod(axis=2)
    volume_a = np.clip(box_sizes(a), 0, None).prod(axis=1)
    volume_b = np.clip(box_sizes(b), 0, None).prod(axis=1)
    union = volume_a[:, None] + volume_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def usable_boxes(corners: np.ndarray, labels: np.ndarray, spatial_shape: tuple[int, ...]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """What training sees: boxes clipped to the image, then those with a side <= 0 dropped.

    Returns:
        ``(M, 2D)`` float32 corners and ``(M,)`` int64 labels, ``M <= N``.
    """
    clipped = clip_boxes(np.asarray(corners, np.float32), spatial_shape)
    keep = (box_sizes(clipped) > 0).all(axis=1)
    return clipped[keep], np.asarray(labels, np.int64)[keep]


def annotated_boxes(dataset, case, image: Image) -> tuple[np.ndarray, np.ndarray]:
    """A case's boxes on ``image``'s grid as annotated, before clipping: ``(N, 2D)`` float32, ``(N,)`` int64.

    From ``case.boxes``, or, for a dataset opened with ``boxes_from_masks``, from the case's mask (which must
    share the image's grid).

    Raises:
        DatasetError: see :func:`boxes_on_grid`; a mask of another shape than its image.
    """
    if case.boxes is not None:
        return boxes_on_grid(case.boxes, image, case_id=case.case_id)
    if dataset.meta.get("boxes_from_masks") and case.mask is not None:
        mask = dataset.load_mask(case)
        if mask.spatial_shape != image.spatial_shape or mask.channels != 1:
            raise DatasetError(f"case {case.case_id}: mask {case.mask} has shape {mask.array.shape} but its image "
                               f"{case.image} has spatial shape {image.spatial_shape}; boxes from masks need one "
                               "single-channel mask on the image's grid (resample it with nearest neighbour)")
        return boxes_from_mask(mask.array[0], dataset.meta["box_label_values"])
    return np.zeros((0, 2 * image.spatial_dims), np.float32), np.zeros((0,), np.int64)
