"""The builders of each class of :mod:`adversarial.corpus`: ``build(Case) -> list[Case]``.

Each builder takes the ``Case`` class (so this module does not import the corpus module that imports
it) and returns its cases. Expectations: ``error`` where the file contradicts its own header or the
format (issue 20: "refused, not guessed at"), ``either`` where a correct reader may accept it.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

from adversarial import samples as s
from adversarial.samples import MARKER, UID_MARKER

TWO_D, THREE_D = 2, 3
CLI = frozenset({"info", "predict"})
SERVICE = frozenset({"service"})
ALL = CLI | SERVICE
TRUNCATE_AT = (0.02, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.97, 0.995)


# ---- the valid files every other class starts from --------------------------------------------------------------

def _valid_files() -> list[tuple[str, bytes, str, int, tuple]]:
    """(name, bytes, format, dims, members) of one small valid file per format."""
    vol = s.volume((24, 24, 16), np.int16, seed=1)
    pic = s.picture((64, 64), seed=2)
    slice_ds = s.dicom_dataset(s.picture((64, 64), seed=3).astype(np.uint16) * 8 + 900)
    series = s.series_members(s.dicom_series((24, 24, 8), seed=4))
    return [
        ("png", s.png_bytes(pic.T), "png", TWO_D, ()),
        ("jpeg", s.jpeg_bytes(pic.T), "jpeg", TWO_D, ()),
        ("dicom", s.dicom_bytes(slice_ds), "dicom", TWO_D, ()),
        ("dicom_zip", s.zip_bytes(series), "dicom_zip", THREE_D, tuple(series)),
        ("nifti", s.nifti_bytes(vol, spacing=(0.8, 0.8, 1.5)), "nifti", THREE_D, ()),
        ("nifti_gz", s.gzip_bytes(s.nifti_bytes(vol, spacing=(0.8, 0.8, 1.5))), "nifti_gz", THREE_D, ()),
        ("mha", s.mha_bytes(vol, spacing=(0.8, 0.8, 1.5)), "mha", THREE_D, ()),
        ("mha_zlib", s.mha_bytes(vol, spacing=(0.8, 0.8, 1.5), compressed=True), "mha", THREE_D, ()),
        ("nrrd", s.nrrd_bytes(vol, spacing=(0.8, 0.8, 1.5)), "nrrd", THREE_D, ()),
        ("nrrd_gzip", s.nrrd_bytes(vol, spacing=(0.8, 0.8, 1.5), encoding="gzip"), "nrrd", THREE_D, ()),
        ("npy", s.npy_bytes(pic), "npy", TWO_D, ()),
        ("npz", s.npz_bytes({"image": s.npy_bytes(pic)}), "npz", TWO_D, ()),
    ]


def _targets(fmt: str) -> frozenset[str]:
    if fmt in ("npy", "npz"):
        return CLI  # the service refuses NumPy files by type; the CLI reads them
    return ALL


def valid(Case) -> list:
    return [Case(f"valid_{name}", data, fmt, "valid", "ok", dims, _targets(fmt), members)
            for name, data, fmt, dims, members in _valid_files()]


def truncation(Case) -> list:
    cases = []
    for name, data, fmt, dims, members in _valid_files():
        for fraction in TRUNCATE_AT:
            cut = max(1, int(len(data) * fraction))
            if members:  # the zip itself (service) and one slice of the series (every target)
                cases.append(Case(f"trunc_{name}_{cut}", data[:cut], fmt, "truncation", "error", dims, SERVICE))
                sliced = list(members)
                sliced[3] = (sliced[3][0], sliced[3][1][: max(1, int(len(sliced[3][1]) * fraction))])
                cases.append(Case(f"trunc_{name}_slice_{cut}", s.zip_bytes(sliced), fmt, "truncation", "error", dims,
                                  ALL, tuple(sliced)))
            else:
                cases.append(Case(f"trunc_{name}_{cut}", data[:cut], fmt, "truncation", "error", dims, _targets(fmt)))
    return cases


def bitflip(Case) -> list:
    """Seeded flips of 1-4 bits inside each format's header."""
    header_span = {"png": 33, "jpeg": 620, "dicom": 900, "nifti": 348, "nifti_gz": 60, "mha": 200, "mha_zlib": 230,
                   "nrrd": 180, "nrrd_gzip": 190, "npy": 128, "npz": 120}
    rng = np.random.default_rng(20)
    cases = []
    for name, data, fmt, dims, _members in _valid_files():
        if name not in header_span:
            continue
        for k in range(6):
            flipped = bytearray(data)
            for _ in range(int(rng.integers(1, 5))):
                position = int(rng.integers(8 if fmt == "png" else 0, min(header_span[name], len(data))))
                flipped[position] ^= 1 << int(rng.integers(0, 8))
            cases.append(Case(f"flip_{name}_{k}", bytes(flipped), fmt, "bitflip", "either", dims, _targets(fmt)))
    return cases


# ---- absurd dimensions --------------------------------------------------------------------------------------------

