"""The builders of the header and naming classes of :mod:`adversarial.corpus`: lying headers, zip oddities,
marker strings, and the deploy tests' malformed uploads (the others are in :mod:`adversarial.classes`)."""

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
