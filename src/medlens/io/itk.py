"""NIfTI, MetaImage and NRRD through SimpleITK, after medlens has checked the header against the file.

SimpleITK allocates what a header declares before it finds out the file is short, and inflates
what a compressed block holds whatever its size. So the header is read here first (NIfTI-1/2
binary header, MetaImage and NRRD text headers): sizes against the work budget, the data's length
(or the gzip trailer, or a bounded inflate of the block) against what the header promises.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.budget import check_voxels
from medlens.errors import ReadError
from medlens.io.codecs import StreamError, inflate_bounded
from medlens.io.image import Image, from_sitk, quiet_native_stderr, simpleitk
from medlens.io.metaheader import check_text_header


def read_itk(path: Path) -> Image:
    """Read a NIfTI / MetaImage / NRRD file with its geometry.

    Returns:
        Image ``(C, X, Y[, Z])``; 4D files give a 3D image with the 4th axis as channels.

    Raises:
        ReadError: the file is corrupt, truncated, lies about its size, or its data file is missing.
        BudgetError: the declared size is past the work budget.
    """
    sitk = simpleitk()
    path = Path(path)
    if str(path).lower().endswith((".nii", ".nii.gz")):
        layout = check_nifti(path)
        image = _read_float_nifti(path, layout) if layout is not None else None
        if image is not None:
            return image
    else:
        check_text_header(path)
    try:
        with quiet_native_stderr():
            sitk_image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ReadError(f"{path}: could not be read as an image ({_first_line(exc, path)}); "
                        "the file may be truncated or corrupt, re-export or re-download it") from None
    image = from_sitk(sitk_image, path=path)
    image.meta["pixel_type"] = sitk_image.GetPixelIDTypeAsString()
    return image


@dataclass(frozen=True)
class NiftiLayout:
    """Where a NIfTI file's voxels are and how many bytes they take.

    Attributes:
        dtype: NumPy dtype with byte order, or ``None`` for a data type medlens does not size.
        shape: the used dims, ``dim[1..dim[0]]``.
        offset: ``vox_offset``, in bytes from the start of the (uncompressed) file.
        nbytes: voxel bytes (0 when ``dtype`` is ``None``).
        header: the first 348 (NIfTI-1) or 540 (NIfTI-2) bytes.
    """

    dtype: str | None
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    header: bytes


_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 32: "c8", 64: "f8", 128: "u1", 256: "i1", 512: "u2",
                 768: "u4", 1024: "i8", 1280: "u8", 1792: "c16", 2304: "u1"}
_NIFTI_COMPONENTS = {128: 3, 2304: 4}  # RGB24, RGBA32
# Header extensions are small; a voxel offset past this is a corrupt or hostile header.
MAX_NIFTI_OFFSET = 1 << 26


def check_nifti(path: Path) -> NiftiLayout | None:
    """Check a NIfTI header against the work budget and the file, before anything is allocated.

    The data's length comes from the file, or for ``.nii.gz`` from the gzip trailer (size mod
    2^32): nothing is decompressed but the header.

    Returns:
        The layout, or ``None`` for a file that is no NIfTI-1/2 (SimpleITK then explains).

    Raises:
        ReadError: impossible dims (0, negative, more than 4D), a NaN / negative / too small voxel
            offset, or fewer bytes than the header promises.
        BudgetError: the declared voxels are past the work budget.
    """
    with open(path, "rb") as f:
        head = f.read(4096)
        compressed = head[:2] == b"\x1f\x8b"
        try:
            header = _gunzip_prefix(head, 540) if compressed else head[:540]
        except StreamError:
            raise ReadError(f"{path}: corrupt gzip data; copy or export it again") from None
        layout = _nifti_layout(header, path)
        if layout is None:
            return None
        f.seek(0, 2)
        length = f.tell()
        f.seek(max(length - 4, 0))
        stored = struct.unpack("<I", f.read(4))[0] if compressed else length
    expected = layout.offset + layout.nbytes
    if layout.dtype is not None and ((compressed and stored != expected % 2**32) or
                                     (not compressed and stored < expected)):
        raise ReadError(f"{path}: truncated: the header promises {expected:,} bytes, the file holds "
                        f"{stored:,}; copy or export it again")
    return layout


def _gunzip_prefix(data: bytes, size: int) -> bytes:
    import zlib

    try:
        return zlib.decompressobj(wbits=31).decompress(data, size)
    except zlib.error:
        raise StreamError("corrupt gzip data") from None


def _nifti_layout(header: bytes, path: Path) -> NiftiLayout | None:
    """The checked layout of a NIfTI-1 or NIfTI-2 header; ``None`` if the header is neither."""
    fields = _nifti1_fields(header) or _nifti2_fields(header)
    if fields is None:
        return None
    dims, datatype, offset, single_file, pixdim = fields
    if not 1 <= dims[0] <= 7:
        raise ReadError(f"{path}: the NIfTI header declares {dims[0]} dimensions (dim[0] must be 1 to 7); the "
                        "header is corrupt, export the image again")
    shape = tuple(int(d) for d in dims[1:dims[0] + 1])
    if any(d < 1 for d in shape):
        raise ReadError(f"{path}: the NIfTI header declares a size of 0 or less along an axis: shape {shape}; the "
                        "header is corrupt, export the image again")
    if any(d > 1 for d in shape[5:]) or (len(shape) > 4 and shape[3] > 1 and shape[4] > 1):
        # dim[5] alone is ITK's vector components (dim[4] = 1): an RGB or vector image, not 5D
        raise ReadError(f"{path}: a {len(shape)}D NIfTI of shape {shape}; medlens reads 2D and 3D images, and "
                        "4D ones whose 4th axis holds the channels. Split it into 3D volumes")
    spacing = pixdim[1:min(len(shape), 3) + 1]
    if not all(math.isfinite(p) for p in spacing):
        # ITK's NIfTI reader silently replaces a NaN spacing with 1 mm: a made-up geometry
        raise ReadError(f"{path}: the NIfTI header's voxel spacing (pixdim) {tuple(spacing)} is not finite; the "
                        "header is corrupt, fix the spacing or export the image again")
    if not math.isfinite(offset) or offset < 0 or offset > MAX_NIFTI_OFFSET or (single_file and offset < 352):
        shown = f"{offset:.6g}" if math.isfinite(offset) else str(offset)
        raise ReadError(f"{path}: the NIfTI header's vox_offset is {shown}; a single-file .nii needs 352 or more "
                        "(where the voxels start); the header is corrupt, export the image again")
    components = _NIFTI_COMPONENTS.get(datatype, 1)
    count = check_voxels((components, *shape), f"reading {path.name}")
    dtype = _NIFTI_DTYPES.get(datatype)
    if dtype is None:
        return NiftiLayout(None, shape, int(offset), 0, header)
    dtype = ("<" if header[:4] in (b"\x5c\x01\x00\x00", b"\x1c\x02\x00\x00") else ">") + dtype
    return NiftiLayout(dtype, shape, int(offset), count * np.dtype(dtype).itemsize, header)


def _nifti1_fields(header: bytes) -> tuple[list[int], int, float, bool, tuple[float, ...]] | None:
    """(dim[0..7], datatype, vox_offset, single file, pixdim[0..7]) of a NIfTI-1 header."""
    if len(header) < 348:
        return None
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", header[:4])[0] != 348:
        return None
    dims = list(struct.unpack(endian + "8h", header[40:56]))
    datatype = struct.unpack(endian + "h", header[70:72])[0]
    offset = struct.unpack(endian + "f", header[108:112])[0]
    return dims, datatype, offset, header[344:347] == b"n+1", struct.unpack(endian + "8f", header[76:108])


def _nifti2_fields(header: bytes) -> tuple[list[int], int, float, bool, tuple[float, ...]] | None:
    """(dim[0..7], datatype, vox_offset, single file, pixdim[0..7]) of a NIfTI-2 header."""
    if len(header) < 540 or header[4:8] != b"n+2\x00":
        return None
    endian = "<" if struct.unpack("<i", header[:4])[0] == 540 else ">"
    if struct.unpack(endian + "i", header[:4])[0] != 540:
        return None
    dims = list(struct.unpack(endian + "8q", header[16:80]))
    datatype = struct.unpack(endian + "h", header[12:14])[0]
    offset = float(struct.unpack(endian + "q", header[168:176])[0])
    return dims, datatype, offset, True, struct.unpack(endian + "8d", header[104:168])


def _read_float_nifti(path: Path, layout: NiftiLayout) -> Image | None:
    """Float NIfTI-1 volumes: voxels straight from the file, geometry from SimpleITK's header parsing.

    SimpleITK 2.5's NIfTI reader silently turns NaN/inf into 0 (fixed in ITK 6), which would hide
    corrupt voxels; reading the float block here keeps them (and decompresses once, not twice,
    never past the size the header declares). ``None`` for anything else (integer data,
    intensity scaling, vectors, NIfTI-2): SimpleITK reads those.
    """
    if layout.dtype is None or layout.dtype[-2] != "f" or len(layout.header) < 348 \
            or layout.header[344:347] not in (b"n+1", b"ni1") or not _unscaled(layout.header):
        return None
    data = _nifti_bytes(path, layout.offset + layout.nbytes)
    sitk = simpleitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with quiet_native_stderr():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ReadError(f"{path}: could not be read as an image ({_first_line(exc, path)})") from None
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1 or reader.GetDimension() not in (2, 3) \
            or int(np.prod(size)) * np.dtype(layout.dtype).itemsize != layout.nbytes:
        return None
    voxels = np.frombuffer(data, dtype=layout.dtype, count=int(np.prod(size)), offset=layout.offset)
    voxels = voxels.reshape(size[::-1])
    array = voxels.astype(voxels.dtype.newbyteorder("="), copy=True).T[None]
    image = Image(array, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), path=path)
    nonfinite = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
    image.meta.update(pixel_type=f"{np.dtype(layout.dtype).name} (NIfTI)", nonfinite_voxels=nonfinite)
    return image


def _nifti_bytes(path: Path, expected: int) -> bytes:
    """The first ``expected`` bytes of the (uncompressed) NIfTI file, never inflating past them.

    Raises:
        ReadError: corrupt gzip data, or fewer or more bytes than the header declares.
    """
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        data = raw
    else:
        try:
            data = inflate_bounded(raw, wbits=31, limit=expected).data
        except StreamError as exc:
            raise ReadError(f"{path}: {exc}; copy or export it again") from None
    if len(data) < expected:
        raise ReadError(f"{path}: truncated: the header promises {expected:,} bytes, found {len(data):,}; "
                        "copy or export it again")
    return data


def _unscaled(header: bytes) -> bool:
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    slope, inter = struct.unpack(endian + "2f", header[112:120])
    return slope in (0.0, 1.0) and inter == 0.0


def write_itk(image: Image, path: Path) -> None:
    from medlens.io.image import to_sitk

    simpleitk().WriteImage(to_sitk(image), str(path), useCompression=str(path).endswith((".gz", ".nrrd", ".mha")))


def _first_line(exc: Exception, path: Path) -> str:
    """ITK's reason, without the path (an upload's temporary path) it usually quotes."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [line for line in lines if "Description:" in line or "ERROR" in line.upper()]
    reason = (detail or lines or ["unknown error"])[-1][:300]
    return re.sub(r"(/[^\s:]*/)([^/\s:]+)", r"\2", reason.replace(str(path), path.name))
