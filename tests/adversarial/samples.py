"""Small valid files in every format medlens accepts, written byte by byte (or by the format's own library).

The adversarial corpus (:mod:`adversarial.corpus`) starts from these and breaks them: each writer
exposes the header fields a hostile file would lie about (dims, spacing, offsets, compression), so a
lie is one argument, not a patch at a magic offset. Every function is deterministic.

The layouts follow the formats' specifications: NIfTI-1 (348-byte header + 4-byte extension flag),
MetaImage (``key = value`` lines, ``ElementDataFile = LOCAL`` last), NRRD0004, PNG (RFC 2083),
DICOM Part 10 (through pydicom), NumPy ``.npy`` v1.0.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np

#: written into every text and UID field that can carry it; must never come back in an answer or a log
MARKER = "MARKERXYZ"
#: a marker that is also a valid UID component (digits), for UIDs that must stay valid
UID_MARKER = "4242424242"
MARKERS = (MARKER, UID_MARKER)

NIFTI_DTYPES = {np.dtype(np.uint8): 2, np.dtype(np.int16): 4, np.dtype(np.int32): 8, np.dtype(np.float32): 16,
                np.dtype(np.float64): 64, np.dtype(np.int64): 1024, np.dtype(np.uint16): 512}
MET_TYPES = {np.dtype(np.uint8): "MET_UCHAR", np.dtype(np.int16): "MET_SHORT", np.dtype(np.uint16): "MET_USHORT",
             np.dtype(np.float32): "MET_FLOAT"}
NRRD_TYPES = {np.dtype(np.uint8): "uint8", np.dtype(np.int16): "int16", np.dtype(np.uint16): "uint16",
              np.dtype(np.float32): "float"}


def volume(shape_xyz: Sequence[int] = (24, 24, 16), dtype=np.int16, seed: int = 0) -> np.ndarray:
    """A smooth blob over noise, ``(X, Y, Z)``: something a segmenter can run on."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_xyz], indexing="ij")
    blob = np.exp(-sum(g**2 for g in grid) * 4) * 400
    return (blob + rng.normal(100, 10, shape_xyz)).astype(dtype)


