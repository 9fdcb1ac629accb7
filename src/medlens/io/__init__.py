"""Read and write medical images with their geometry, through one entry point.

>>> image = read_image("ct/series_001")          # DICOM folder, NIfTI, MHA, NRRD, PNG, NumPy...
>>> image.array.shape, image.spacing_mm           # (1, 512, 512, 120), (0.7, 0.7, 2.5)
>>> write_image(image, "ct.nii.gz")               # geometry intact
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from medlens.errors import MedlensError, ReadError
from medlens.io.formats import IMAGE_SUFFIXES, ITK, RASTER, detect_format, misnamed_warning, suffix_of
from medlens.io.image import Image, identity_direction

__all__ = ["Image", "read_image", "write_image", "detect_format", "identity_direction", "IMAGE_SUFFIXES"]

WRITE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".png")


def read_image(path: str | os.PathLike, *, series_uid: str | None = None, spatial_dims: int | None = None,
               allow_nan: bool = False) -> Image:
    """Read any supported medical image with its geometry.

    Args:
        path: an image file, or a folder holding one DICOM series.
        series_uid: which DICOM series, when a folder holds several: its SeriesInstanceUID, or
            its 1-based number as the mixed-series message lists them ("2").
        spatial_dims: 2 or 3 to insist on a dimensionality (a volume where a 2D image is
            expected is an error, not a silent slice).
        allow_nan: keep NaN/inf voxels instead of refusing the image.

    Returns:
        Image with array ``(C, X, Y)`` or ``(C, X, Y, Z)``. What was read other than the file says, or
        changed on the way, is listed in ``image.meta["read_warnings"]`` as ``{"code", "message"}``
        dicts (a PNG named ``.jpg`` is read by its content: ``image.misnamed``; an alpha channel dropped
        or flattened: ``image.alpha``); the audit turns them into findings.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ReadError: unknown format, corrupt or truncated file, a header its data contradicts, wrong
            dimensionality, NaN voxels; also any unexpected failure of a reader (named by type).
        BudgetError: the image would be larger than the work budget (:mod:`medlens.budget`).
    """
    path = Path(path)
    fmt = _read_guarded(lambda path, _: detect_format(path), path, None)
    image = _read_guarded(_READERS[fmt], path, series_uid)
    image.meta.setdefault("format", fmt)
    if (misnamed := misnamed_warning(path, fmt)) is not None:
        image.meta.setdefault("read_warnings", []).append(misnamed)
    _check_geometry(image, path)
    if spatial_dims is not None and image.spatial_dims != spatial_dims:
        raise ReadError(f"{path}: expected a {spatial_dims}D image, found a {image.spatial_dims}D image of shape "
                        f"{image.spatial_shape}; use a {image.spatial_dims}D model or convert the file")
    if not allow_nan and image.array.dtype.kind == "f" and not np.isfinite(image.array).all():
        bad = int((~np.isfinite(image.array)).sum())
        raise ReadError(f"{path}: {bad} voxel(s) are NaN or infinite; fix the export, or replace them "
                        "(e.g. numpy.nan_to_num) before training")
    return image


def _check_geometry(image: Image, path: Path) -> None:
    """Refuse spacing that is not a positive finite size, or a non-finite origin or direction."""
    spacing = np.asarray(image.spacing_mm, dtype=float)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise ReadError(f"{path}: the voxel spacing {tuple(float(s) for s in spacing)} mm is not a positive finite "
                        "size on every axis; the header is corrupt, fix the spacing or export the image again")
    if not (np.isfinite(image.origin_mm).all() and np.isfinite(image.direction).all()):
        raise ReadError(f"{path}: the image's origin or direction holds NaN or infinite values; the header is "
                        "corrupt, export the image again")


def _read_guarded(reader, path: Path, series_uid: str | None) -> Image:
    """``reader(path, series_uid)``, every failure a :class:`MedlensError` (or FileNotFoundError).

    The readers check what they know; a hostile file can still reach a corner of pydicom, ITK or
    Pillow that fails some other way. The exception's text is not shown: it may quote header
    values (patient text, UIDs) or temporary paths.
    """
    try:
        return reader(path, series_uid)
    except (MedlensError, FileNotFoundError, KeyboardInterrupt):
        raise
    except MemoryError:
        raise ReadError(f"{path}: the image is too large to read on this machine (out of memory); downsample "
                        "it or use a machine with more memory") from None
    except Exception as exc:  # noqa: BLE001 - last line of defence: a bad file is a ReadError, never a traceback
        raise ReadError(f"{path}: could not be read ({type(exc).__name__} in {_reader_name(reader)}); "
                        "the file is corrupt or malformed, export it again") from None


def _reader_name(reader) -> str:
    name = reader.__name__.removeprefix("_read_")
    return "format detection" if name == "<lambda>" else name


def _read_dicom(path: Path, series_uid: str | None) -> Image:
    from medlens.io.dicom import read_dicom_file, read_dicom_series

    return read_dicom_series(path, series_uid) if path.is_dir() else read_dicom_file(path)


def _read_itk(path: Path, _series_uid: str | None) -> Image:
    from medlens.io.itk import read_itk

    return read_itk(path)


def _read_raster(path: Path, _series_uid: str | None) -> Image:
    from medlens.io.raster import read_raster

    return read_raster(path)


def _read_npy(path: Path, _series_uid: str | None) -> Image:
    from medlens.io.arrays import read_npy

    return read_npy(path)


def _read_npz(path: Path, _series_uid: str | None) -> Image:
    from medlens.io.arrays import read_npz

    return read_npz(path)


_READERS = {"dicom": _read_dicom, "dicom_series": _read_dicom, "npy": _read_npy, "npz": _read_npz,
            **{fmt: _read_itk for fmt in ITK}, **{fmt: _read_raster for fmt in RASTER}}


def write_image(image: Image, path: str | os.PathLike) -> Path:
    """Write an image with its geometry as NIfTI, MetaImage, NRRD or PNG, atomically.

    The file appears complete or not at all: it is written in a temporary folder beside the
    target and moved into place (both files for ``.mhd`` + ``.raw``).

    Returns:
        The path written.

    Raises:
        ValueError: unsupported suffix, or pixels the format cannot hold.
    """
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"cannot write {path}: medlens writes {', '.join(WRITE_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".medlens-write-", dir=path.parent))
    try:
        target = staging / path.name
        if suffix == ".png":
            from medlens.io.raster import write_png

            write_png(image, target)
        else:
            from medlens.io.itk import write_itk

            write_itk(image, target)
        for written in staging.iterdir():
            os.replace(written, path.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
