"""What a compressed stream will make, asked before any decoder allocates it.

A header is a promise, not a measurement: an 8 x 8 DICOM may embed a 12000 x 12000 JPEG, a 1 MB
deflate stream may inflate to 1 GiB, a PNG may declare 30000 x 30000 pixels and hold one row. The
helpers here read the codec's own header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ, PNG IHDR) and
inflate zlib / deflate / gzip streams in bounded steps, so the readers can compare what the file
says with what it holds, and refuse the difference before decoding.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

_STEP = 1 << 20
# Progressive JPEGs use about 10 scans; thousands of empty scans only make the decoder loop.
MAX_JPEG_SCANS = 100
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_ARITHMETIC_SOF = {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# (row start, column start, row step, column step) of the seven Adam7 passes
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


class StreamError(ValueError):
    """A compressed stream is corrupt, or holds more or less than its header says (message: what)."""


@dataclass(frozen=True)
class Inflated:
    """What :func:`inflate_bounded` read.

    Attributes:
        data: the output, or ``b""`` when only its size was wanted.
        size: bytes of output.
        complete: the stream reached its end marker.
        rest: input after the end of the stream (gzip members, padding).
    """

    data: bytes
    size: int
    complete: bool
    rest: bytes


def inflate_bounded(data: bytes | memoryview, *, wbits: int, limit: int | Callable[[bytes], int],
                    keep: bool = True) -> Inflated:
    """Inflate ``data`` 1 MiB at a time, refusing as soon as the output passes ``limit`` bytes.

    Args:
        data: the compressed bytes.
        wbits: zlib's window argument (15 zlib, -15 raw deflate, 31 gzip).
        limit: the most output allowed, or a function of the first MiB of output that returns it
            (when the limit is written in a header inside the compressed stream).
        keep: return the output; ``False`` only counts it.

    Raises:
        StreamError: the stream is corrupt, or inflates past ``limit``.
    """
    inflater = zlib.decompressobj(wbits)
    kept, size, view = bytearray(), 0, memoryview(data)
    bound = limit if isinstance(limit, int) else None
    try:
        for start in range(0, len(view), _STEP):
            pending = view[start:start + _STEP]
            while True:
                out = inflater.decompress(pending, _STEP)
                size += len(out)
                if keep or bound is None:
                    kept += out
                if bound is None and (size >= _STEP or inflater.eof):
                    bound = limit(bytes(kept))
                if bound is not None and size > bound:
                    raise StreamError(f"the compressed data inflates past {bound:,} bytes, more than its header "
                                      "declares (a decompression bomb or a corrupt file)")
                pending = inflater.unconsumed_tail
                if not pending and len(out) < _STEP:
                    break
            if inflater.eof:
                break
    except zlib.error as exc:
        raise StreamError(f"the compressed data is corrupt ({exc})") from None
    if bound is None and limit(bytes(kept)) < size:  # a stream under 1 MiB: its header is still checked
        raise StreamError("the compressed data inflates to more than its header declares")
    return Inflated(bytes(kept) if keep else b"", size, inflater.eof, inflater.unused_data)


def jpeg_scans(data: bytes) -> int:
    """How many scans (SOS markers) a JPEG stream holds: entropy-coded 0xFF bytes are stuffed, so
    ``FF DA`` only ever appears as a marker."""
    return data.count(b"\xff\xda")


def jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG or JPEG-LS frame header; ``None`` when there is none."""
    frame = jpeg_frame(data)
    return frame[1:] if frame else None