def picture(size_xy: Sequence[int] = (64, 64), seed: int = 0) -> np.ndarray:
    """A grey 8-bit 2D image ``(X, Y)`` like the demo radiographs."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, size_xy[0]), np.linspace(-1, 1, size_xy[1]), indexing="ij")
    return np.clip(120 + 80 * np.exp(-(x**2 + y**2) * 3) + rng.normal(0, 8, (size_xy[0], size_xy[1])), 0, 255
                   ).astype(np.uint8)


# ---- NIfTI-1 ----------------------------------------------------------------------------------------------------

def nifti_bytes(array_xyz: np.ndarray | None, *, spacing=(1.0, 1.0, 1.0), dims: Sequence[int] | None = None,
                datatype: int | None = None, bitpix: int | None = None, vox_offset: float = 352.0,
                descrip: bytes = b"", data: bytes | None = None) -> bytes:
    """A single-file NIfTI-1 (``n+1``): header, 4-byte extension flag, voxels (x fastest).

    ``dims`` (``[ndim, d1, d2, ...]``), ``datatype``, ``vox_offset`` and ``data`` override what
    ``array_xyz`` implies, so a header can declare what its data is not.
    """
    array = np.zeros((1,), np.uint8) if array_xyz is None else array_xyz
    dims = list(dims) if dims is not None else [array.ndim, *array.shape]
    datatype = NIFTI_DTYPES[array.dtype] if datatype is None else datatype
    bitpix = array.dtype.itemsize * 8 if bitpix is None else bitpix
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, *(dims + [1] * (8 - len(dims)))[:8])
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    pixdim = [1.0, *spacing][:8]
    struct.pack_into("<8f", header, 76, *(pixdim + [1.0] * (8 - len(pixdim))))
    struct.pack_into("<f", header, 108, vox_offset)
    struct.pack_into("<ff", header, 112, 1.0, 0.0)  # scl_slope, scl_inter
    header[148:148 + len(descrip[:80])] = descrip[:80]
    struct.pack_into("<hh", header, 252, 1, 0)  # qform_code scanner, sform_code unset
    header[344:348] = b"n+1\x00"
    voxels = np.asfortranarray(array).tobytes(order="F") if data is None else data
    return bytes(header) + voxels


# ---- MetaImage / NRRD -------------------------------------------------------------------------------------------

def mha_bytes(array_xyz: np.ndarray, *, spacing=None, dims: Sequence | None = None, compressed: bool = False,
              extra: str = "", data: bytes | None = None, element_type: str | None = None) -> bytes:
    """A MetaImage with its data attached (``ElementDataFile = LOCAL``), optionally zlib-compressed."""
    spacing = spacing or (1.0,) * array_xyz.ndim
    dims = dims if dims is not None else array_xyz.shape
    raw = np.asfortranarray(array_xyz).tobytes(order="F")
    payload = data if data is not None else (zlib.compress(raw) if compressed else raw)
    lines = ["ObjectType = Image", f"NDims = {len(dims)}", "BinaryData = True", "BinaryDataByteOrderMSB = False",
             f"CompressedData = {compressed}"]
    if compressed:
        lines.append(f"CompressedDataSize = {len(payload)}")
    lines += [f"ElementSpacing = {' '.join(str(s) for s in spacing)}", f"DimSize = {' '.join(str(d) for d in dims)}",
              f"ElementType = {element_type or MET_TYPES[array_xyz.dtype]}"]
    text = "\n".join(lines) + "\n" + extra + "ElementDataFile = LOCAL\n"
    return text.encode() + payload


def nrrd_bytes(array_xyz: np.ndarray, *, spacing=None, sizes: Sequence | None = None, encoding: str = "raw",
               extra: str = "", data: bytes | None = None) -> bytes:
    """A NRRD0004 with attached data (``raw`` or ``gzip`` encoding), LPS space directions."""
    spacing = spacing or (1.0,) * array_xyz.ndim
    sizes = sizes if sizes is not None else array_xyz.shape
    raw = np.asfortranarray(array_xyz).tobytes(order="F")
    payload = data if data is not None else (gzip_bytes(raw) if encoding == "gzip" else raw)
    axes = len(spacing)
    directions = " ".join("(" + ",".join(str(spacing[i] if i == j else 0.0) for j in range(axes)) + ")"
                          for i in range(axes))
    space = "left-posterior-superior" if axes == 3 else "2"
    text = (f"NRRD0004\ntype: {NRRD_TYPES[array_xyz.dtype]}\ndimension: {len(sizes)}\n"
            + (f"space: {space}\n" if axes == 3 else f"space dimension: {space}\n")
            + f"sizes: {' '.join(str(s) for s in sizes)}\nspace directions: {directions}\n"
            + f"endian: little\nencoding: {encoding}\n{extra}\n")
    return text.encode() + payload


def gzip_bytes(raw: bytes) -> bytes:
    import gzip

    return gzip.compress(raw, compresslevel=6, mtime=0)


# ---- PNG / JPEG -------------------------------------------------------------------------------------------------

def png_chunk(kind: bytes, body: bytes, *, crc: int | None = None) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) if crc is None
                                                                      else crc)


def png_bytes(pixels_yx: np.ndarray, *, width: int | None = None, height: int | None = None,
              chunks: Sequence[bytes] = (), idat: bytes | None = None) -> bytes:
    """An 8-bit grey PNG of ``pixels_yx`` (rows first); ``width`` / ``height`` may lie, ``idat`` replace the data."""
    h, w = pixels_yx.shape
    ihdr = struct.pack(">IIBBBBB", width or w, height or h, 8, 0, 0, 0, 0)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels_yx)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + b"".join(chunks)
            + png_chunk(b"IDAT", zlib.compress(raw) if idat is None else idat) + png_chunk(b"IEND", b""))


def png_text(key: str, value: str) -> bytes:
    return png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))


def png_phys(ppm_x: int, ppm_y: int) -> bytes:
    """A pHYs chunk: pixels per metre along x and y."""
    return png_chunk(b"pHYs", struct.pack(">IIB", ppm_x, ppm_y, 1))


def jpeg_bytes(pixels_yx: np.ndarray, **save) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels_yx).save(buffer, format="JPEG", **({"quality": 90} | save))
    return buffer.getvalue()


@lru_cache(maxsize=1)
def huge_uniform_jpeg(side: int = 12000) -> bytes:
    """A real ``side x side`` grey JPEG of one level at quality 1: ~1.7 MB that decodes to ``side**2`` bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, format="JPEG", quality=1)
    return buffer.getvalue()