def dims(Case) -> list:
    tiny = np.zeros((2, 2, 2), np.uint8)
    one_row = s.png_bytes(np.zeros((1, 64), np.uint8), width=64, height=64)
    cases = [
        Case("dims_nifti_512c_int64_368b", s.nifti_bytes(None, dims=[3, 512, 512, 512], datatype=1024, bitpix=64,
                                                         data=b"\x00" * 16), "nifti", "dims", "error", THREE_D),
        Case("dims_nifti_32767sq", s.nifti_bytes(None, dims=[3, 32767, 32767, 1], datatype=2, bitpix=8,
                                                 data=b"\x00" * 64), "nifti", "dims", "error", THREE_D),
        Case("dims_nifti_line_1e8", s.nifti_bytes(None, dims=[3, 1, 1, 30000], datatype=2, bitpix=8,
                                                  data=b"\x00" * 64), "nifti", "dims", "error", THREE_D),
        Case("dims_nifti_zero", s.nifti_bytes(tiny, dims=[3, 0, 2, 2]), "nifti", "dims", "error", THREE_D),
        Case("dims_nifti_negative", s.nifti_bytes(tiny, dims=[3, 2, -2, 2]), "nifti", "dims", "error", THREE_D),
        Case("dims_nifti_ndim_9", s.nifti_bytes(tiny, dims=[9, 2, 2, 2, 1, 1, 1, 1]), "nifti", "dims", "error",
             THREE_D),
        Case("dims_png_65535sq", s.png_bytes(np.zeros((1, 1), np.uint8), width=65535, height=65535), "png", "dims",
             "error"),
        Case("dims_png_short_rows", one_row, "png", "dims", "error"),
        Case("dims_png_1x2e9", s.png_bytes(np.zeros((1, 1), np.uint8), width=1, height=2_000_000_000), "png", "dims",
             "error"),
        Case("dims_jpeg_65000sq", _jpeg_sof(65000, 65000), "jpeg", "dims", "error"),
        Case("dims_jpeg_12000sq_patched", _jpeg_sof(12000, 12000), "jpeg", "dims", "error"),
        Case("dims_jpeg_zero", _jpeg_sof(0, 64), "jpeg", "dims", "error"),
        Case("dims_dicom_65535sq", _dicom_with(Rows=65535, Columns=65535), "dicom", "dims", "error"),
        Case("dims_dicom_frames_1e5", _dicom_with(NumberOfFrames=100000), "dicom", "dims", "error"),
        Case("dims_dicom_rows_0", _dicom_with(Rows=0), "dicom", "dims", "error"),
        Case("dims_mha_1e5sq", s.mha_bytes(tiny, dims=(100000, 100000, 1)), "mha", "dims", "error", THREE_D),
        Case("dims_mha_2e40", s.mha_bytes(tiny, dims=(1 << 20, 1 << 20, 1)), "mha", "dims", "error", THREE_D),
        Case("dims_nrrd_1e5sq", s.nrrd_bytes(tiny, sizes=(100000, 100000, 100)), "nrrd", "dims", "error", THREE_D),
        Case("dims_nrrd_zero", s.nrrd_bytes(tiny, sizes=(0, 2, 2)), "nrrd", "dims", "error", THREE_D),
        Case("dims_npy_1e5sq", s.npy_header_bytes("<f4", (100000, 100000), b"\x00" * 64), "npy", "dims", "error",
             TWO_D, CLI),
        Case("dims_npy_2e40", s.npy_header_bytes("|u1", (1 << 20, 1 << 20)), "npy", "dims", "error", TWO_D, CLI),
        Case("dims_npy_5d", s.npy_bytes(np.zeros((2, 2, 2, 2, 2), np.float32)), "npy", "dims", "error", TWO_D, CLI),
        Case("dims_npy_zero", s.npy_bytes(np.zeros((0, 64), np.uint8)), "npy", "dims", "error", TWO_D, CLI),
        Case("dims_npz_1e5sq", s.npz_bytes({"image": s.npy_header_bytes("<f8", (100000, 100000))}), "npz", "dims",
             "error", TWO_D, CLI),
    ]
    return cases


