"""NIfTI, MetaImage and NRRD through SimpleITK (which does the parsing; we check the result)."""

from __future__ import annotations

import struct
import zlib
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
    if str(path).lower().endswith((".nii", ".nii.gz")):
        image.meta["nonfinite_voxels"] = check_nifti(Path(path))
    return image


_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 128: "u1", 256: "i1", 512: "u2", 768: "u4",
                 1024: "i8", 1280: "u8", 2304: "u1"}
_NIFTI_COMPONENTS = {128: 3, 2304: 4}  # RGB24, RGBA32


def check_nifti(path: Path) -> int:
    """Check a NIfTI-1 file's voxel block; return its number of NaN/inf voxels.

    SimpleITK 2.5's NIfTI reader reports success on a truncated file (missing voxels become 0)
    and silently turns NaN/inf into 0 (fixed in ITK 6), so both are checked here: the size from
    the file (or the gzip trailer) for every file, the raw values for float files. NIfTI-2 files
    are not checked.

    Raises:
        ReadError: the file holds fewer bytes than its header promises.
    """
    raw = Path(path).read_bytes()
    compressed = raw[:2] == b"\x1f\x8b"
    header = zlib.decompressobj(wbits=31).decompress(raw, 348) if compressed else raw[:348]
    layout = _nifti_layout(header)
    if layout is None:
        return 0
    dtype, offset, nbytes = layout
    stored = (struct.unpack("<I", raw[-4:])[0] if compressed else len(raw))
    if stored % 2**32 != (offset + nbytes) % 2**32 and (compressed or stored < offset + nbytes):
        raise ReadError(f"{path}: truncated: the header promises {offset + nbytes} bytes, the file holds "
                        f"{stored}; copy or export it again")
    if dtype[-2] != "f":
        return 0
    data = zlib.decompress(raw, wbits=31) if compressed else raw
    if len(data) < offset + nbytes:
        raise ReadError(f"{path}: truncated: the header promises {offset + nbytes} bytes, found {len(data)}")
    voxels = np.frombuffer(data, dtype=dtype, count=nbytes // int(dtype[-1]), offset=offset)
    return int(voxels.size - np.count_nonzero(np.isfinite(voxels)))


def _nifti_layout(header: bytes) -> tuple[str, int, int] | None:
    """(NumPy dtype, voxel offset, voxel bytes) from a NIfTI-1 header; ``None`` if not NIfTI-1."""
    if len(header) < 348:
        return None
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", header[:4])[0] != 348:
        return None
    datatype = struct.unpack(endian + "h", header[70:72])[0]
    if datatype not in _NIFTI_DTYPES:
        return None
    dims = struct.unpack(endian + "8h", header[40:56])
    count = int(np.prod([max(d, 1) for d in dims[1 : max(1, min(dims[0], 7)) + 1]]))
    dtype = endian + _NIFTI_DTYPES[datatype]
    nbytes = count * np.dtype(dtype).itemsize * _NIFTI_COMPONENTS.get(datatype, 1)
    return dtype, int(struct.unpack(endian + "f", header[108:112])[0]), nbytes


def write_itk(image: Image, path: Path) -> None:
    import SimpleITK as sitk

    from medlens.io.image import to_sitk

    sitk.WriteImage(to_sitk(image), str(path), useCompression=str(path).endswith((".gz", ".nrrd", ".mha")))


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [line for line in lines if "Description:" in line or "ERROR" in line.upper()]
    return (detail or lines or ["unknown error"])[-1][:300]