# ---- NumPy ------------------------------------------------------------------------------------------------------

def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_header_bytes(descr: str, shape: tuple, data: bytes = b"", fortran: bool = False) -> bytes:
    """A ``.npy`` v1.0 whose header declares ``descr`` and ``shape`` over whatever ``data`` follows."""
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin-1") + data


def npz_bytes(members: dict[str, bytes]) -> bytes:
    """A ``.npz`` of ready-made ``.npy`` members (names without the suffix)."""
    return zip_bytes([(f"{name}.npy", data) for name, data in members.items()])


def zip_bytes(entries: Sequence[tuple[str | zipfile.ZipInfo, bytes]], *, compression=zipfile.ZIP_DEFLATED,
              comment: bytes = b"") -> bytes:
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression) as archive:
        warnings.simplefilter("ignore")  # duplicate names are the point of some cases
        for name, data in entries:
            if isinstance(name, str):  # through ZipInfo: zipfile's own path refuses an empty name
                name = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
                name.compress_type = compression
            archive.writestr(name, data)
        archive.comment = comment
    return buffer.getvalue()


# ---- decoder bombs: compressed streams of zeros, made without compressing gigabytes ----------------------------

@lru_cache(maxsize=4)
def _zeros_block(level: int = 9) -> bytes:
    """Raw deflate of 1 MiB of zeros after a full flush: the same bytes each time, so they can be repeated."""
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    c.compress(b"")
    c.flush(zlib.Z_FULL_FLUSH)
    return c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)


