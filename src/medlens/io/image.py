"""The :class:`Image` carrier: a channel-first array with its physical geometry.

Axis convention (the one MONAI's readers use): spatial axes are in ITK index order, so a 2D
array is ``(C, X, Y)`` (column, row) and a 3D array ``(C, X, Y, Z)``; ``spacing_mm``,
``origin_mm`` and the columns of ``direction`` follow the same order. 2D is stated by
``spatial_dims == 2``, never faked with a sentinel spacing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medlens.errors import ReadError


@dataclass
class Image:
    """An image array plus where it sits in the patient.

    Attributes:
        array: ``(C, X, Y)`` or ``(C, X, Y, Z)``, any numeric dtype.
        spacing_mm: voxel size per spatial axis.
        origin_mm: physical position of the first voxel's centre.
        direction: row-major ``D x D`` direction cosines, flattened (SimpleITK's layout).
        spacing_known: ``False`` when the format stores no spacing (PNG, NumPy); the 1 mm
            default is then a placeholder, not a measurement.
        path: where the image was read from, if anywhere.
        meta: format details (modality, DICOM series UID, pixel type, ...), never identifiers.
    """

    array: np.ndarray
    spacing_mm: tuple[float, ...]
    origin_mm: tuple[float, ...]
    direction: tuple[float, ...]
    spacing_known: bool = True
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        dims = self.array.ndim - 1
        if dims not in (2, 3):
            raise ValueError(f"Image.array must be (C, X, Y) or (C, X, Y, Z); got shape {self.array.shape}")
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)
        self.origin_mm = tuple(float(o) for o in self.origin_mm)
        self.direction = tuple(float(d) for d in self.direction)
        if len(self.spacing_mm) != dims or len(self.origin_mm) != dims or len(self.direction) != dims * dims:
            raise ValueError(
                f"geometry does not match a {dims}D array: spacing {self.spacing_mm}, origin {self.origin_mm}, "
                f"direction of {len(self.direction)} values (expected {dims}, {dims}, {dims * dims})"
            )

    @property
    def spatial_dims(self) -> int:
        return self.array.ndim - 1

    @property
    def channels(self) -> int:
        return self.array.shape[0]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    def with_array(self, array: np.ndarray) -> Image:
        """A copy that keeps the geometry but carries another array of the same spatial shape."""
        if tuple(array.shape[1:]) != self.spatial_shape:
            raise ValueError(f"new array shape {array.shape} does not match spatial shape {self.spatial_shape}")
        return replace(self, array=array, meta=dict(self.meta))

    def same_geometry(self, other: Image, *, atol_mm: float = 1e-3, atol_dir: float = 1e-4) -> bool:
        """Whether ``other`` sits on the same voxel grid (shape, spacing, origin, direction)."""
        return (
            self.spatial_shape == other.spatial_shape
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=atol_mm)
            and np.allclose(self.origin_mm, other.origin_mm, atol=atol_mm)
            and np.allclose(self.direction, other.direction, atol=atol_dir)
        )


def identity_direction(dims: int) -> tuple[float, ...]:
    return tuple(np.eye(dims).ravel().tolist())


@functools.cache
def simpleitk():
    """The SimpleITK module, with ITK's warnings off: they go to stderr and quote file paths (an
    upload's temporary path); medlens checks what it reads itself and says what is wrong."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return sitk


_FD2_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Within the block, what C code writes to file descriptor 2 is dropped.

    MetaIO and niftilib inside SimpleITK print their own complaints ("data not read completely",
    "bad datatype") straight to the process's stderr, past Python and past ITK's warning switch; they
    can name file paths. The read that follows raises a :class:`ReadError` that says what is wrong.
    Python's own ``sys.stderr`` is flushed first, so nothing of medlens' is lost.
    """
    with _FD2_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no descriptor 2 to redirect (closed, embedded)
            yield
            return
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def from_sitk(sitk_image, path: Path | None = None) -> Image:
    """Convert a SimpleITK image (scalar or vector, 2D, 3D, or 4D as 3D + channels).

    Returns:
        Image with array ``(C, X, Y[, Z])``; a 4D image's last axis becomes the channels.

    Raises:
        ReadError: more than 4 dimensions, or vector pixels on a 4D grid.
    """
    sitk = simpleitk()
    dims = sitk_image.GetDimension()
    vector = sitk_image.GetNumberOfComponentsPerPixel() > 1
    if dims not in (2, 3, 4) or (vector and dims == 4):
        raise ReadError(f"{path}: a {dims}D image{' of vector pixels' if vector else ''} of size "
                        f"{sitk_image.GetSize()}; medlens reads 2D and 3D images, and 4D ones whose 4th axis "
                        "holds the channels. Split it into 3D volumes")
    array = sitk.GetArrayViewFromImage(sitk_image)  # (Z, Y, X) or (Z, Y, X, C) for vector pixels
    if vector:
        channels_last = np.array(array)  # the view dies with sitk_image
        array = np.moveaxis(channels_last, -1, 0)
        array = array.transpose(0, *range(dims, 0, -1))
    elif dims == 4:  # multi-modal volumes stored as 4D NIfTI: (T, Z, Y, X) -> (T, X, Y, Z)
        array = np.array(array).transpose(0, 3, 2, 1)
    else:
        array = np.array(array).T[None]
    spatial = min(dims, 3)
    spacing = sitk_image.GetSpacing()[:spatial]
    origin = sitk_image.GetOrigin()[:spatial]
    direction = np.array(sitk_image.GetDirection()).reshape(dims, dims)[:spatial, :spatial]
    return Image(array, spacing, origin, tuple(direction.ravel()), path=path)


def to_sitk(image: Image):
    """Convert to a SimpleITK image (vector pixels when there are several channels)."""
    sitk = simpleitk()

    dims = image.spatial_dims
    spatial_reversed = tuple(range(dims, 0, -1))
    if image.channels == 1:
        sitk_image = sitk.GetImageFromArray(np.ascontiguousarray(image.array[0].transpose()))
    else:
        channels_last = np.moveaxis(image.array.transpose(0, *spatial_reversed), 0, -1)
        sitk_image = sitk.GetImageFromArray(np.ascontiguousarray(channels_last), isVector=True)
    sitk_image.SetSpacing(image.spacing_mm)
    sitk_image.SetOrigin(image.origin_mm)
    sitk_image.SetDirection(image.direction)
    return sitk_image
