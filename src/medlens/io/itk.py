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

    is_nifti = str(path).lower().endswith((".nii", ".nii.gz"))
    if is_nifti:
        image = _read_float_nifti(Path(path))
        if image is not None:
            return image
    try:
        sitk_image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ReadError(f"{path}: could not be read as an image ({_first_line(exc)}); "
                        "the file may be truncated or corrupt, re-export or re-download it") from None
    image = from_sitk(sitk_image, path=Path(path))
    image.meta["pixel_type"] = sitk_image.GetPixelIDTypeAsString()
    if is_nifti:
        check_nifti(Path(path))
    return image


def _read_float_nifti(path: Path) -> Image | None:
    """Float NIfTI-1 volumes: voxels straight from the file, geometry from SimpleITK's header parsing.

    SimpleITK 2.5's NIfTI reader silently turns NaN/inf into 0 (fixed in ITK 6), which would hide
    corrupt voxels; reading the float block here keeps them (and decompresses once, not twice).
    ``None`` for anything else (integer data, intensity scaling, vectors, NIfTI-2): SimpleITK
    reads those.
    """
    import SimpleITK as sitk

    raw = path.read_bytes()
    compressed = raw[:2] == b"\x1f\x8b"
    try:
        data = zlib.decompress(raw, wbits=31) if compressed else raw
    except zlib.error as exc:
        raise ReadError(f"{path}: corrupt or truncated gzip data ({exc}); copy or export it again") from None
    layout = _nifti_layout(data[:348])
    if layout is None or layout[0][-2] != "f" or not _unscaled(data[:348]):
        return None
    dtype, offset, nbytes = layout
    if len(data) < offset + nbytes:
        raise ReadError(f"{path}: truncated: the header promises {offset + nbytes} bytes, found {len(data)}; "
                        "copy or export it again")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ReadError(f"{path}: could not be read as an image ({_first_line(exc)})") from None
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1 or reader.GetDimension() not in (2, 3) \
            or int(np.prod(size)) * np.dtype(dtype).itemsize != nbytes:
        return None
    voxels = np.frombuffer(data, dtype=dtype, count=int(np.prod(size)), offset=offset).reshape(size[::-1])
    array = voxels.astype(voxels.dtype.newbyteorder("="), copy=True).T[None]
    image = Image(array, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), path=path)
    nonfinite = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
    image.meta.update(pixel_type=f"{np.dtype(dtype).name} (NIfTI)", nonfinite_voxels=nonfinite)
    return image


def _unscaled(header: bytes) -> bool:
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    slope, inter = struct.unpack(endian + "2f", header[112:120])
    return slope in (0.0, 1.0) and inter == 0.0


_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 128: "u1", 256: "i1", 512: "u2", 768: "u4",
                 1024: "i8", 1280: "u8", 2304: "u1"}
_NIFTI_COMPONENTS = {128: 3, 2304: 4}  # RGB24, RGBA32


def check_nifti(path: Path) -> None:
    """Refuse a NIfTI-1 file that holds fewer voxel bytes than its header promises.

    SimpleITK 2.5's NIfTI reader reports success on a truncated file (the missing voxels become
    0). The size comes from the file, or for ``.nii.gz`` from the gzip trailer (size mod 2^32),
    so nothing is decompressed twice. NIfTI-2 files are not checked.

    Raises:
        ReadError: the file is shorter than its header says.
    """
    with open(path, "rb") as f:
        head = f.read(4096)
        compressed = head[:2] == b"\x1f\x8b"
        try:
            header = zlib.decompressobj(wbits=31).decompress(head, 348) if compressed else head[:348]
        except zlib.error:
            raise ReadError(f"{path}: corrupt gzip data; copy or export it again") from None
        layout = _nifti_layout(header)
        if layout is None:
            return
        f.seek(0, 2)
        length = f.tell()
        f.seek(max(length - 4, 0))
        stored = struct.unpack("<I", f.read(4))[0] if compressed else length
    _, offset, nbytes = layout
    expected = offset + nbytes
    if (compressed and stored != expected % 2**32) or (not compressed and stored < expected):
        raise ReadError(f"{path}: truncated: the header promises {expected} bytes, the file holds "
                        f"{stored}; copy or export it again")


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