def _jpeg_sof(width: int, height: int) -> bytes:
    data = bytearray(s.jpeg_bytes(s.picture((16, 16)).T))
    sof = data.find(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _dicom_with(**changes) -> bytes:
    ds = s.dicom_dataset(s.picture((16, 16)).astype(np.uint16))
    for keyword, value in changes.items():
        s.assign(ds, keyword, value)
    return s.dicom_bytes(ds)


# ---- absurd spacings --------------------------------------------------------------------------------------------

def spacing(Case) -> list:
    vol16, vol8 = s.volume((16, 16, 16), np.int16, 5), s.volume((8, 8, 8), np.int16, 6)
    pic = s.picture((64, 64), 7)
    geometry = '{{"spacing_mm": {0}, "origin_mm": [0, 0], "direction": [1, 0, 0, 1]}}'
    png = [("png_geo_1000x1", "[1000, 1]", "either"), ("png_geo_1x1000", "[1, 1000]", "either"),
           ("png_geo_0001x1", "[0.001, 1]", "either"), ("png_geo_nan", "[NaN, 1]", "error"),
           ("png_geo_inf", "[Infinity, 1]", "error"), ("png_geo_short", "[1]", "error"),
           ("png_geo_zero", "[0, 0]", "error"), ("png_geo_negative", "[-1, 1]", "either"),
           ("png_geo_text", '["wide", "tall"]', "error")]
    cases = [Case(f"spacing_{n}", s.png_bytes(pic.T, chunks=[s.png_text("medlens:geometry", geometry.format(v))]),
                  "png", "spacing", e) for n, v, e in png]
    cases += [
        Case("spacing_png_phys_1000x1", s.png_bytes(pic.T, chunks=[s.png_phys(1_000_000, 1000)]), "png", "spacing",
             "either"),
        Case("spacing_png_phys_zero_y", s.png_bytes(pic.T, chunks=[s.png_phys(5000, 0)]), "png", "spacing", "either"),
        Case("spacing_nifti2d_1000x1", s.nifti_bytes(pic, spacing=(1000.0, 1.0)), "nifti", "spacing", "either"),
        Case("spacing_mha2d_1000x1", s.mha_bytes(pic, spacing=(1000.0, 1.0)), "mha", "spacing", "either"),
        Case("spacing_nrrd2d_1000x1", s.nrrd_bytes(pic, spacing=(1000.0, 1.0)), "nrrd", "spacing", "either"),
        Case("spacing_dicom_1000x1", _dicom_with(PixelSpacing=[1.0, 1000.0]), "dicom", "spacing", "either"),
        Case("spacing_dicom_zero", _dicom_with(PixelSpacing=[0.0, 0.0]), "dicom", "spacing", "either"),
        Case("spacing_dicom_nan", _dicom_with(PixelSpacing=["nan", "1"]), "dicom", "spacing", "error"),
        Case("spacing_nifti_16mm", s.nifti_bytes(vol16, spacing=(16.0,) * 3), "nifti", "spacing", "either", THREE_D,
             cli_limits=False, note="resampled to the plan's spacing: 320 x 320 x 171, inside the budget: the CLI may "
             "take its time, the service must answer (or stop) within 5 s"),
        Case("spacing_nifti_1000mm", s.nifti_bytes(vol16, spacing=(1000.0,) * 3), "nifti", "spacing", "error",
             THREE_D, info_expect="ok"),
        Case("spacing_nifti_4mm", s.nifti_bytes(vol8, spacing=(4.0,) * 3), "nifti", "spacing", "ok", THREE_D),
        Case("spacing_nifti_ratio_1000", s.nifti_bytes(vol16, spacing=(0.01, 0.01, 10.0)), "nifti", "spacing",
             "either", THREE_D, cli_limits=False),
        Case("spacing_nifti_1000x1x1", s.nifti_bytes(vol16, spacing=(1000.0, 1.0, 1.0)), "nifti", "spacing",
             "either", THREE_D, cli_limits=False),
        Case("spacing_nifti_nan", s.nifti_bytes(vol16, spacing=(float("nan"), 1.0, 1.0)), "nifti", "spacing",
             "error", THREE_D),
        Case("spacing_nifti_gz_1000mm", s.gzip_bytes(s.nifti_bytes(vol16, spacing=(1000.0,) * 3)), "nifti_gz",
             "spacing", "error", THREE_D, info_expect="ok"),
        Case("spacing_mha_1000x1x1", s.mha_bytes(vol16, spacing=(1000.0, 1.0, 1.0)), "mha", "spacing", "either",
             THREE_D, cli_limits=False),
        Case("spacing_mha_1e-6", s.mha_bytes(vol16, spacing=(1e-6,) * 3), "mha", "spacing", "either", THREE_D),
        Case("spacing_mha_1000mm", s.mha_bytes(vol16, spacing=(1000.0,) * 3), "mha", "spacing", "error", THREE_D,
             info_expect="ok"),
        Case("spacing_nrrd_1000x1x1", s.nrrd_bytes(vol16, spacing=(1000.0, 1.0, 1.0)), "nrrd", "spacing", "either",
             THREE_D, cli_limits=False),
        Case("spacing_nrrd_zero", s.nrrd_bytes(vol16, spacing=(0.0, 1.0, 1.0)), "nrrd", "spacing", "error", THREE_D),
    ]
    wide = s.series_members(s.dicom_series((16, 16, 6), seed=8, spacing=(1000.0, 1.0, 1.0)))
    far = s.series_members(s.dicom_series((16, 16, 6), seed=9, spacing=(0.8, 0.8, 1000.0)))
    cases += [Case("spacing_series_1000x1", s.zip_bytes(wide), "dicom_zip", "spacing", "either", THREE_D, ALL,
                   tuple(wide), cli_limits=False),
              Case("spacing_series_z_1000", s.zip_bytes(far), "dicom_zip", "spacing", "either", THREE_D, ALL,
                   tuple(far), cli_limits=False)]
    return cases


# ---- decoder bombs ----------------------------------------------------------------------------------------------

def bomb(Case) -> list:
    header_888 = s.nifti_bytes(None, dims=[3, 8, 8, 8], datatype=2, bitpix=8, data=b"")
    header_huge = s.nifti_bytes(None, dims=[3, 2048, 2048, 2048], datatype=2, bitpix=8, data=b"")
    tiny = np.zeros((8, 8, 8), np.uint8)
    mha_bomb = s.zlib_bomb(b"", 256)
    cases = [
        Case("bomb_nifti_gz_888", s.gzip_bomb(header_888, 256), "nifti_gz", "bomb", "error", THREE_D),
        Case("bomb_nifti_gz_2048c", s.gzip_bomb(header_huge, 256), "nifti_gz", "bomb", "error", THREE_D),
        Case("bomb_mha_zlib_888", s.mha_bytes(tiny, compressed=True, data=mha_bomb), "mha", "bomb", "error", THREE_D),
        Case("bomb_mha_zlib_4096", s.mha_bytes(tiny, dims=(4096, 4096, 128), compressed=True, data=mha_bomb), "mha",
             "bomb", "error", THREE_D),
        Case("bomb_nrrd_gzip_888", s.nrrd_bytes(tiny, encoding="gzip", data=s.gzip_bomb(b"", 256)), "nrrd", "bomb",
             "error", THREE_D),
        Case("bomb_png_idat_zlib", s.png_bytes(np.zeros((8, 8), np.uint8), idat=s.zlib_bomb(b"", 256)), "png", "bomb",
             "error"),
        Case("bomb_png_30000sq_one_row", _png_one_row(30000), "png", "bomb", "error"),
        Case("bomb_dicom_deflate_1gib", _deflated_dicom(1024), "dicom", "bomb", "error"),
        Case("bomb_dicom_jpeg_12000sq", _dicom_embedding_jpeg(s.huge_uniform_jpeg()), "dicom", "bomb", "error"),
        Case("bomb_dicom_jpeg_sof_patched", _dicom_embedding_jpeg(_jpeg_sof(12000, 12000)), "dicom", "bomb", "error"),
        Case("bomb_jpeg_12000sq", s.huge_uniform_jpeg(), "jpeg", "bomb", "error", cli_expect="either", cli_limits=False,
             note="a real 12000 x 12000 JPEG: over the service's budget, under the CLI's (2^30 voxels)"),
        Case("bomb_jpeg_progressive_scans", _progressive_with_empty_scans(5000), "jpeg", "bomb", "error"),
        Case("bomb_zip_series_slice", s.zip_bomb("series/slice_000.dcm", b"\x00" * 128 + b"DICM", 1024), "dicom_zip",
             "bomb", "error", THREE_D, SERVICE),
        Case("bomb_npz_member", s.zip_bomb("image.npy", s.npy_header_bytes("|u1", (8, 8)), 256), "npz", "bomb",
             "error", TWO_D, CLI),
        Case("bomb_npz_member_declared", s.zip_bomb("image.npy", s.npy_header_bytes("|u1", (16384, 16384)), 256),
             "npz", "bomb", "error", TWO_D, CLI),
    ]
    return cases


def _png_one_row(side: int) -> bytes:
    row = zlib.compress(b"\x00" + bytes(side))
    return s.png_bytes(np.zeros((1, 1), np.uint8), width=side, height=side, idat=row)


def _deflated_dicom(zeros_mib: int) -> bytes:
    """A Deflated Explicit VR Little Endian file declaring 8 x 8 pixels whose data set inflates to ``zeros_mib`` MiB."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = s.dicom_dataset(np.zeros((8, 8), np.uint16))
    plain = s.dicom_bytes(ds)
    meta_end = 144 + struct.unpack("<I", plain[140:144])[0]
    body = plain[meta_end: plain.rfind(b"\xe0\x7f\x10\x00")]
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", zeros_mib << 20)
    stream = s.deflate_bomb(body + pixel_header, zeros_mib)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + stream


def _dicom_embedding_jpeg(jpeg: bytes, rows: int = 8, columns: int = 8) -> bytes:
    """A JPEG Baseline DICOM whose header says ``rows x columns`` 8-bit pixels around ``jpeg``."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = s.dicom_dataset(np.zeros((columns, rows), np.uint16))
    with s.lenient_pydicom():
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([jpeg])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return s.dicom_bytes(ds)


def _progressive_with_empty_scans(count: int) -> bytes:
    """A progressive JPEG (512 x 512) with ``count`` extra DC scans holding no entropy-coded data."""
    pixels = np.full((512, 512), 128, np.uint8)
    data = s.jpeg_bytes(pixels, progressive=True, quality=50)
    sos = data.find(b"\xff\xda")
    length = struct.unpack(">H", data[sos + 2: sos + 4])[0]
    empty_scan = data[sos: sos + 2 + length]  # the first (DC) scan's header alone
    return data[:sos] + empty_scan * count + data[sos:]


# ---- lying headers ----------------------------------------------------------------------------------------------

def lying(Case) -> list:
    return [*_lying_dicom(Case), *_lying_series(Case), *_lying_nifti(Case), *_lying_itk(Case), *_lying_raster(Case),
            *_lying_numpy(Case)]


def _lying_dicom(Case) -> list:
    pic = s.picture((16, 16)).astype(np.uint16)
    rgb = np.repeat(pic.T[..., None], 3, axis=2).astype(np.uint16).tobytes()
    items = [
        ("rgb_under_mono2", {"PixelData": rgb}, "error"),
        ("rgb_samples_mono2", {"SamplesPerPixel": 3, "PixelData": rgb}, "error"),
        ("frames_0", {"NumberOfFrames": 0}, "error"),
        ("frames_minus1", {"NumberOfFrames": -1}, "error"),
        ("frames_3_data_1", {"NumberOfFrames": 3}, "error"),
        ("bits_allocated_12", {"BitsAllocated": 12}, "error"),
        ("bits_stored_0", {"BitsStored": 0}, "error"),
        ("high_bit_40", {"HighBit": 40}, "error"),
        ("pixel_representation_7", {"PixelRepresentation": 7}, "either"),
        ("rows_empty", {"Rows": None}, "error"),
        ("columns_empty", {"Columns": None}, "error"),
        ("photometric_palette", {"PhotometricInterpretation": "PALETTE COLOR"}, "error"),
        ("position_text", {"ImagePositionPatient": ["abc", "def", "ghi"]}, "either"),
        ("instance_text", {"InstanceNumber": "one"}, "either"),
        ("orientation_zero", {"ImageOrientationPatient": [0, 0, 0, 0, 0, 0]}, "either"),
        ("rescale_slope_nan", {"RescaleSlope": "nan"}, "error"),
        ("rescale_slope_text", {"RescaleSlope": "steep"}, "error"),
        ("spacing_text", {"PixelSpacing": ["wide", "tall"]}, "either"),
        ("no_pixel_data", {"PixelData": None}, "error"),
        ("short_pixel_data", {"PixelData": b"\x00" * 300}, "error"),
        ("long_pixel_data", {"PixelData": b"\x00" * 2048}, "error"),
    ]
    cases = []
    for name, changes, expect in items:
        ds = s.dicom_dataset(pic)
        for keyword, value in changes.items():
            s.assign(ds, keyword, value)
        cases.append(Case(f"lying_dicom_{name}", s.dicom_bytes(ds), "dicom", "lying", expect))
    cases.append(Case("lying_dicom_nested_sequences", _nested_sequences(3000), "dicom", "lying", "either"))
    cases.append(Case("lying_dicom_transfer_syntax_unknown", _dicom_transfer_syntax("1.2.3.4.5.6"), "dicom", "lying",
                      "error"))
    return cases


def _nested_sequences(depth: int) -> bytes:
    """A valid slice with ``depth`` nested undefined-length sequences (ReferencedImageSequence) before its pixels."""
    plain = s.dicom_bytes(s.dicom_dataset(s.picture((16, 16)).astype(np.uint16)))
    sq = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff"  # (0008,1140) SQ, undefined length
    item, item_end, seq_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", \
        b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    nested = (sq + item) * depth + (item_end + seq_end) * depth
    at = plain.find(b"\x10\x00\x10\x00PN")  # before (0010,0010) PatientName: the tags stay in ascending order
    return plain[:at] + nested + plain[at:]


def _dicom_transfer_syntax(uid: str) -> bytes:
    ds = s.dicom_dataset(s.picture((16, 16)).astype(np.uint16))
    ds.file_meta.TransferSyntaxUID = uid
    return s.dicom_bytes(ds, enforce=False)


def _lying_series(Case) -> list:
    def series(name: str, change, expect: str):
        datasets = s.dicom_series((16, 16, 6), seed=11, uid_seed=name)
        change(datasets)
        members = s.series_members(datasets)
        return Case(f"lying_series_{name}", s.zip_bytes(members), "dicom_zip", "lying", expect, THREE_D, ALL,
                    tuple(members))

    def setter(keyword, value, index=2):
        return lambda datasets: s.assign(datasets[index], keyword, value)

    return [
        series("position_text", setter("ImagePositionPatient", ["abc", "def", "ghi"]), "error"),
        series("instance_text", setter("InstanceNumber", "one"), "either"),
        series("rows_mismatch", setter("Rows", 8), "error"),
        series("duplicate_position", setter("ImagePositionPatient", [0.0, 0.0, 0.0], 3), "error"),
        series("rows_empty", setter("Rows", None), "error"),
        series("frames_minus1", setter("NumberOfFrames", -1), "error"),
    ]


def _lying_nifti(Case) -> list:
    vol = s.volume((8, 8, 8), np.int16, 12)
    raw = np.asfortranarray(vol).tobytes(order="F")
    return [
        Case("lying_nifti_5d", s.nifti_bytes(vol, dims=[5, 8, 8, 2, 1, 4], data=raw), "nifti", "lying", "either",
             THREE_D),
        Case("lying_nifti_vox_offset_nan", s.nifti_bytes(vol, vox_offset=float("nan")), "nifti", "lying", "error",
             THREE_D),
        Case("lying_nifti_vox_offset_0", s.nifti_bytes(vol, vox_offset=0.0), "nifti", "lying", "error", THREE_D),
        Case("lying_nifti_vox_offset_1e9", s.nifti_bytes(vol, vox_offset=1e9), "nifti", "lying", "error", THREE_D),
        Case("lying_nifti_vox_offset_negative", s.nifti_bytes(vol, vox_offset=-352.0), "nifti", "lying", "error",
             THREE_D),
        Case("lying_nifti_datatype_9999", s.nifti_bytes(vol, datatype=9999), "nifti", "lying", "error", THREE_D),
        Case("lying_nifti_bitpix_mismatch", s.nifti_bytes(vol, bitpix=64), "nifti", "lying", "either", THREE_D),
        Case("lying_nifti_float64_as_int16", s.nifti_bytes(vol, datatype=64, bitpix=64), "nifti", "lying", "error",
             THREE_D),
        Case("lying_nifti_sizeof_hdr", b"\x00\x00\x01\x5c" + s.nifti_bytes(vol)[4:], "nifti", "lying", "error",
             THREE_D),
        Case("lying_nifti_trailing_mib", s.nifti_bytes(vol) + bytes(1 << 20), "nifti", "lying", "either", THREE_D),
    ]


def _lying_itk(Case) -> list:
    vol = s.volume((8, 8, 8), np.int16, 13)
    return [
        Case("lying_mha_dimsize_0", s.mha_bytes(vol, dims=(0, 8, 8)), "mha", "lying", "error", THREE_D),
        Case("lying_mha_dimsize_words", s.mha_bytes(vol, dims=("eight", 8, 8)), "mha", "lying", "error", THREE_D),
        Case("lying_mha_ndims_mismatch", s.mha_bytes(vol).replace(b"NDims = 3", b"NDims = 2"), "mha", "lying",
             "error", THREE_D),
        Case("lying_mha_element_type", s.mha_bytes(vol, element_type="MET_STRING"), "mha", "lying", "error", THREE_D),
        Case("lying_mha_channels_1000", s.mha_bytes(vol, extra="ElementNumberOfChannels = 1000\n"), "mha", "lying",
             "error", THREE_D),
        Case("lying_mha_compressed_size", s.mha_bytes(vol, compressed=True).replace(b"CompressedDataSize = ",
                                                                                    b"CompressedDataSize = 9"),
             "mha", "lying", "either", THREE_D),
        Case("lying_mha_header_size", s.mha_bytes(vol, extra="HeaderSize = 100000000\n"), "mha", "lying", "error",
             THREE_D),
        Case("lying_mha_spacing_nan", s.mha_bytes(vol, spacing=("nan", 1, 1)), "mha", "lying", "error", THREE_D),
        Case("lying_nrrd_sizes_short", s.nrrd_bytes(vol, sizes=(8, 8)), "nrrd", "lying", "error", THREE_D),
        Case("lying_nrrd_type_double", s.nrrd_bytes(vol).replace(b"type: int16", b"type: double"), "nrrd", "lying",
             "error", THREE_D),
        Case("lying_nrrd_encoding_bzip2", s.nrrd_bytes(vol).replace(b"encoding: raw", b"encoding: bzip2"), "nrrd",
             "lying", "error", THREE_D),
        Case("lying_nrrd_gzip_garbage", s.nrrd_bytes(vol, encoding="gzip", data=b"\x1f\x8b\x08\x00" + b"\x01" * 300),
             "nrrd", "lying", "error", THREE_D),
    ]


def _lying_raster(Case) -> list:
    pic = s.picture((64, 64), 14).T
    full = s.png_bytes(pic)
    idat = full.find(b"IDAT")
    bad_crc = bytearray(full)
    bad_crc[idat + 4 + struct.unpack(">I", full[idat - 4: idat])[0]] ^= 0xFF
    raw_rows = b"".join(b"\x00" + row.tobytes() for row in pic[:10])
    jpeg = s.jpeg_bytes(pic)
    return [
        Case("lying_png_short_idat", s.png_bytes(pic, idat=zlib.compress(raw_rows)), "png", "lying", "error"),
        Case("lying_png_bad_idat_crc", bytes(bad_crc), "png", "lying", "error"),
        Case("lying_png_bad_ihdr_crc", full[:29] + b"\x00\x00\x00\x00" + full[33:], "png", "lying", "error"),
        Case("lying_png_no_idat", full[:33] + s.png_chunk(b"IEND", b""), "png", "lying", "error"),
        Case("lying_png_bit_depth_3", full[:8] + s.png_chunk(b"IHDR", full[16:24] + b"\x03" + full[25:29]) + full[33:],
             "png", "lying", "error"),
        Case("lying_png_extra_rows", s.png_bytes(np.vstack([pic, pic]), height=64), "png", "lying", "either"),
        Case("lying_jpeg_no_eoi", jpeg[:-2], "jpeg", "lying", "either"),
        Case("lying_jpeg_sof_16sq_data_64sq", _patched_sof(jpeg, 16, 16), "jpeg", "lying", "either"),
    ]


def _patched_sof(jpeg: bytes, width: int, height: int) -> bytes:
    data = bytearray(jpeg)
    sof = data.find(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _lying_numpy(Case) -> list:
    pic = s.picture((64, 64), 15)
    return [
        Case("lying_npy_shape_short_data", s.npy_header_bytes("|u1", (64, 64), pic.tobytes()[:100]), "npy", "lying",
             "error", TWO_D, CLI),
        Case("lying_npy_complex", s.npy_bytes(pic.astype(np.complex64)), "npy", "lying", "error", TWO_D, CLI),
        Case("lying_npy_object", s.npy_header_bytes("|O", (2,), b"\x00" * 16), "npy", "lying", "error", TWO_D, CLI),
        Case("lying_npy_nan", s.npy_bytes(np.full((64, 64), np.nan, np.float32)), "npy", "lying", "error", TWO_D, CLI,
             info_expect="ok", note="medlens info reports NaN voxels by design"),
        Case("lying_npy_fortran", s.npy_header_bytes("|u1", (64, 64), pic.tobytes(), fortran=True), "npy", "lying",
             "either", TWO_D, CLI),
        Case("lying_npz_no_image_key", s.npz_bytes({"a": s.npy_bytes(pic), "b": s.npy_bytes(pic)}), "npz", "lying",
             "error", TWO_D, CLI),
        Case("lying_npz_pickled", s.zip_bytes([("image.npy", s.npy_header_bytes("|O", (1,), b"\x80\x04N."))]), "npz",
             "lying", "error", TWO_D, CLI),
    ]


# ---- zip oddities -------------------------------------------------------------------------------------------------

def zip_oddities(Case) -> list:
    members = s.series_members(s.dicom_series((16, 16, 4), seed=16))
    one = members[0][1]

    def case(name: str, entries, expect: str = "error", **kwargs):
        return Case(f"zip_{name}", s.zip_bytes(entries, **kwargs), "dicom_zip", "zip", expect, THREE_D, SERVICE)

    return [
        case("empty_name", [("", one)]),
        case("empty_name_with_series", [*members, ("", one)], "either"),
        case("dot_name", [(".", one)]),
        case("slash_only", [("/", one)]),
        case("dot_slash", [("./././slice.dcm", one)], "either"),
        Case("zip_nul_in_name", s.zip_bytes([("sliceX.dcm", one)]).replace(b"sliceX.dcm", b"slice\x00.dcm"),
             "dicom_zip", "zip", "error", THREE_D, SERVICE),
        case("long_name", [("d/" * 1500 + "slice.dcm", one)]),
        case("marker_names", [(f"{MARKER}/{MARKER}_{i}.dcm", data) for i, (_, data) in enumerate(members)], "ok"),
        case("marker_name_garbage", [(f"{MARKER}.dcm", b"\x00" * 128 + b"DICM" + b"\x01" * 200)]),
        case("marker_name_slip", [(f"../{MARKER}.dcm", one)]),
        case("marker_comment", members, "ok", comment=MARKER.encode()),
        case("nested_zip", [("inner.zip", s.zip_bytes(members))]),
        case("duplicate_differing", [("a.dcm", one), ("a.dcm", members[1][1])]),
        case("stored_and_deflated", [*members[:2]], "either", compression=zipfile.ZIP_STORED),
        case("empty_archive", []),
    ]


# ---- marker strings ------------------------------------------------------------------------------------------------

def markers(Case) -> list:
    pic = s.picture((32, 32), 17).astype(np.uint16) * 4
    marked = {"text": MARKER, "uid_root": f"1.2.{UID_MARKER}."}
    bad_uid = {"text": MARKER, "uid_root": f"1.2.{MARKER}."}

    def slice_bytes(changes: dict, **dataset) -> bytes:
        ds = s.dicom_dataset(pic, **dataset)
        for keyword, value in changes.items():
            s.assign(ds, keyword, value)
        return s.dicom_bytes(ds)

    def series(name: str, expect: str, change=None, *, extra=None, cli_expect: str = "", **dataset):
        datasets = s.dicom_series((16, 16, 5), seed=18, uid_seed=name, **dataset)
        if change:
            change(datasets)
        members = s.series_members(datasets, folder=MARKER)
        members += extra or []
        return Case(f"marker_series_{name}", s.zip_bytes(members), "dicom_zip", "marker", expect, THREE_D, ALL,
                    tuple(members), cli_expect=cli_expect)

    other = s.series_members(s.dicom_series((16, 16, 5), seed=19, uid_seed="other", text=MARKER + "2",
                                            uid_root=f"1.2.{UID_MARKER}.9."), folder="other")
    pic64 = s.picture((64, 64), 20).T
    return [
        Case("marker_dicom_valid", slice_bytes({}, **marked), "dicom", "marker", "ok"),
        Case("marker_dicom_bad_uids", slice_bytes({}, **bad_uid), "dicom", "marker", "either"),
        Case("marker_dicom_truncated", slice_bytes({}, **marked)[:-300], "dicom", "marker", "error"),
        Case("marker_dicom_ds_values", slice_bytes({"SliceThickness": MARKER, "PixelSpacing": [MARKER, MARKER]},
                                                   **marked), "dicom", "marker", "either"),
        Case("marker_dicom_position", slice_bytes({"ImagePositionPatient": [MARKER, "1", "2"]}, **marked), "dicom",
             "marker", "either"),
        Case("marker_dicom_rgb_lie", slice_bytes({"PixelData": np.repeat(pic.T[..., None], 3, 2).tobytes()},
                                                 **marked), "dicom", "marker", "error"),
        Case("marker_dicom_frames", slice_bytes({"NumberOfFrames": MARKER}, **marked), "dicom", "marker", "either"),
        series("valid", "ok", **marked),
        series("bad_uids", "either", **bad_uid),
        series("mixed", "error", extra=other, cli_expect="either", **marked),  # the CLI predicts each series
        series("gap", "error", lambda d: d.pop(2), **marked),
        series("position_text", "error", lambda d: s.assign(d[1], "ImagePositionPatient", [MARKER, "0", "0"]),
               **marked),
        series("rows_mismatch", "error", lambda d: s.assign(d[1], "Rows", 8), **marked),
        Case("marker_png_text", s.png_bytes(pic64, chunks=[s.png_text("Comment", MARKER)]), "png", "marker", "ok"),
        Case("marker_png_geometry", s.png_bytes(pic64, chunks=[s.png_text("medlens:geometry", MARKER)]), "png",
             "marker", "error"),
        Case("marker_nifti_descrip", s.nifti_bytes(s.volume((8, 8, 8), np.int16, 21),
                                                   descrip=MARKER.encode()), "nifti", "marker", "ok", THREE_D),
        Case("marker_mha_comment", s.mha_bytes(s.volume((8, 8, 8), np.int16, 22), extra=f"Comment = {MARKER}\n"),
             "mha", "marker", "either", THREE_D),
        Case("marker_mha_data_file", s.mha_bytes(s.volume((8, 8, 8), np.int16, 23))
             .replace(b"ElementDataFile = LOCAL", f"ElementDataFile = {MARKER}.raw".encode()), "mha", "marker",
             "error", THREE_D),
        Case("marker_nrrd_content", s.nrrd_bytes(s.volume((8, 8, 8), np.int16, 24), extra=f"content: {MARKER}\n"),
             "nrrd", "marker", "either", THREE_D),
        Case("marker_nrrd_data_file", s.nrrd_bytes(s.volume((8, 8, 8), np.int16, 25), data=b"",
                                                   extra=f"data file: {MARKER}.raw\n"), "nrrd", "marker", "error",
             THREE_D),
        Case("marker_file_name_png", s.png_bytes(pic64), "png", "marker", "ok", filename=f"{MARKER}_scan.png"),
        Case("marker_file_name_truncated", s.png_bytes(pic64)[:300], "png", "marker", "error",
             filename=f"{MARKER}_cut.png"),
    ]


# ---- tests/deploy/corpus.py's uploads --------------------------------------------------------------------------

UPLOAD_FORMATS = {".png": "png", ".jpg": "jpeg", ".dcm": "dicom", ".nii": "nifti", ".nii.gz": "nifti_gz",
                  ".mha": "mha", ".nrrd": "nrrd", ".zip": "dicom_zip", ".npy": "npy"}


def uploads(Case) -> list:
    """The deploy tests' malformed uploads, judged here for time, memory, markers and the CLI as well."""
    deploy_corpus = _deploy_corpus()
    cases = []
    for bad in deploy_corpus.malformed_uploads():
        suffix = ".nii.gz" if bad.name.endswith(".nii.gz") else Path(bad.name).suffix
        fmt = UPLOAD_FORMATS.get(suffix, "other")
        dims = THREE_D if fmt in ("nifti", "nifti_gz", "mha", "nrrd", "dicom_zip") else TWO_D
        # the CLI reads files the user chose (an MHA may point at another of their files): clean either way
        targets = SERVICE if fmt in ("dicom_zip", "other") else ALL
        stem = "".join(c if c.isalnum() else "_" for c in bad.name.lower())
        cases.append(Case(f"upload_{stem}", bad.data, fmt, "upload", "error", dims, targets,
                          filename=bad.name if fmt != "other" else "", cli_expect="either",
                          note=f"deploy corpus: the service answers {bad.status}"))
    return cases


def _deploy_corpus():
    path = Path(__file__).resolve().parents[1] / "deploy" / "corpus.py"
    spec = importlib.util.spec_from_file_location("deploy_corpus_for_adversarial", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


BUILDERS = (valid, truncation, bitflip, dims, spacing, bomb, lying, zip_oddities, markers, uploads)
