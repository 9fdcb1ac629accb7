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

from medlens.errors import ReadError
from medlens.io.image import Image, identity_direction

NPZ_IMAGE_KEYS = ("image", "images", "arr_0")


def read_npy(path: Path) -> Image:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ReadError(f"{path}: not a readable .npy array ({exc}); it may be truncated or hold pickled "
                        "objects") from None
    return _array_to_image(array, path)


def read_npz(path: Path) -> Image:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            key = keys[0] if len(keys) == 1 else next((k for k in NPZ_IMAGE_KEYS if k in keys), None)
            if key is None:
                raise ReadError(_npz_key_message(path, keys))
            array = archive[key]
    except ReadError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ReadError(f"{path}: not a readable .npz archive ({exc}); it may be truncated") from None
    return _array_to_image(array, path)


def _npz_key_message(path: Path, keys: list[str]) -> str:
    if any(k.endswith("_images") for k in keys):
        return (f"{path} holds several image arrays ({', '.join(keys)}): it looks like a MedMNIST dataset; "
                f"open it as a dataset (`medlens inspect {path}`), not as one image")
    return (f"{path} holds {len(keys)} arrays ({', '.join(keys[:8])}) and none is named "
            f"{' / '.join(NPZ_IMAGE_KEYS)}; save the image under the key 'image'")


def _array_to_image(array: np.ndarray, path: Path) -> Image:
    if array.dtype.kind not in "biuf":
        raise ReadError(f"{path}: expected a numeric array, found dtype {array.dtype}")
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