def deflate_bomb(prefix: bytes, zeros_mib: int) -> bytes:
    """Raw deflate of ``prefix`` + ``zeros_mib`` MiB of zeros (about 1 KB per MiB)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    return head + _zeros_block() * zeros_mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def _zeros_checksum(function, prefix: bytes, zeros_mib: int) -> int:
    value = function(prefix)
    block = bytes(1 << 20)
    for _ in range(zeros_mib):
        value = function(block, value)
    return value


@lru_cache(maxsize=16)
def gzip_bomb(prefix: bytes, zeros_mib: int) -> bytes:
    """A gzip member (valid CRC and size) of ``prefix`` + ``zeros_mib`` MiB of zeros."""
    size = (len(prefix) + (zeros_mib << 20)) & 0xFFFFFFFF
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflate_bomb(prefix, zeros_mib)
            + struct.pack("<II", _zeros_checksum(zlib.crc32, prefix, zeros_mib), size))


@lru_cache(maxsize=16)
def zlib_bomb(prefix: bytes, zeros_mib: int) -> bytes:
    """A zlib stream (valid Adler-32) of ``prefix`` + ``zeros_mib`` MiB of zeros."""
    adler = _zeros_checksum(zlib.adler32, prefix, zeros_mib)
    return b"\x78\xda" + deflate_bomb(prefix, zeros_mib) + struct.pack(">I", adler)


def zip_bomb(name: str, prefix: bytes, zeros_mib: int) -> bytes:
    """A one-member zip (deflated, valid CRC) of ``prefix`` + ``zeros_mib`` MiB of zeros, written by hand so the
    gigabytes are never compressed."""
    stream = deflate_bomb(prefix, zeros_mib)
    crc, size, encoded = _zeros_checksum(zlib.crc32, prefix, zeros_mib), len(prefix) + (zeros_mib << 20), name.encode()
    fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0x21, crc, len(stream), size)
    local = b"PK\x03\x04" + fields + struct.pack("<HH", len(encoded), 0) + encoded
    central = (b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHHII", len(encoded), 0, 0, 0, 0, 0)
               + encoded)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(local) + len(stream), 0)
    return local + stream + central + end


# ---- DICOM ------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def lenient_pydicom() -> Iterator[None]:
    """pydicom accepts and writes any value (a lying header is the point) and keeps quiet about it."""
    import warnings

    from pydicom import config

    saved = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved


def dicom_dataset(pixels_xy: np.ndarray, *, z_mm: float = 0.0, index: int = 0, uid_seed: str = "adversarial",
                  spacing=(0.8, 0.8, 2.0), text: str = "ANON", uid_root: str = "1.2.826.0.1.3680043.8.498.",
                  modality: str = "CT"):
    """One CT slice as a pydicom ``FileDataset``: ``pixels_xy`` uint16 stored, rescale -1024; every text
    field set to ``text`` and every UID under ``uid_root``, so a caller can mark them all."""
    with lenient_pydicom():
        return _slice_dataset(pixels_xy, z_mm, index, uid_seed, spacing, text, uid_root, modality)


def _slice_dataset(pixels_xy, z_mm, index, uid_seed, spacing, text, uid_root, modality):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    uid = _uid_maker(uid_root, uid_seed)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uid(f"sop{index}")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("slice", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uid("study"), uid("series"), uid("frame")
    for keyword in ("PatientName", "PatientID", "SeriesDescription", "StudyDescription", "InstitutionName",
                    "ReferringPhysicianName", "AccessionNumber", "StudyID", "OperatorsName", "ProtocolName",
                    "StationName", "Manufacturer", "BodyPartExamined", "PatientComments", "ImageComments"):
        setattr(ds, keyword, text[:16] if keyword in ("StudyID", "AccessionNumber", "StationName") else text)
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(z_mm)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
    ds.SliceThickness = float(spacing[2])
    ds.Rows, ds.Columns = pixels_xy.shape[1], pixels_xy.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
    ds.PixelData = np.ascontiguousarray(pixels_xy.astype(np.uint16).T).tobytes()
    return ds


def _uid_maker(root: str, seed: str):
    def uid(what: str) -> str:
        digits = str(zlib.crc32(f"{seed}/{what}".encode()))
        return f"{root}{digits}"[:64]

    return uid


def assign(ds, keyword: str, value) -> None:
    """``ds.<keyword> = value``, whatever the value: ``None`` empties the element (or removes the pixels),
    text in a numeric field (``DS``, ``IS``) is written as given when the file is written (pydicom refuses it)."""
    from pydicom.datadict import dictionary_VR

    with lenient_pydicom():
        if value is None and keyword == "PixelData":
            del ds.PixelData
            return
        texts = value if isinstance(value, list) else [value]
        vr = dictionary_VR(keyword)
        if vr in ("DS", "IS") and any(isinstance(v, str) for v in texts):
            patches = ds.__dict__.setdefault("adversarial_text", {})
            patches[keyword] = "\\".join(str(v) for v in texts)
            setattr(ds, keyword, [1] * len(texts) if len(texts) > 1 else 1)
            return
        setattr(ds, keyword, value)


def dicom_bytes(ds, *, enforce: bool = True) -> bytes:
    """``ds`` written as a Part 10 file (its own transfer syntax), with the texts :func:`assign` put in numeric
    fields."""
    with lenient_pydicom():
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=enforce)
        data = buffer.getvalue()
    for keyword, text in ds.__dict__.get("adversarial_text", {}).items():
        data = _patch_element(data, keyword, text)
    return data


def _patch_element(data: bytes, keyword: str, text: str) -> bytes:
    """Replace the value of the (explicit VR little endian, 2-byte length) element ``keyword`` with ``text``."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    lead = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + dictionary_VR(keyword).encode()
    at = data.find(lead, 132 + struct.unpack("<I", data[140:144])[0] + 12)
    if at < 0:
        raise ValueError(f"{keyword} not found in the written file")
    length = struct.unpack("<H", data[at + 6: at + 8])[0]
    value = text.encode("latin-1") + (b" " if len(text) % 2 else b"")
    return data[: at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + length:]


def dicom_series(shape_xyz=(24, 24, 8), *, seed: int = 0, **dataset) -> list:
    """A small CT series: one ``FileDataset`` per slice (z step = the spacing's third value)."""
    vol = (volume(shape_xyz, np.int16, seed) + 1024).astype(np.uint16)
    spacing = dataset.get("spacing", (0.8, 0.8, 2.0))
    return [dicom_dataset(vol[:, :, k], z_mm=k * spacing[2], index=k, **dataset) for k in range(shape_xyz[2])]


def series_members(datasets: list, folder: str = "series") -> list[tuple[str, bytes]]:
    return [(f"{folder}/slice_{k:03d}.dcm", dicom_bytes(ds)) for k, ds in enumerate(datasets)]
