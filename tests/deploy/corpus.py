"""A corpus of malformed and hostile uploads, built from real files written by Pillow, SimpleITK and pydicom.

Each :class:`Bad` says what the service must answer: 400 (malformed), 413 (too large: size, voxel
budget, compression bombs), 415 (not an accepted type) are refused by the upload layer before any
decoder runs; 422 passes the upload checks and is refused by the reader (NaN voxels, truncated pixel
data, mixed DICOM series).
"""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: zip entries and gzip members carry this time, not the clock's: the corpus is the same bytes on every run
FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def _gzip(data: bytes, **options) -> bytes:
    return gzip.compress(data, mtime=0, **options)


def _entry(name: str, compression: int) -> zipfile.ZipInfo:
    """What ``ZipFile.writestr(name, ...)`` makes of a name (modes included), at :data:`FIXED_TIME`."""
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.compress_type = compression
    info.external_attr = ((0o40775 << 16) | 0x10) if name.endswith("/") else (0o600 << 16)
    return info


@dataclass(frozen=True)
class Bad:
    name: str  # also the file name the client sends: names must not matter
    data: bytes
    status: int


def png_bytes(size=(64, 48), seed: int = 0, mode: str = "L") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    if mode == "RGBA":
        pixels[..., 3] = 10
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size=(64, 48), seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def sitk_bytes(array_zyx: np.ndarray, suffix: str, compress: bool = False) -> bytes:
    """``array`` in NumPy order written by SimpleITK as ``suffix`` (``.nii``, ``.nii.gz``, ``.mha``, ``.nrrd``)."""
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"image{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(array_zyx), str(path), useCompression=compress)
        return path.read_bytes()


def dicom_files(shape_xyz=(16, 12, 3), seed: int = 0, uid_seed: str = "corpus") -> list[tuple[str, bytes]]:
    """A small CT series as (name, bytes) per slice."""
    from medlens.io.dicom_write import write_dicom_series

    volume = np.random.default_rng(seed).integers(-1000, 1000, shape_xyz).astype(np.float64)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_dicom_series(volume, Path(folder), patient_id="PAT-CORPUS-123", uid_seed=uid_seed)
        return [(p.name, p.read_bytes()) for p in paths]


