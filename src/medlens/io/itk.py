"""NIfTI, MetaImage and NRRD through SimpleITK (which does the parsing; we check the result)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from medlens.errors import ReadError
from medlens.io.image import Image, from_sitk


def read_itk(path: Path) -> Image:
    """Read a NIfTI / MetaImage / NRRD file with its geometry.

    Returns:
        Image ``(C, X, Y[, Z])``; 4D files give a 3D image with the 4th axis as channels.

    Raises:
        ReadError: the file is corrupt, truncated, or its data file is missing.
    """
    import SimpleITK as sitk

    try:
        sitk_image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ReadError(f"{path}: could not be read as an image ({_first_line(exc)}); "
                        "the file may be truncated or corrupt, re-export or re-download it") from None
    image = from_sitk(sitk_image, path=Path(path))
    image.meta["pixel_type"] = sitk_image.GetPixelIDTypeAsString()
    if image.array.dtype.kind == "f" and str(path).lower().endswith((".nii", ".nii.gz")):
        image.meta["nonfinite_voxels"] = count_nifti_nonfinite(Path(path))
    return image


def count_nifti_nonfinite(path: Path) -> int:
    """NaN/inf voxels stored in a float NIfTI-1 file.

    SimpleITK 2.5's NIfTI reader silently turns NaN and inf into 0 (fixed in ITK 6), which would
    hide corrupt voxels, so the raw voxel block is checked here. NIfTI-2 files are not checked.
    """
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.read(348)
        endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
        if struct.unpack(endian + "i", header[:4])[0] != 348:
            return 0  # NIfTI-2
        datatype = struct.unpack(endian + "h", header[70:72])[0]
        dtype = {16: "f4", 64: "f8"}.get(datatype)
        if dtype is None:
            return 0
        dims = struct.unpack(endian + "8h", header[40:56])
        count = int(np.prod([max(d, 1) for d in dims[1 : dims[0] + 1]]))
        f.read(max(int(struct.unpack(endian + "f", header[108:112])[0]) - 348, 0))
        voxels = np.frombuffer(f.read(count * int(dtype[1])), dtype=endian + dtype)
    return int(voxels.size - np.count_nonzero(np.isfinite(voxels)))


def write_itk(image: Image, path: Path) -> None:
    import SimpleITK as sitk

    from medlens.io.image import to_sitk

    sitk.WriteImage(to_sitk(image), str(path), useCompression=str(path).endswith((".gz", ".nrrd", ".mha")))


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [line for line in lines if "Description:" in line or "ERROR" in line.upper()]
    return (detail or lines or ["unknown error"])[-1][:300]
