"""The builders of each class of :mod:`adversarial.corpus`: ``build(Case) -> list[Case]``.

Each builder takes the ``Case`` class (so this module does not import the corpus module that imports
it) and returns its cases. Lying headers, zip oddities, markers and the deploy corpus are in
:mod:`adversarial.classes_lies`. Expectations: ``error`` where the file contradicts its own header or the
format (issue 20: "refused, not guessed at"), ``either`` where a correct reader may accept it.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from adversarial import classes_lies
from adversarial import samples as s

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


BUILDERS = (valid, truncation, bitflip, dims, spacing, bomb, classes_lies.lying, classes_lies.zip_oddities,
            classes_lies.markers, classes_lies.uploads)