def zip_bytes(entries: list[tuple[str, bytes]], *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(_entry(name, compression), data)
    return buffer.getvalue()


def zip_with_symlink() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("series/slice_000.dcm")
        link.external_attr = (0o120777 << 16)
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def zip_encrypted_flag() -> bytes:
    data = bytearray(zip_bytes(dicom_files()[:1]))
    central = data.find(b"PK\x01\x02")
    data[6] |= 1  # local header flag
    data[central + 8] |= 1  # central directory flag
    return bytes(data)


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR (with a valid CRC) claims ``width x height``; the pixel data is a real 1 x 1 image."""
    real = png_bytes((1, 1))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + real[24:29]
    return real[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + real[33:]


def jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(jpeg_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def nifti_header(dims: list[int], *, datatype: int = 16, magic: bytes = b"n+1\x00", endian: str = "<") -> bytes:
    """A NIfTI-1 header (352 bytes with the extension flag) for ``dims`` (``dim[0]`` first)."""
    header = bytearray(352)
    struct.pack_into(endian + "i", header, 0, 348)
    struct.pack_into(endian + "8h", header, 40, *(dims + [1] * (8 - len(dims))))
    struct.pack_into(endian + "hh", header, 70, datatype, 32)
    struct.pack_into(endian + "8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into(endian + "f", header, 108, 352.0)
    struct.pack_into(endian + "h", header, 252, 1)  # qform code
    header[344:348] = magic
    return bytes(header)


def nifti2_header(dims: list[int]) -> bytes:
    header = bytearray(544)
    struct.pack_into("<i", header, 0, 540)
    header[4:12] = b"n+2\x00\r\n\x1a\n"
    struct.pack_into("<h", header, 12, 16)
    struct.pack_into("<8q", header, 16, *(dims + [1] * (8 - len(dims))))
    struct.pack_into("<q", header, 168, 544)
    return bytes(header)


def float_volume(value: float) -> np.ndarray:
    volume = np.random.default_rng(1).normal(size=(6, 8, 8)).astype(np.float32)
    volume[2, 3, 4] = value
    return volume


def mha_text(fields: str, data: bytes = b"") -> bytes:
    return fields.encode() + data


MHA_2D = "ObjectType = Image\nNDims = 2\nDimSize = 8 8\nElementType = MET_UCHAR\n"


def dicom_without_preamble() -> bytes:
    """The data set alone (explicit VR little endian): preamble, 'DICM' and the file meta group cut off."""
    data = dicom_files()[0][1]
    meta_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL: the file meta group's length
    return data[144 + meta_length :]


def dicom_with(**changes) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_files()[0][1]))
    for key, value in changes.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def malformed_uploads() -> list[Bad]:
    """Every hostile upload with the status the service must answer."""
    return [*_not_images(), *_rasters(), *_dicoms(), *_zips(), *_niftis(), *_metaimages_and_nrrds()]


def _not_images() -> list[Bad]:
    return [
        Bad("empty.png", b"", 400),
        Bad("scan.png", b"This is definitely a PNG image of a chest.", 415),
        Bad("ct.nii.gz", b"a NIfTI volume, honest\n", 415),
        Bad("page.dcm", b"<html><body><img src='x.png'></body></html>", 415),
        Bad("data.json", b'{"image": "scan.png"}', 415),
        Bad("noise.bin", np.random.default_rng(0).bytes(4096), 415),
        Bad("paper.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", 415),
        Bad("program.jpg", b"\x7fELF\x02\x01\x01" + b"\x00" * 200, 415),
        Bad("image.tif", b"II*\x00" + b"\x00" * 200, 415),
        Bad("array.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", 415),
        Bad("image.bmp", b"BM" + b"\x00" * 200, 415),
        Bad("one_byte", b"\x00", 415),
        Bad("text.mha", b"NDims = 2\nDimSize = 8 8\nhello world\n", 415),
        Bad("data.gz", _gzip(b"just some text, not a NIfTI header" * 20), 415),
    ]


def _rasters() -> list[Bad]:
    png, jpeg = png_bytes(), jpeg_bytes()
    bad_signature = b"\x89PNG\r\n\x1a\x00" + png[8:]
    corrupt_idat = bytearray(png)
    idat = png.find(b"IDAT")
    corrupt_idat[idat + 10 : idat + 60] = b"\xff" * 50
    return [
        Bad("sig_only.png", png[:8], 400),
        Bad("half_ihdr.png", png[:20], 400),
        Bad("truncated_idat.png", png[: len(png) // 2], 422),
        Bad("corrupt_idat.png", bytes(corrupt_idat), 422),
        Bad("wrong_signature.png", bad_signature, 415),
        Bad("huge.png", png_with_size(100_000, 100_000), 413),
        Bad("tall.png", png_with_size(1, 200_000_000), 413),
        Bad("soi_only.jpg", jpeg[:3], 400),
        Bad("header_half.jpg", jpeg[:40], 400),
        Bad("truncated_scan.jpg", jpeg[: len(jpeg) // 2], 422),
        Bad("huge.jpg", jpeg_with_size(65_000, 65_000), 413),
    ]


def _dicoms() -> list[Bad]:
    slice_bytes = dicom_files()[0][1]
    return [
        Bad("marker_only.dcm", b"\x00" * 128 + b"DICM", 422),
        Bad("header_cut.dcm", slice_bytes[:200], 422),
        Bad("pixels_cut.dcm", slice_bytes[: len(slice_bytes) - 100], 422),
        Bad("garbage_after_marker.dcm", b"\x00" * 128 + b"DICM" + np.random.default_rng(2).bytes(300), 422),
        Bad("no_preamble.dcm", dicom_without_preamble(), 415),
        Bad("huge_frames.dcm", dicom_with(Rows=65535, Columns=65535, NumberOfFrames=1000), 413),
        Bad("huge_rows.dcm", dicom_with(Rows=60000, Columns=60000), 413),
    ]


def _zips() -> list[Bad]:
    series = dicom_files()
    mixed = series + [(f"b/{name}", data) for name, data in dicom_files(seed=1, uid_seed="other")]
    bomb = zip_bytes([("slice.dcm", b"\x00" * (40 << 20))])
    many = zip_bytes([(f"f{i}.dcm", b"x") for i in range(5000)], compression=zipfile.ZIP_STORED)
    valid = zip_bytes(series)
    return [
        Bad("slip.zip", zip_bytes([("../../evil.dcm", series[0][1])]), 400),
        Bad("slip_nested.zip", zip_bytes([("series/../../../var/evil.dcm", series[0][1])]), 400),
        Bad("absolute.zip", zip_bytes([("/etc/cron.d/evil", series[0][1])]), 400),
        Bad("windows_drive.zip", zip_bytes([("C:\\Windows\\evil.dcm", series[0][1])]), 400),
        Bad("backslash_slip.zip", zip_bytes([("..\\..\\evil.dcm", series[0][1])]), 400),
        Bad("symlink.zip", zip_with_symlink(), 400),
        Bad("encrypted.zip", zip_encrypted_flag(), 400),
        Bad("bomb.zip", bomb, 413),
        Bad("many_entries.zip", many, 413),
        Bad("truncated.zip", valid[: len(valid) // 2], 400),
        Bad("no_dicom.zip", zip_bytes([("readme.txt", b"hello"), ("scan.png", png_bytes())]), 415),
        Bad("only_folder.zip", zip_bytes([("series/", b"")]), 415),
        Bad("mixed_series.zip", zip_bytes(mixed), 422),
        Bad("duplicate.zip", _duplicate_zip(series[0][1]), 400),
    ]


def _duplicate_zip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(_entry("slice.dcm", zipfile.ZIP_STORED), data)
        with __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            archive.writestr(_entry("slice.dcm", zipfile.ZIP_STORED), data)
    return buffer.getvalue()


def _niftis() -> list[Bad]:
    valid = sitk_bytes(float_volume(0.5), ".nii")
    zeros_bomb = nifti_header([3, 8, 8, 8]) + b"\x00" * (60 << 20)
    return [
        Bad("nan.nii", sitk_bytes(float_volume(float("nan")), ".nii"), 422),
        Bad("nan.nii.gz", sitk_bytes(float_volume(float("nan")), ".nii.gz", compress=True), 422),
        Bad("inf.nii", sitk_bytes(float_volume(float("inf")), ".nii"), 422),
        Bad("truncated_voxels.nii", valid[: len(valid) - 500], 422),
        Bad("truncated_header.nii", valid[:200], 400),
        Bad("huge_dims.nii", nifti_header([3, 1000, 1000, 1000]) + b"\x00" * 64, 413),
        Bad("huge_dims_big_endian.nii", nifti_header([3, 2000, 2000, 100], endian=">") + b"\x00" * 64, 413),
        Bad("zero_ndim.nii", nifti_header([0, 8, 8, 8]) + b"\x00" * 64, 400),
        Bad("negative_dim.nii", nifti_header([3, 8, -8, 8]) + b"\x00" * 64, 400),
        Bad("pair_header.nii", nifti_header([3, 8, 8, 8], magic=b"ni1\x00"), 415),
        Bad("huge_nifti2.nii", nifti2_header([3, 4096, 4096, 4096]) + b"\x00" * 64, 413),
        Bad("huge_dims.nii.gz", _gzip(nifti_header([3, 1000, 1000, 1000]) + b"\x00" * 4096), 413),
        Bad("gzip_bomb.nii.gz", _gzip(zeros_bomb, compresslevel=1), 413),
        Bad("truncated.nii.gz", _gzip(valid)[:300], 400),
        Bad("trailing.nii.gz", _gzip(valid) + b"garbage after the stream", 400),
        Bad("corrupt.nii.gz", b"\x1f\x8b\x08\x00" + b"\xff" * 300, 400),
    ]


def _metaimages_and_nrrds() -> list[Bad]:
    nrrd = sitk_bytes(np.zeros((8, 8), np.uint8), ".nrrd")
    return [
        Bad("passwd.mha", mha_text(MHA_2D + "ElementDataFile = /etc/passwd\n"), 400),
        Bad("relative.mha", mha_text(MHA_2D + "ElementDataFile = ../../../etc/passwd\n"), 400),
        Bad("list.mha", mha_text(MHA_2D + "ElementDataFile = LIST\n/etc/passwd\n"), 400),
        Bad("huge.mha", mha_text(MHA_2D.replace("8 8", "100000 100000") + "ElementDataFile = LOCAL\n",
                                 b"\x00" * 64), 413),
        Bad("negative.mha", mha_text(MHA_2D.replace("8 8", "8 -8") + "ElementDataFile = LOCAL\n", b"\x00" * 64), 400),
        Bad("words.mha", mha_text(MHA_2D.replace("8 8", "eight eight") + "ElementDataFile = LOCAL\n"), 400),
        Bad("no_data_line.mha", mha_text(MHA_2D), 400),
        Bad("scene.mha", mha_text(MHA_2D.replace("Image", "Scene") + "ElementDataFile = LOCAL\n"), 400),
        Bad("short_data.mha", mha_text(MHA_2D + "ElementDataFile = LOCAL\n", b"\x01" * 10), 422),
        Bad("nan.mha", sitk_bytes(float_volume(float("nan")), ".mha"), 422),
        Bad("detached.nrrd", b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 8 8\nencoding: raw\n"
                             b"data file: /etc/passwd\n\n", 400),
        Bad("huge.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4000 4000 4000\nencoding: raw\n\n", 413),
        Bad("endless_header.nrrd", b"NRRD0004\n" + b"type: uint8\n" * 6000, 400),
        Bad("short_data.nrrd", nrrd[: len(nrrd) - 20], 422),
    ]
