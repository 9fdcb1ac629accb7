"""Cases of several named images (views, modalities): reading, co-registration and the network's input array.

Two ways a multi-view case reaches the network (``data.fusion``, chosen by the plan from the audit's
``card["views"]["co_registered"]``):

- ``"channels"``: co-registered volumes (T1, T2, FLAIR of one study) are resampled onto the first view's
  grid (:func:`stack_views`) and stacked as channels before preprocessing; ``data.channels`` is the total.
  A case that lacks a view is refused.
- ``"views"``: views that do not share a grid (axial, coronal and sagittal pictures) are each read, resized
  and normalised on their own (:func:`prepare_views`) into ``(V * C, *input_size)``; view ``v`` is channels
  ``[v * C, (v + 1) * C)`` and a view the case lacks is all NaN.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from medlens.config import DataSection
from medlens.data.dataset import Dataset
from medlens.errors import DatasetError
from medlens.io import Image
from medlens.io.image import from_sitk, simpleitk, to_sitk
from medlens.transforms import Preprocessor
from medlens.types import Case


def view_count(data: DataSection) -> int:
    """``V``: the views encoded apart (``fusion: views`` with named views), else 1 (one image, or views stacked)."""
    return len(data.views) if data.fusion == "views" and data.views else 1


def input_channels(data: DataSection) -> int:
    """Channels of the network input: ``V * C`` with ``fusion: views`` and ``V`` named views, else ``C``."""
    return view_count(data) * data.channels


def read_view(dataset: Dataset, case: Case, name: str) -> Image | None:
    """The case's view ``name`` read alone (through the dataset's loader, if it has one); ``None`` when absent."""
    if name not in case.views:
        return None
    path = case.images[case.views.index(name)]
    return dataset.load_image(replace(case, images=(path,), views=(name,)))


def prepare_views(dataset: Dataset, case: Case, data: DataSection, *,
                  prepare: Preprocessor | None = None) -> np.ndarray:
    """Each of ``data.views`` read and preprocessed on its own, at its slot (fusion ``"views"``).

    Args:
        prepare: the preprocessor to reuse (``Preprocessor(data)`` when ``None``).

    Returns:
        float32 ``(V * C, *input_size)``: view ``v`` (in ``data.views`` order) is channels ``[v*C, (v+1)*C)``;
        a view the case lacks is all NaN.
    """
    prepare = prepare or Preprocessor(data)
    channels = data.channels
    out = np.full((len(data.views) * channels, *data.input_size), np.nan, dtype=np.float32)
    for v, name in enumerate(data.views):
        image = read_view(dataset, case, name)
        if image is not None:
            where = f"case {case.case_id}, view {name} ({case.images[case.views.index(name)]})"
            out[v * channels:(v + 1) * channels] = prepare(image, where=where)
    return out


def read_channels(dataset: Dataset, case: Case, views: tuple[str, ...]) -> Image:
    """The case's ``views``, in that order, resampled onto the first one's grid and stacked (fusion ``"channels"``).

    Raises:
        DatasetError: the case lacks one of ``views`` (named), or the views do not overlap (see :func:`stack_views`).
    """
    missing = [name for name in views if name not in case.views]
    if missing:
        raise DatasetError(f"case {case.case_id} has no {', '.join(missing)} view (it has "
                           f"{', '.join(case.views) or 'none'}); with data.fusion: channels every case needs every "
                           "view: add the image, leave the case out, or use data.fusion: views (a missing view is "
                           "then left empty)")
    images = [read_view(dataset, case, name) for name in views]
    return stack_views(images, list(views), where=f"case {case.case_id}")


def stack_views(images: list[Image], names, reference: int = 0, *, where: str = "") -> Image:
    """Views resampled onto the reference view's grid (SimpleITK, linear) and stacked as channels.

    A view already on the reference grid is taken as it is; the others are resampled after checking that
    they overlap the reference in physical space (voxels outside the view become 0).

    Args:
        images: the views, each ``(C_v, *spatial)``.
        names: a name per view, for messages (file names, view names).
        reference: index of the view whose grid (shape, spacing, origin, direction) the result has.
        where: what the views belong to, prefixed to messages (e.g. ``"case 007"``).

    Returns:
        Image ``(sum C_v, *spatial of the reference)`` with the reference's geometry; float32 when a view
        was resampled.

    Raises:
        DatasetError: views of different dimensionality, a view off the reference grid whose spacing is
            unknown (PNG, JPEG), or one that does not overlap the reference (the distance in mm is given).
    """
    first = images[reference]
    if len(images) == 1:
        return first
    prefix = f"{where}: " if where else ""
    arrays = []
    for name, image in zip(names, images):
        if image is first or first.same_geometry(image):
            arrays.append(image.array)
            continue
        _check_resamplable(first, image, names[reference], name, prefix)
        arrays.append(_resample_onto(image, first))
    if any(a.dtype != arrays[0].dtype for a in arrays):
        arrays = [a.astype(np.float32, copy=False) for a in arrays]
    stacked = first.with_array(np.concatenate(arrays, axis=0))
    notes = [{**note, "message": f"{name}: {note['message']}"}
             for name, image in zip(names, images) for note in image.meta.get("read_warnings", [])]
    if notes:
        stacked.meta["read_warnings"] = notes
    return stacked


def _check_resamplable(reference: Image, image: Image, reference_name: str, name: str, prefix: str) -> None:
    grids = (f"{name} has shape {image.spatial_shape} / spacing {_mm(image.spacing_mm)} mm, {reference_name} "
             f"{reference.spatial_shape} / {_mm(reference.spacing_mm)} mm")
    if image.spatial_dims != reference.spatial_dims:
        raise DatasetError(f"{prefix}{name} is {image.spatial_dims}D but {reference_name} is "
                           f"{reference.spatial_dims}D; views stacked as channels need one dimensionality")
    if not (image.spacing_known and reference.spacing_known):
        raise DatasetError(f"{prefix}{grids}, and the format stores no physical geometry to align them by; resize "
                           "them to one size first, or use data.fusion: views (each view encoded apart)")
    if not grids_overlap(reference, image):
        gap = grid_gap_mm(reference, image)
        raise DatasetError(f"{prefix}{name} and {reference_name} do not overlap in physical space: they are "
                           f"{gap:.1f} mm apart ({grids}); register them onto one grid first (e.g. with "
                           "SimpleITK or ANTs), or use data.fusion: views")


def _mm(values) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in values)


def _resample_onto(image: Image, reference: Image) -> np.ndarray:
    """``image``'s array ``(C, *spatial)`` resampled linearly onto ``reference``'s grid, float32."""
    sitk = simpleitk()
    moving = to_sitk(image.with_array(image.array.astype(np.float32, copy=False)))
    grid = to_sitk(reference.with_array(np.zeros((1, *reference.spatial_shape), dtype=np.float32)))
    resampled = sitk.Resample(moving, grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    return from_sitk(resampled).array.astype(np.float32, copy=False)


def physical_box_mm(image: Image) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned box (lower, upper corners, mm) around the image's voxels, half a voxel past the centres."""
    dims = image.spatial_dims
    direction = np.asarray(image.direction, dtype=np.float64).reshape(dims, dims)
    spacing = np.asarray(image.spacing_mm, dtype=np.float64)
    extent = [(-0.5, n - 0.5) for n in image.spatial_shape]
    corners = np.array([np.asarray(image.origin_mm) + direction @ (np.asarray(index) * spacing)
                        for index in itertools.product(*extent)])
    return corners.min(axis=0), corners.max(axis=0)


def grids_overlap(a: Image, b: Image) -> bool:
    """Whether the physical boxes of two images share a volume (an area in 2D), not just a face."""
    low_a, high_a = physical_box_mm(a)
    low_b, high_b = physical_box_mm(b)
    return bool((np.minimum(high_a, high_b) - np.maximum(low_a, low_b) > 1e-6).all())


def grid_gap_mm(a: Image, b: Image) -> float:
    """How far apart the physical boxes of two images are (mm); 0 when they overlap or touch."""
    low_a, high_a = physical_box_mm(a)
    low_b, high_b = physical_box_mm(b)
    gap = np.maximum(0.0, np.maximum(low_b - high_a, low_a - high_b))
    return float(np.linalg.norm(gap))
