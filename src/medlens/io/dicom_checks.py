"""What a DICOM file's pixel data must be, checked against its header before any decoder runs.

A DICOM header is a promise the pixel data may break: 8 x 8 Rows/Columns over a 12000 x 12000
JPEG, RGB-sized data under a MONOCHROME2 / one-sample claim, 12 bits allocated, -1 frames, a
deflated data set that inflates to 1 GiB. Each is refused here with what the header says and what
the data holds, never with a header text value (they may identify the patient).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

from medlens.budget import check_voxels
from medlens.errors import DicomError, ReadError
from medlens.io.codecs import (
    MAX_JPEG_SCANS,
    StreamError,
    check_jpeg_length,
    codestream_size,
    inflate_bounded,
    jpeg_scans,
)

NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
DEFLATED = "1.2.840.10008.1.2.1.99"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_RLE = "1.2.840.10008.1.2.5"
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"}
_ITEM = b"\xfe\xff\x00\xe0"
# Bytes a deflated data set may inflate to beyond its declared pixel data (other elements after it).
DEFLATE_MARGIN = 1 << 20
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "HSV", "ARGB", "CMYK"}


class _DropPydicomWarnings(logging.Filter):
    """pydicom logs (and warns) invalid header values quoting them: medlens checks what it uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


_FILTER = _DropPydicomWarnings()
if _FILTER not in logging.getLogger("pydicom").filters:
    logging.getLogger("pydicom").addFilter(_FILTER)


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's validation warnings (they quote header values) for one read or decode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def file_meta(data: bytes) -> tuple[int, str | None, list[tuple[bytes, bytes, bytes]]]:
    """(end of the file meta group, its TransferSyntaxUID, its elements as (tag, VR, value)).

    The group is always explicit VR little endian, right after the 128-byte preamble and ``DICM``.
    """
    at, syntax, elements = 132, None, []
    while at + 8 <= len(data) and data[at:at + 2] == b"\x02\x00":
        tag, vr = data[at:at + 4], data[at + 4:at + 6]
        if vr in _LONG_VRS:
            length, start = struct.unpack("<I", data[at + 8:at + 12])[0], at + 12
        else:
            length, start = struct.unpack("<H", data[at + 6:at + 8])[0], at + 8
        value = data[start:start + length]
        elements.append((tag, vr, value))
        if tag == b"\x02\x00\x10\x00":
            syntax = value.rstrip(b"\0 ").decode("ascii", "replace")
        at = start + length
    return at, syntax, elements


def inflate_dataset(data: bytes, path: Path, read_pixel_size) -> bytes:
    """A deflated DICOM file rewritten as explicit VR little endian, inflated in bounded steps.

    Args:
        data: the whole file.
        read_pixel_size: ``read_pixel_size(file_bytes) -> int``: the pixel data bytes the header
            of (the first MiB of) an uncompressed file declares, checked against the budget.

    Raises:
        ReadError: corrupt deflate data, or a data set inflating past its header, its declared
            pixel data and a margin.
        BudgetError: the declared pixels are past the work budget.
    """
    meta_end, _, elements = file_meta(data)
    prefix = _rewrite_meta(data[:128], elements)

    def limit(first: bytes) -> int:
        return len(first) + read_pixel_size(prefix + first) + DEFLATE_MARGIN

    try:
        inflated = inflate_bounded(memoryview(data)[meta_end:], wbits=-15, limit=limit)
    except StreamError as exc:
        raise ReadError(f"{path}: the deflated DICOM data set could not be inflated: {exc}") from None
    return prefix + inflated.data


def inflated_head(data: bytes, max_bytes: int = DEFLATE_MARGIN) -> bytes:
    """A deflated DICOM file's header as an uncompressed file: at most ``max_bytes`` of its data set.

    Enough for pydicom to read the header elements before the pixel data (``stop_before_pixels``)
    without inflating the rest; a file that is not deflated is returned as it is.

    Raises:
        ReadError: the deflate stream is corrupt.
    """
    import zlib

    meta_end, syntax, elements = file_meta(data)
    if syntax != DEFLATED:
        return data
    try:
        first = zlib.decompressobj(wbits=-15).decompress(memoryview(data)[meta_end:], max_bytes)
    except zlib.error:
        raise ReadError("the deflated DICOM data set is corrupt; export the file again") from None
    return _rewrite_meta(data[:128], elements) + first