def check_jpeg_length(data: bytes) -> None:
    """Refuse a Huffman-coded JPEG too short to hold its declared frame.

    Every 8 x 8 block of the first component codes at least one Huffman symbol (its DC difference)
    of at least one bit, so the stream holds at least blocks / 8 bytes; libjpeg fills whatever is
    missing with grey instead of failing. (Arithmetic-coded and JPEG-LS frames are not bounded so.)

    Raises:
        StreamError: fewer bytes than one bit per block.
    """
    frame = jpeg_frame(data)
    if frame is None or frame[0] in _ARITHMETIC_SOF or frame[0] == 0xF7:
        return
    _, rows, columns, _ = frame
    blocks = -(-rows // 8) * -(-columns // 8)
    if len(data) * 8 < blocks:
        raise StreamError(f"the JPEG declares {columns} x {rows} pixels but holds only {len(data):,} bytes, fewer "
                          "than one bit per 8 x 8 block (truncated, or a lying header)")


def jpeg_frame(data: bytes) -> tuple[int, int, int, int] | None:
    """(SOF marker, rows, columns, components) of a JPEG or JPEG-LS stream; ``None`` when there is none.

    Walks the marker segments from SOI to the first SOF (or SOF55 for JPEG-LS) without decoding.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker in _SOF_MARKERS:
            if at + 10 > len(data):
                return None
            rows, columns = struct.unpack(">HH", data[at + 5:at + 9])
            return marker, rows, columns, data[at + 9]
        if marker == 0xDA or length < 2:
            return None  # a scan before any frame header
        at += 2 + length
    return None


def j2k_size(data: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG 2000 SIZ segment (raw codestream or JP2 file)."""
    at = data.find(b"\xff\x4f\xff\x51")
    if at < 0 or at + 42 > len(data):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">4I", data[at + 8:at + 24])
    components = struct.unpack(">H", data[at + 40:at + 42])[0]
    return ysiz - yosiz, xsiz - xosiz, components


def codestream_size(data: bytes) -> tuple[str, tuple[int, int, int]] | None:
    """(codec name, (rows, columns, components)) of a JPEG, JPEG-LS or JPEG 2000 frame, if any."""
    if data.startswith(b"\xff\xd8"):
        size = jpeg_size(data)
        return ("JPEG", size) if size else None
    size = j2k_size(data[:4096])
    return ("JPEG 2000", size) if size else None


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    channels: int
    bits_per_pixel: int
    interlaced: bool


def png_header(data: bytes) -> PngHeader:
    """The IHDR of a PNG.

    Raises:
        StreamError: no PNG signature, or no well-formed IHDR first.
    """
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        raise StreamError("the PNG signature or its IHDR header is missing")
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if color not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or width == 0 or height == 0:
        raise StreamError(f"the PNG header declares an impossible image ({width} x {height}, colour type "
                          f"{color}, {depth} bits)")
    return PngHeader(width, height, _PNG_CHANNELS[color], depth * _PNG_CHANNELS[color], interlace == 1)


def png_idat(data: bytes) -> bytes:
    """The concatenated IDAT chunks of a PNG, after checking every chunk's CRC and that IEND is there.

    Raises:
        StreamError: a chunk runs past the end of the file, a CRC is wrong, or IEND is missing.
    """
    at, idat = len(_PNG_SIGNATURE), []
    while True:
        if at + 12 > len(data):
            raise StreamError("the PNG ends before its IEND chunk (truncated)")
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        end = at + 12 + length
        if end > len(data):
            raise StreamError(f"a PNG chunk declares {length:,} bytes past the end of the file (truncated)")
        if zlib.crc32(data[at + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            raise StreamError("a PNG chunk has a wrong CRC (the file is corrupt)")
        if kind == b"IDAT":
            idat.append(data[at + 8:end - 4])
        if kind == b"IEND":
            return b"".join(idat)
        at = end


def png_raw_size(header: PngHeader) -> int:
    """Bytes of filtered scanlines the IDAT stream must inflate to (one filter byte per row)."""
    def rows_bytes(width: int, height: int) -> int:
        return height * (1 + (width * header.bits_per_pixel + 7) // 8) if width and height else 0

    if not header.interlaced:
        return rows_bytes(header.width, header.height)
    return sum(rows_bytes((header.width - c0 + cs - 1) // cs if header.width > c0 else 0,
                          (header.height - r0 + rs - 1) // rs if header.height > r0 else 0)
               for r0, c0, rs, cs in _ADAM7)


def check_png_data(data: bytes, header: PngHeader) -> None:
    """Refuse a PNG whose pixel data is not exactly what its IHDR declares.

    Pillow decodes a short IDAT stream onto zeros and ignores IDAT CRCs; this inflates the IDAT
    stream once (counting, not keeping, and never past the declared size).

    Raises:
        StreamError: bad CRC, truncated file, or pixel data shorter or longer than declared.
    """
    expected = png_raw_size(header)
    inflated = inflate_bounded(png_idat(data), wbits=15, limit=expected, keep=False)
    if inflated.size < expected or not inflated.complete:
        raise StreamError(f"the PNG pixel data is truncated: its header declares {header.width} x {header.height} "
                          f"pixels ({expected:,} bytes of rows), the data holds {inflated.size:,}")
