"""Hostile files: every one refused by read_image with a ReadError / BudgetError, before a large allocation.

Each file is built small in ``tmp_path``. "Before a large allocation" is shown by the budget, not by
the clock: the case is built so that decoding it would make more voxels than the budget in force,
and the refusal must be the reader's own (a message about the header, or a BudgetError naming the
declared size), which can only happen before the decoder ran. Marker strings placed in header text
and UIDs must never appear in a message.
"""

from __future__ import annotations

import gzip
import io
import logging
import struct
import warnings
import zlib

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from medlens.budget import WorkBudget, work_budget
from medlens.errors import BudgetError, DicomError, MedlensError, ReadError
from medlens.io import read_image
from medlens.io.codecs import StreamError, inflate_bounded

MARKER = "MEDLENSMARKERZQX"
MARKER_UID = "1.2.826.0.1.3680043.8.498.424242424242"


def budget(max_voxels: int):
    return work_budget(WorkBudget(max_voxels=max_voxels, hint="raise it in the test"))


def assert_clean(message: str) -> None:
    assert MARKER not in message and MARKER_UID not in message and "424242424242" not in message


# --- builders -------------------------------------------------------------------------------------


def png(width: int, height: int, mode: str = "L") -> bytes:
    shape = (height, width) if mode == "L" else (height, width, 3)
    buffer = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buffer, "PNG")
    return buffer.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    at, chunks = 8, []
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunks.append((kind, data[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body in chunks:
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return out


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) declares ``width x height`` over the data of a real 8 x 1 image."""
    chunks = png_chunks(png(8, 1))
    chunks[0] = (b"IHDR", struct.pack(">II", width, height) + chunks[0][1][8:])
    return png_from_chunks(chunks)


def dicom_dataset(rows: int = 8, columns: int = 8, frames: int | None = None, samples: int = 1):
    """An uncompressed 16-bit CT slice with a marker in every text field and UID."""
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = MARKER_UID + ".1"
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, MARKER_UID + ".1"
    ds.SeriesInstanceUID, ds.StudyInstanceUID = MARKER_UID + ".2", MARKER_UID + ".3"
    ds.PatientName, ds.PatientID, ds.SeriesDescription = MARKER, MARKER, MARKER
    ds.StudyDescription, ds.InstitutionName = MARKER, MARKER
    ds.Modality, ds.InstanceNumber = "CT", 1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    count = rows * columns * (frames or 1) * samples
    ds.PixelData = np.arange(count, dtype=np.uint16).tobytes()
    return ds


def dicom_bytes(ds, syntax=None) -> bytes:
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path, error=ReadError, match: str | None = None, **kwargs) -> str:
    with pytest.raises(error, match=match) as caught:
        read_image(path, **kwargs)
    message = str(caught.value)
    assert_clean(message)
    return message


def nifti_header(dims: list[int], *, datatype: int = 16, offset: float = 352.0, magic: bytes = b"n+1\0") -> bytes:
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, *(dims + [1] * (8 - len(dims))))
    bitpix = {2: 8, 4: 16, 16: 32, 64: 64, 1024: 64}[datatype]
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, offset)
    struct.pack_into("<h", header, 252, 1)
    header[344:348] = magic
    return bytes(header)


# --- 1. the budget before decoding, at its boundary -----------------------------------------------


def test_png_exactly_at_the_budget_is_read_and_one_pixel_over_is_refused(tmp_path):
    path = write(tmp_path, "grey.png", png(10, 8))
    rgb = write(tmp_path, "rgb.png", png(10, 8, "RGB"))

    with budget(80):
        assert read_image(path).spatial_shape == (10, 8)
    with budget(79), pytest.raises(BudgetError, match=r"decoding grey\.png would make 80 voxels \(1 x 10 x 8\)"):
        read_image(path)
    with budget(239), pytest.raises(BudgetError, match=r"would make 240 voxels \(3 x 10 x 8\)"):
        read_image(rgb)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_itk_formats_at_the_budget_are_read_and_one_voxel_over_is_refused(tmp_path, suffix):
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((6, 5, 4), np.int16)), str(path), useCompression=True)

    with budget(120):
        assert read_image(path).spatial_shape == (4, 5, 6)
    with budget(119), pytest.raises(BudgetError, match=r"would make 120 voxels"):
        read_image(path)


def test_npy_and_npz_at_the_budget_are_read_and_one_voxel_over_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((6, 5, 7), np.float32))
    np.savez(tmp_path / "a.npz", image=np.ones((6, 5, 7), np.float32))

    for name in ("a.npy", "a.npz"):
        with budget(210):
            assert read_image(tmp_path / name).spatial_shape == (7, 5, 6)
        with budget(209), pytest.raises(BudgetError, match=r"reading a\.np[yz] would make 210 voxels \(6 x 5 x 7\)"):
            read_image(tmp_path / name)


def test_dicom_file_and_whole_series_are_budgeted_before_decoding(tmp_path):
    single = write(tmp_path, "one.dcm", dicom_bytes(dicom_dataset(8, 6, frames=2)))
    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):
        ds = dicom_dataset(8, 6)
        ds.SOPInstanceUID = f"{MARKER_UID}.9.{k}"
        ds.ImagePositionPatient, ds.InstanceNumber = [0, 0, 2.0 * k], k + 1
        (series / f"s{k}.dcm").write_bytes(dicom_bytes(ds))

    with budget(96):
        assert read_image(single).spatial_shape == (6, 8, 2)
    with budget(95), pytest.raises(BudgetError, match=r"decoding one\.dcm would make 96 voxels") as caught:
        read_image(single)
    with budget(144):
        assert read_image(series).spatial_shape == (6, 8, 3)
    with budget(143), pytest.raises(BudgetError, match=r"reading the 3 slices of series would make 144 voxels"):
        read_image(series)  # each slice (48) fits: the series together does not
    assert_clean(str(caught.value))


def test_huge_npy_shape_is_refused_from_its_header(tmp_path):
    path = write(tmp_path, "huge.npy", _npy_header_only((100000, 100000, 100)))

    refused(path, BudgetError, r"reading huge\.npy would make 1,000,000,000,000 voxels \(100000 x 100000 x 100\)")


def _npy_header_only(shape) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_npy_shorter_than_its_shape_is_refused_before_loading(tmp_path):
    path = write(tmp_path, "short.npy", _npy_header_only((1000, 1000)) + b"\0" * 10)

    refused(path, ReadError, r"short\.npy: truncated: the \.npy header declares shape \(1000, 1000\) of float64 "
                             r"\(8,000,000 bytes\), the file holds 10")


def test_npz_member_is_budgeted_from_its_header(tmp_path):
    np.savez_compressed(tmp_path / "big.npz", image=np.zeros((300, 400), np.uint8))

    with budget(100_000):
        refused(tmp_path / "big.npz", BudgetError, r"reading big\.npz would make 120,000 voxels \(300 x 400\)")


# --- 2. decoders asked for their real size first -------------------------------------------------


def test_dicom_header_8x8_over_a_12000_square_jpeg_is_refused_before_decoding(tmp_path):
    jpeg = bytearray(_jpeg(8, 8))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 12000, 12000)
    ds = dicom_dataset(8, 8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([bytes(jpeg)])
    ds["PixelData"].VR = "OB"
    path = write(tmp_path, "lying.dcm", dicom_bytes(ds, JPEGBaseline8Bit))

    with budget(64):  # 8 x 8 fits; a decoder that trusted the JPEG would make 144,000,000
        refused(path, DicomError, r"lying\.dcm: the header says 8x8, the embedded JPEG is 12000x12000")


def test_dicom_header_8x8_over_a_large_jpeg_2000_is_refused(tmp_path):
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, 12000, 12000, 0, 0, 12000, 12000, 0, 0, 1) + b"\x07\x01\x01"
    codestream = b"\xff\x4f\xff\x51" + siz + b"\xff\xd9"
    ds = dicom_dataset(8, 8)
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    path = write(tmp_path, "j2k.dcm", dicom_bytes(ds, JPEG2000Lossless))

    refused(path, DicomError, r"the header says 8x8, the embedded JPEG 2000 is 12000x12000")


def _jpeg(width: int, height: int, **options) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, (height, width), dtype=np.uint8)
    PILImage.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def test_jpeg_with_thousands_of_scans_is_refused_before_decoding(tmp_path):
    jpeg = _jpeg(32, 32, progressive=True)
    empty_scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    path = write(tmp_path, "scans.jpg", jpeg[:-2] + empty_scan * 2000 + b"\xff\xd9")
    normal = write(tmp_path, "normal.jpg", jpeg)

    assert read_image(normal).spatial_shape == (32, 32)  # a real progressive JPEG (about 10 scans) is read
    refused(path, ReadError, r"scans\.jpg: could not decode the image \(the JPEG holds 20\d\d scans \(more than 100\)")


def test_jpeg_declaring_12000_square_over_a_few_kilobytes_is_refused_before_decoding(tmp_path):
    jpeg = bytearray(_jpeg(64, 48))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 12000, 12000)
    path = write(tmp_path, "lying.jpg", bytes(jpeg))
    buffer = io.BytesIO()
    PILImage.fromarray(np.zeros((1024, 1024), np.uint8)).save(buffer, "JPEG")
    flat = write(tmp_path, "flat.jpg", buffer.getvalue())

    assert read_image(flat).spatial_shape == (1024, 1024)  # the most compressible real image still passes
    # 144,000,000 pixels fit the CLI's budget: only the stream's length shows the lie
    refused(path, ReadError, r"lying\.jpg: could not decode the image \(the JPEG declares 12000 x 12000 pixels but "
                             r"holds only [\d,]+ bytes, fewer than one bit per 8 x 8 block")


def test_deflated_dicom_is_read_and_a_deflate_bomb_is_refused(tmp_path):
    good = write(tmp_path, "deflated.dcm", dicom_bytes(dicom_dataset(8, 6), DeflatedExplicitVRLittleEndian))
    np.testing.assert_array_equal(read_image(good).array[0].T, np.arange(48, dtype=np.uint16).reshape(8, 6))

    raw = dicom_bytes(dicom_dataset(8, 6))
    meta_end = 144 + struct.unpack("<I", raw[140:144])[0]
    body = raw[meta_end:] + b"\xfe\xff\x00\xe0" + b"\0" * (8 << 20)  # 8 MiB more than the header declares
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = deflater.compress(body) + deflater.flush()
    meta = good.read_bytes()[:144 + struct.unpack("<I", good.read_bytes()[140:144])[0]]
    path = write(tmp_path, "bomb.dcm", meta + bomb)
    assert path.stat().st_size < 20_000

    refused(path, ReadError, r"bomb\.dcm: the deflated DICOM data set could not be inflated: the compressed data "
                             r"inflates past [\d,]+ bytes, more than its header declares")


def test_deflated_dicom_declaring_too_many_pixels_is_refused_before_inflating(tmp_path):
    ds = dicom_dataset(8, 6)
    ds.Rows = ds.Columns = 4000
    path = write(tmp_path, "big.dcm", dicom_bytes(ds, DeflatedExplicitVRLittleEndian))

    with budget(1_000_000):
        refused(path, BudgetError, r"inflating big\.dcm would make 16,000,000 voxels")


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_compressed_metaimage_or_nrrd_bomb_is_refused(tmp_path, suffix):
    bomb = zlib.compress(b"\0" * (16 << 20), 9) if suffix == ".mha" else gzip.compress(b"\0" * (16 << 20), 9)
    if suffix == ".mha":
        header = ("ObjectType = Image\nNDims = 2\nDimSize = 8 8\nElementType = MET_UCHAR\nCompressedData = True\n"
                  f"CompressedDataSize = {len(bomb)}\nElementDataFile = LOCAL\n")
    else:
        header = "NRRD0004\ntype: uchar\ndimension: 2\nsizes: 8 8\nencoding: gzip\n\n"
    path = write(tmp_path, f"bomb{suffix}", header.encode() + bomb)

    with budget(64):  # the header's 8 x 8 fits; the stream's 16 MiB never gets made
        refused(path, ReadError, r"inflates past 64 bytes, more than its header declares")


def test_mha_declaring_a_large_volume_is_refused_by_the_budget(tmp_path):
    header = ("ObjectType = Image\nNDims = 3\nDimSize = 1000 1000 1000\nElementType = MET_FLOAT\n"
              "ElementDataFile = LOCAL\n")
    path = write(tmp_path, "large.mha", header.encode() + b"\0" * 64)

    with budget(10**6):
        refused(path, BudgetError, r"reading large\.mha would make 1,000,000,000 voxels")


def test_png_declaring_30000_square_over_one_row_is_refused_as_truncated(tmp_path):
    path = write(tmp_path, "huge.png", png_declaring(30000, 30000))

    refused(path, ReadError, r"huge\.png: could not decode the image \(the PNG pixel data is truncated: its header "
                             r"declares 30000 x 30000 pixels")
    with budget(10**6):
        refused(path, BudgetError, r"decoding huge\.png would make 900,000,000 voxels")


def test_png_with_a_bad_idat_crc_or_a_short_idat_is_refused(tmp_path):
    chunks = png_chunks(png(16, 16))
    data = bytearray(png_from_chunks(chunks))
    idat = data.find(b"IDAT")
    data[idat + 10] ^= 0xFF  # the data changes, the CRC does not
    bad_crc = write(tmp_path, "crc.png", bytes(data))
    short = [(kind, body[:len(body) // 2] if kind == b"IDAT" else body) for kind, body in chunks]
    short_idat = write(tmp_path, "short.png", png_from_chunks(short))

    refused(bad_crc, ReadError, r"crc\.png: could not decode the image \(a PNG chunk has a wrong CRC")
    refused(short_idat, ReadError, r"short\.png: could not decode the image \(the PNG pixel data is truncated")


def test_pillow_never_decodes_truncated_images_onto_zeros():
    from PIL import ImageFile

    import medlens.io.raster  # noqa: F401 - importing the reader must not change Pillow's setting

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_inflate_bounded_stops_at_its_limit():
    stream = zlib.compress(b"\0" * (8 << 20))

    with pytest.raises(StreamError, match=r"inflates past 1,048,576 bytes"):
        inflate_bounded(stream, wbits=15, limit=1 << 20, keep=False)
    assert inflate_bounded(stream, wbits=15, limit=8 << 20, keep=False).size == 8 << 20


# --- 3. NIfTI headers checked before SimpleITK allocates -----------------------------------------


def test_368_byte_nifti_declaring_512_cubed_int64_is_refused_from_its_size(tmp_path):
    header = nifti_header([3, 512, 512, 512], datatype=1024)
    plain = write(tmp_path, "stub.nii", header + b"\0" * 16)
    packed = write(tmp_path, "stub.nii.gz", gzip.compress(header + b"\0" * 16))
    assert plain.stat().st_size == 368

    refused(plain, ReadError, r"stub\.nii: truncated: the header promises 1,073,742,176 bytes, the file holds 368")
    refused(packed, ReadError, r"stub\.nii\.gz: truncated: the header promises 1,073,742,176 bytes")
    with budget(512**3 - 1):
        refused(plain, BudgetError, r"reading stub\.nii would make 134,217,728 voxels")


def test_float_nifti_is_never_inflated_past_its_declared_size(tmp_path):
    from medlens.io.itk import _nifti_bytes

    path = write(tmp_path, "long.nii.gz", gzip.compress(nifti_header([3, 4, 4, 4]) + b"\0" * (4 << 20)))

    with pytest.raises(ReadError, match=r"long\.nii\.gz: the compressed data inflates past 608 bytes"):
        _nifti_bytes(path, 352 + 4 * 4 * 4 * 4)


def test_five_dimensional_nifti_is_refused_saying_what_is_supported(tmp_path):
    path = write(tmp_path, "five.nii", nifti_header([5, 4, 4, 4, 2, 2]) + b"\0" * (4 * 4 * 4 * 2 * 2 * 4))

    refused(path, ReadError, r"five\.nii: a 5D NIfTI of shape \(4, 4, 4, 2, 2\); medlens reads 2D and 3D images, "
                             r"and 4D ones whose 4th axis holds the channels")


@pytest.mark.parametrize(("offset", "shown"), [(float("nan"), "nan"), (-16.0, "-16"), (1e20, "1e\\+20"), (0.0, "0")])
def test_impossible_vox_offset_is_refused(tmp_path, offset, shown):
    path = write(tmp_path, "offset.nii", nifti_header([3, 4, 4, 4], offset=offset) + b"\0" * 256)

    refused(path, ReadError, rf"offset\.nii: the NIfTI header's vox_offset is {shown}; a single-file \.nii needs 352")


def test_nifti_with_a_nan_spacing_is_refused_not_replaced_by_1_mm(tmp_path):
    header = bytearray(nifti_header([3, 4, 4, 4]))
    struct.pack_into("<f", header, 80, float("nan"))  # pixdim[1]
    path = write(tmp_path, "nan.nii", bytes(header) + b"\0" * 256)

    refused(path, ReadError, r"nan\.nii: the NIfTI header's voxel spacing \(pixdim\) \(nan, 1\.0, 1\.0\) is not finite")


def test_nifti_with_a_zero_size_axis_is_refused(tmp_path):
    path = write(tmp_path, "zero.nii", nifti_header([3, 4, 0, 4]) + b"\0" * 64)

    refused(path, ReadError, r"zero\.nii: the NIfTI header declares a size of 0 or less along an axis: shape "
                             r"\(4, 0, 4\)")


@pytest.mark.parametrize("dims", ["8 0", "8 -3", "8 x"])
def test_metaimage_with_dimsize_zero_or_negative_is_refused(tmp_path, dims):
    header = f"ObjectType = Image\nNDims = 2\nDimSize = {dims}\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    path = write(tmp_path, "zero.mha", header.encode() + b"\0" * 64)

    refused(path, ReadError, r"zero\.mha: the header's DimSize must be 1 to 16 positive whole numbers")


def test_npy_with_a_zero_size_axis_is_refused(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 64), np.uint8))

    refused(tmp_path / "empty.npy", ReadError, r"empty\.npy: the array has shape \(0, 64\), with no voxels")


@pytest.mark.parametrize("geometry", ['{"spacing_mm": [NaN, 1], "origin_mm": [0, 0], "direction": [1, 0, 0, 1]}',
                                      '{"spacing_mm": [0, 1], "origin_mm": [0, 0], "direction": [1, 0, 0, 1]}',
                                      '{"spacing_mm": [1], "origin_mm": [0, 0], "direction": [1, 0, 0, 1]}'])
def test_png_geometry_chunk_that_is_nan_zero_or_short_is_refused(tmp_path, geometry):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("medlens:geometry", geometry)
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "geo.png", pnginfo=info)

    refused(tmp_path / "geo.png", ReadError, r"geo\.png: the medlens:geometry text chunk does not hold 2 positive "
                                             r"finite spacings")


def test_metaimage_of_a_non_numeric_element_type_is_refused(tmp_path):
    header = "ObjectType = Image\nNDims = 2\nDimSize = 8 8\nElementType = MET_STRING\nElementDataFile = LOCAL\n"
    path = write(tmp_path, "string.mha", header.encode() + b"\0" * 64)

    refused(path, ReadError, r"string\.mha: the MetaImage ElementType is not a numeric type medlens reads")


def test_nifti_gz_with_corrupt_deflate_data_is_a_read_error(tmp_path):
    data = bytearray(gzip.compress(nifti_header([3, 4, 4, 4]) + b"\1" * 256))
    data[12:20] = b"\xff" * 8
    path = write(tmp_path, "corrupt.nii.gz", bytes(data))

    refused(path, ReadError)


# --- 4. DICOM headers that contradict themselves or hold text where numbers belong ----------------


def _patched(ds, old: bytes, new: bytes) -> bytes:
    data = dicom_bytes(ds)
    assert len(old) == len(new) and data.count(old) == 1
    return data.replace(old, new)


def test_text_in_image_position_or_instance_number_is_refused_by_element_name(tmp_path):
    ds = dicom_dataset()
    ds.ImagePositionPatient, ds.InstanceNumber = ["111.5", "222.5", "333.5"], 4242
    position = write(tmp_path, "position.dcm", _patched(ds, b"111.5\\222.5", b"MEDLE\\222.5"))
    instance = write(tmp_path, "instance.dcm", _patched(dicom_dataset(), b"\x20\x00\x13\x00IS\x02\x001 ",
                                                        b"\x20\x00\x13\x00IS\x02\x00ZQ"))

    refused(position, DicomError, r"position\.dcm: the DICOM element ImagePositionPatient does not hold 3 numbers")
    refused(instance, DicomError, r"instance\.dcm: the DICOM element InstanceNumber does not hold a whole number")


def test_empty_rows_is_refused(tmp_path):
    ds = dicom_dataset()
    ds.Rows = None
    path = write(tmp_path, "rows.dcm", dicom_bytes(ds))

    refused(path, DicomError, r"rows\.dcm: the DICOM element Rows is empty; an image needs 1 or more")


def test_deeply_nested_sequences_are_refused(tmp_path):
    data = dicom_bytes(dicom_dataset())
    at = data.find(b"\xe0\x7f\x10\x00")
    opening = (b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * 3000
    closing = (b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") * 3000
    path = write(tmp_path, "nested.dcm", data[:at] + opening + closing + data[at:])

    refused(path, ReadError, r"nested\.dcm: DICOM header could not be parsed \(RecursionError\)")


@pytest.mark.parametrize("frames", ["0", "-1"])
def test_zero_or_negative_number_of_frames_is_refused(tmp_path, frames):
    data = _patched(dicom_dataset(frames=1), b"\x28\x00\x08\x00IS\x02\x001 ", b"\x28\x00\x08\x00IS\x02\x00" +
                    frames.encode().ljust(2))
    path = write(tmp_path, "frames.dcm", data)

    refused(path, DicomError, rf"frames\.dcm: the DICOM header declares {frames} frames \(NumberOfFrames must be 1")


def test_twelve_bits_allocated_is_refused(tmp_path):
    ds = dicom_dataset()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 12, 12, 11
    path = write(tmp_path, "bits.dcm", dicom_bytes(ds))

    refused(path, DicomError, r"bits\.dcm: BitsAllocated is 12 \(DICOM pixel data is 1, 8, 16, 32 or 64 bits")


def test_rgb_sized_pixel_data_under_a_monochrome_claim_is_refused(tmp_path):
    ds = dicom_dataset(8, 6)
    ds.PixelData = np.zeros(8 * 6 * 3, np.uint16).tobytes()
    path = write(tmp_path, "rgb.dcm", dicom_bytes(ds))
    series = tmp_path / "series"
    series.mkdir()
    for k in range(2):
        ds.SOPInstanceUID, ds.ImagePositionPatient = f"{MARKER_UID}.5.{k}", [0, 0, float(k)]
        (series / f"s{k}.dcm").write_bytes(dicom_bytes(ds))

    expected = (r"the pixel data holds 288 bytes, but the header declares 8 x 6 pixels x 1 frame\(s\) x 1 sample\(s\) "
                r"x 16 bits = 96 bytes")
    refused(path, DicomError, r"rgb\.dcm: " + expected)
    refused(series, DicomError, expected)


def test_monochrome_claim_with_three_samples_is_refused(tmp_path):
    ds = dicom_dataset(8, 6, samples=3)
    ds.PhotometricInterpretation = "MONOCHROME2"
    path = write(tmp_path, "samples.dcm", dicom_bytes(ds))

    refused(path, DicomError, r"samples\.dcm: SamplesPerPixel is 3 under MONOCHROME2; the header contradicts itself")


def test_mixed_series_are_listed_by_number_and_picked_by_number_or_uid(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    for k, modality in enumerate(["CT", "MR"]):
        ds = dicom_dataset(4, 4)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.Modality = f"{MARKER_UID}.{k + 7}", f"{MARKER_UID}.8{k}", modality
        (folder / f"{modality}.dcm").write_bytes(dicom_bytes(ds))

    message = refused(folder, DicomError, r"mixes 2 DICOM series: series 1 \(CT, 1 files\); series 2 \(MR, 1 files\)")
    assert "--series" in message
    assert read_image(folder, series_uid="2").meta["modality"] == "MR"
    assert read_image(folder, series_uid=f"{MARKER_UID}.7").meta["modality"] == "CT"
    refused(folder, DicomError, r"no series with SeriesInstanceUID 3; found: series 1 .*Name one by its number "
                                r"\(1 to 2\)", series_uid="3")


def test_free_text_modality_is_not_shown(tmp_path):
    ds = dicom_dataset()
    ds.Modality = MARKER[:16]
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(dicom_bytes(ds))
    ds.SeriesInstanceUID, ds.SOPInstanceUID = MARKER_UID + ".77", MARKER_UID + ".78"
    (folder / "b.dcm").write_bytes(dicom_bytes(ds))

    refused(folder, DicomError, r"series 1 \(unknown modality, 1 files\)")


@pytest.mark.parametrize(("changes", "expected"), [
    ({"BitsStored": 0}, r"BitsStored 0 and HighBit 15 do not fit BitsAllocated 16"),
    ({"HighBit": 40}, r"BitsStored 16 and HighBit 40 do not fit BitsAllocated 16"),
    ({"RescaleSlope": "nan"}, r"the DICOM element RescaleSlope holds a non-finite or absurd number"),
])
def test_impossible_bit_layout_or_rescale_is_refused(tmp_path, changes, expected):
    ds = dicom_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, value in changes.items():
            setattr(ds, key, value)
    path = write(tmp_path, "bits.dcm", dicom_bytes(ds))

    refused(path, DicomError, r"bits\.dcm: " + expected)


def test_text_in_rescale_slope_is_refused(tmp_path):
    ds = dicom_dataset()
    ds.RescaleSlope = "1.25"
    path = write(tmp_path, "slope.dcm", _patched(ds, b"1.25", b"ZQXW"))

    refused(path, DicomError, r"slope\.dcm: the DICOM element RescaleSlope does not hold 1 numbers")


@pytest.mark.parametrize("spacing", ["nan", "0", "-1"])
def test_dicom_pixel_spacing_that_is_no_positive_size_is_refused(tmp_path, spacing):
    ds = dicom_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.PixelSpacing = [spacing, "1"]
    path = write(tmp_path, "spacing.dcm", dicom_bytes(ds))

    refused(path, DicomError, r"spacing\.dcm: the DICOM element PixelSpacing must hold 2 positive finite sizes")


# --- 5. third-party warnings never quote header values or temporary paths ------------------------


def test_reading_a_dicom_with_invalid_values_warns_and_logs_nothing(tmp_path, caplog):
    # an invalid UI value: pydicom warns and logs "Invalid value for VR UI: '<the value>'" when it is decoded
    path = write(tmp_path, "warn.dcm", _patched(dicom_dataset(), b"424242424242.2", b"4242mrkzq242.2"))

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        image = read_image(path)
    quoted = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert image.spatial_shape == (8, 8) and "mrkzq" in image.meta["series_uid"]  # the value was decoded
    assert not [q for q in quoted if "mrkzq" in q]


def test_itk_warnings_are_switched_off_once_io_reads_an_itk_file(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32)), str(tmp_path / "a.nii"))

    read_image(tmp_path / "a.nii")

    assert sitk.ProcessObject.GetGlobalWarningDisplay() is False


# --- 6. the last line of defence ------------------------------------------------------------------


def test_an_unexpected_reader_failure_is_a_read_error_naming_only_its_type(tmp_path):
    from medlens.io import _read_guarded

    def reader_that_fails(path, series_uid):
        raise KeyError(MARKER)

    def reader_out_of_memory(path, series_uid):
        raise MemoryError

    with pytest.raises(ReadError, match=r"x\.dcm: could not be read \(KeyError in reader_that_fails\)") as caught:
        _read_guarded(reader_that_fails, tmp_path / "x.dcm", None)
    assert_clean(str(caught.value))
    with pytest.raises(ReadError, match=r"x\.dcm: the image is too large to read on this machine"):
        _read_guarded(reader_out_of_memory, tmp_path / "x.dcm", None)


def test_every_refusal_above_is_a_medlens_error():
    assert issubclass(BudgetError, MedlensError) and issubclass(DicomError, ReadError)


@pytest.mark.parametrize("header", [
    "ObjectType = Image\nNDims = 2\nDimSize = 8 8\nElementType = MET_UCHAR\n",  # no ElementDataFile line
    "ObjectType = Image\nNDims = 2\nDimSize = 8 8\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n",  # no data
])
def test_native_library_complaints_never_reach_stderr(tmp_path, capfd, header):
    """MetaIO prints its own complaint to file descriptor 2; the user sees medlens' one message instead."""
    path = tmp_path / "broken.mha"
    path.write_bytes(header.encode())
    with pytest.raises(ReadError):
        read_image(path)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