def _rewrite_meta(preamble: bytes, elements: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """Preamble, ``DICM`` and the file meta group with the transfer syntax set to explicit VR LE."""
    body = b""
    for tag, vr, value in elements:
        if tag == b"\x02\x00\x00\x00":
            continue  # group length: recomputed below
        if tag == b"\x02\x00\x10\x00":
            value = _EXPLICIT_LE.encode() + b"\0"
        if vr in _LONG_VRS:
            body += tag + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        else:
            body += tag + vr + struct.pack("<H", len(value)) + value
    return preamble + b"DICM" + b"\x02\x00\x00\x00UL" + struct.pack("<HI", 4, len(body)) + body


def element_int(ds, get, keyword: str, path: Path, default: int | None = None) -> int | None:
    """An integer header element, ``default`` when absent or empty.

    Raises:
        DicomError: a value that is not a whole number (the value itself is not quoted).
    """
    try:
        value = get(ds, keyword)
        if value is None or value == "":
            return default
        number = float(value)
        if number != int(number):
            raise ValueError
        return int(number)
    except (ValueError, TypeError, OverflowError, AttributeError, IndexError):
        raise DicomError(f"{path}: the DICOM element {keyword} does not hold a whole number; the header is "
                         "corrupt, fix or remove the element, or export the file again") from None


def element_floats(ds, get, keyword: str, path: Path, count: int) -> tuple[float, ...] | None:
    """``count`` numbers from a multi-valued element; ``None`` when absent or of another length.

    Raises:
        DicomError: values that are not numbers.
    """
    try:
        value = get(ds, keyword)
        if value is None or value == "":
            return None
        values = list(value) if not isinstance(value, (str, bytes)) and hasattr(value, "__len__") else [value]
        if len(values) != count:
            return None
        numbers = tuple(float(v) for v in values)
    except (ValueError, TypeError, OverflowError, AttributeError, IndexError):
        raise DicomError(f"{path}: the DICOM element {keyword} does not hold {count} numbers; the header is "
                         "corrupt, fix or remove the element, or export the file again") from None
    if not all(abs(n) < 1e12 for n in numbers):
        what = ("must hold 2 positive finite sizes" if keyword == "PixelSpacing"
                else "holds a non-finite or absurd number")
        raise DicomError(f"{path}: the DICOM element {keyword} {what}; the header is corrupt, export the file again")
    return numbers


def pixel_layout(ds, get, path: Path, rows: int, columns: int) -> tuple[int, int, int, str]:
    """(frames, samples per pixel, bits allocated, photometric interpretation), checked for sense.

    Raises:
        DicomError: 0 / negative / non-numeric frames, a sample count that contradicts the
            photometric interpretation, bits allocated other than 1, 8, 16, 32 or 64, an
            impossible image size.
    """
    if not (0 < rows < 65536 and 0 < columns < 65536):
        raise DicomError(f"{path}: the DICOM header declares {rows} x {columns} pixels (Rows x Columns must be "
                         "1 to 65535); the header is corrupt, export the file again")
    frames = element_int(ds, get, "NumberOfFrames", path, 1)
    if frames < 1:
        raise DicomError(f"{path}: the DICOM header declares {frames} frames (NumberOfFrames must be 1 or more); "
                         "the header is corrupt, export the file again")
    samples = element_int(ds, get, "SamplesPerPixel", path, 1)
    bits = element_int(ds, get, "BitsAllocated", path, None)
    photometric = str(get(ds, "PhotometricInterpretation", "") or "").strip().upper()
    if bits not in (1, 8, 16, 32, 64):
        raise DicomError(f"{path}: BitsAllocated is {bits} (DICOM pixel data is 1, 8, 16, 32 or 64 bits per "
                         "sample); the header is corrupt, export the file again")
    stored = element_int(ds, get, "BitsStored", path, bits)
    high = element_int(ds, get, "HighBit", path, stored - 1)
    if not (1 <= stored <= bits) or not (stored - 1 <= high < bits):
        raise DicomError(f"{path}: BitsStored {stored} and HighBit {high} do not fit BitsAllocated {bits} (1 <= "
                         "BitsStored <= BitsAllocated, HighBit = BitsStored - 1); the header is corrupt, export "
                         "the file again")
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        element_floats(ds, get, keyword, path, 1)  # refuses text and NaN
    spacing = element_floats(ds, get, "PixelSpacing", path, 2)
    if spacing is not None and min(spacing) <= 0:
        raise DicomError(f"{path}: the DICOM element PixelSpacing must hold 2 positive finite sizes, found "
                         f"{spacing}; the header is corrupt, export the file again")
    grey = photometric in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
    if samples not in (1, 3, 4) or (grey and samples != 1) or (photometric in _COLOUR and samples == 1):
        shown = photometric if grey or photometric in _COLOUR else "its photometric interpretation"
        raise DicomError(f"{path}: SamplesPerPixel is {samples} under {shown}; the header contradicts itself, "
                         "export the file again")
    return frames, samples, bits, photometric


def check_pixel_data(ds, get, data: bytes, pixel_offset: int, path: Path, rows: int, columns: int) -> int:
    """Check the pixel data element against the header; the elements it decodes to.

    Native data must hold Rows x Columns x frames x samples x bits/8 bytes (no more, no fewer);
    the first frame of encapsulated data must declare Rows x Columns in its JPEG / JPEG-LS /
    JPEG 2000 header and hold a sane number of scans.

    Returns:
        frames x samples x rows x columns, for the caller's budget check.

    Raises:
        DicomError / ReadError: what the header says and what the data holds disagree.
    """
    frames, samples, bits, photometric = pixel_layout(ds, get, path, rows, columns)
    count = frames * samples * rows * columns
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    element = _pixel_element(data, pixel_offset, big_endian=syntax == "1.2.840.10008.1.2.2",
                             explicit=syntax != "1.2.840.10008.1.2")
    if element is None:
        return count  # no (7FE0,0010): float pixel data or none, the decoder says
    start, length = element
    if syntax in NATIVE_SYNTAXES:
        subsampled = 2 * frames * rows * columns if photometric == "YBR_FULL_422" else count
        expected = (subsampled * bits + 7) // 8
        if length == 0xFFFFFFFF:
            raise DicomError(f"{path}: the pixel data is encapsulated (compressed) but the transfer syntax says "
                             "uncompressed; the file is corrupt, export it again")
        if length not in (expected, expected + expected % 2):
            raise DicomError(f"{path}: the pixel data holds {length:,} bytes, but the header declares "
                             f"{rows} x {columns} pixels x {frames} frame(s) x {samples} sample(s) x {bits} bits = "
                             f"{expected:,} bytes; the header contradicts the data, export the file again")
        if len(data) - start < expected:
            raise ReadError(f"{path}: truncated: the pixel data should hold {expected:,} bytes, the file holds "
                            f"{max(len(data) - start, 0):,}; copy the file again")
    elif length == 0xFFFFFFFF and syntax != _RLE:
        _check_first_frame(data, start, path, rows, columns)
    return count


def _pixel_element(data: bytes, at: int, *, big_endian: bool, explicit: bool) -> tuple[int, int] | None:
    """(value start, value length) of the (7FE0,0010) element at ``at``; ``None`` if it is not there."""
    tag = b"\x7f\xe0\x00\x10" if big_endian else b"\xe0\x7f\x10\x00"
    if data[at:at + 4] != tag or len(data) < at + 8:
        return None
    order = ">" if big_endian else "<"
    if explicit and data[at + 4:at + 6] in _LONG_VRS:
        return at + 12, struct.unpack(order + "I", data[at + 8:at + 12])[0]
    return at + 8, struct.unpack(order + "I", data[at + 4:at + 8])[0]


def _check_first_frame(data: bytes, at: int, path: Path, rows: int, columns: int) -> None:
    """The first fragment's codec header against Rows x Columns (encapsulated pixel data at ``at``)."""
    fragments = []
    while len(fragments) < 2 and data[at:at + 4] == _ITEM and at + 8 <= len(data):
        length = struct.unpack("<I", data[at + 4:at + 8])[0]
        fragments.append(data[at + 8:at + 8 + length])
        at += 8 + length
    if len(fragments) < 2:
        raise ReadError(f"{path}: the encapsulated pixel data holds no frame; the file is truncated or corrupt")
    found = codestream_size(fragments[1])
    if found is not None:
        codec, (frame_rows, frame_columns, _) = found
        if (frame_rows, frame_columns) != (rows, columns):
            raise DicomError(f"{path}: the header says {rows}x{columns}, the embedded {codec} is "
                             f"{frame_rows}x{frame_columns}; the file contradicts itself, export it again")
    if jpeg_scans(fragments[1]) > MAX_JPEG_SCANS:
        raise DicomError(f"{path}: the embedded JPEG holds more than {MAX_JPEG_SCANS} scans; a real image has "
                         "about 10, export the file again")
    try:
        check_jpeg_length(fragments[1])
    except StreamError as exc:
        raise DicomError(f"{path}: the first frame: {exc}; export the file again") from None


def check_series_budget(counts: list[int], folder: Path) -> None:
    """All the slices of a series together against the work budget, before any is decoded."""
    check_voxels(sum(counts), f"reading the {len(counts)} slices of {folder.name}")
