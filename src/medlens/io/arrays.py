"""NumPy ``.npy`` / ``.npz`` files holding a single image.

NumPy arrays carry no geometry, so they are read in NumPy's row-major order, as SimpleITK's
``GetArrayFromImage`` writes them: ``(Y, X)`` grey, ``(Y, X, 3|4)`` colour, ``(Z, Y, X)`` volume,
``(C, Z, Y, X)`` multi-channel volume. Spacing is a 1 mm placeholder (``spacing_known=False``).
A MedMNIST archive is a dataset, not an image: open it with :func:`medlens.data.open_dataset`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from medlens.budget import check_voxels
from medlens.errors import ReadError
from medlens.io.image import Image, identity_direction

NPZ_IMAGE_KEYS = ("image", "images", "arr_0")


def read_npy(path: Path) -> Image:
    """Read a ``.npy`` array as an image, its header checked before any voxel is read.

    Raises:
        ReadError: not a readable array, pickled objects, or fewer bytes than the header declares.
        BudgetError: the declared shape is past the work budget.
    """
    try:
        with open(path, "rb") as f:
            _npy_header(f, Path(path).stat().st_size, path)
            array = np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ReadError(f"{path}: not a readable .npy array ({_reason(exc)}); it may be truncated or hold "
                        "pickled objects") from None
    return _array_to_image(array, path)


def read_npz(path: Path) -> Image:
    """Read the image array of a ``.npz`` archive (the only one, or ``image`` / ``images`` / ``arr_0``).

    Raises:
        ReadError: no image array, a corrupt archive or member.
        BudgetError: the member's declared shape is past the work budget.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".npy")]
            keys = [n[:-4] for n in names]
            key = keys[0] if len(keys) == 1 else next((k for k in NPZ_IMAGE_KEYS if k in keys), None)
            if key is None:
                raise ReadError(_npz_key_message(path, keys))
            info = archive.getinfo(key + ".npy")
            with archive.open(info) as member:
                _npy_header(member, info.file_size, path)
                array = np.lib.format.read_array(member, allow_pickle=False)
    except ReadError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise ReadError(f"{path}: not a readable .npz archive ({_reason(exc)}); it may be truncated") from None
    return _array_to_image(array, path)


def _npy_header(f, size: int, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a ``.npy`` header, after checking them against the budget and ``size``.

    Args:
        f: positioned at the start of the ``.npy`` data; left there (``read_array`` reads the header again).
        size: bytes the file (or zip member, as its header declares) holds.

    Raises:
        ReadError: objects instead of numbers, or fewer bytes than shape x itemsize.
        BudgetError: the shape is past the work budget.
        ValueError: not a ``.npy`` header.
    """
    start = f.tell()
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = read_header(f)
    if dtype.hasobject:
        raise ReadError(f"{path}: holds pickled Python objects, not numbers; medlens never unpickles a file, "
                        "save a numeric array")
    if dtype.kind not in "biuf":
        raise ReadError(f"{path}: expected a numeric array, found dtype {dtype}")
    count = check_voxels(shape, f"reading {Path(path).name}")
    header_bytes = f.tell() - start
    if size - header_bytes < count * dtype.itemsize:
        raise ReadError(f"{path}: truncated: the .npy header declares shape {tuple(shape)} of {dtype} "
                        f"({count * dtype.itemsize:,} bytes), the file holds {max(size - header_bytes, 0):,}; "
                        "save the array again")
    f.seek(start)
    return tuple(shape), dtype


def _reason(exc: Exception) -> str:
    return type(exc).__name__


def _npz_key_message(path: Path, keys: list[str]) -> str:
    if any(k.endswith("_images") for k in keys):
        return (f"{path} holds several image arrays: it looks like a MedMNIST dataset; "
                f"open it as a dataset (`medlens inspect {path}`), not as one image")
    return (f"{path} holds {len(keys)} arrays and none is named {' / '.join(NPZ_IMAGE_KEYS)}; save the image "
            "under the key 'image'")


def _array_to_image(array: np.ndarray, path: Path) -> Image:
    if array.dtype.kind not in "biuf":
        raise ReadError(f"{path}: expected a numeric array, found dtype {array.dtype}")
    if array.size == 0:
        raise ReadError(f"{path}: the array has shape {array.shape}, with no voxels; save the image itself")
    if array.ndim == 2:
        chw = array.T[None]
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        chw = array[..., :3].transpose(2, 1, 0)
    elif array.ndim == 3:
        chw = array.T[None]
    elif array.ndim == 4:
        chw = array.transpose(0, 3, 2, 1)
    else:
        raise ReadError(f"{path}: expected a 2D or 3D image array (2 to 4 axes), found shape {array.shape}")
    dims = chw.ndim - 1
    return Image(chw, (1.0,) * dims, (0.0,) * dims, identity_direction(dims), spacing_known=False, path=Path(path))
