"""Uploaded bytes -> a file or DICOM series folder that :func:`medlens.io.read_image` can read.

The type is decided from the content, never from a file name, and every check that bounds memory
or disk runs before a decoder sees the data: the upload size while it is copied, the image size
from the format's header (a voxel budget), zip entries, names and sizes before extraction, and
gzip streams by decompressing in bounded steps. The voxel limit is the smaller of
``UploadLimits.max_voxels`` and the work budget in force (:mod:`medlens.budget`). Messages never
quote what an upload names itself (zip entries are "entry #N"). Everything lives in a temporary folder that is
removed when the ``with`` block ends, whatever happens inside it.

>>> with staged_upload(request_bytes) as staged:
...     image = read_image(staged.path)
"""

from __future__ import annotations

import contextlib
import io
import re
import stat
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from medlens.budget import current_budget
from medlens.errors import MedlensError

ACCEPTED = ("DICOM (Part 10 file), a .zip of one DICOM series, NIfTI (.nii, .nii.gz), MetaImage (.mha with "
            "ElementDataFile = LOCAL), NRRD (.nrrd with attached data), PNG, JPEG")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER_BYTES = 64 * 1024  # text headers (MetaImage, NRRD) must end within this many bytes
_CHUNK = 1 << 20
MAX_ZIP_DEPTH = 32  # folders inside a zipped series; a DICOM tree (patient/study/series) needs a handful
# a compression ratio is only judged past this much output: small files of zeros are legitimate
_RATIO_GRACE_BYTES = 8 << 20
_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
        b"OL", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UI", b"UL", b"UN", b"US", b"UT", b"UC",
        b"UR", b"OV", b"SV", b"UV"}


class UploadError(MedlensError):
    """An upload refused before any image decoder saw it.

    Attributes:
        status: the HTTP status that fits: 400 malformed, 413 too large, 415 unsupported type.
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may cost.

    Attributes:
        max_upload_bytes: the uploaded file itself.
        max_voxels: pixels x channels x slices (frames) an image may declare in its header.
        max_zip_entries: members of a zipped DICOM series.
        max_uncompressed_bytes: what a zip or gzip upload may expand to.
        max_compression_ratio: uncompressed / compressed size, judged past 8 MiB of output.
    """

    max_upload_bytes: int = 64 << 20
    max_voxels: int = 512**3
    max_zip_entries: int = 4096
    max_uncompressed_bytes: int = 1 << 30
    max_compression_ratio: float = 200.0


@dataclass(frozen=True)
class StagedUpload:
    """An upload ready for ``read_image``.

    Attributes:
        path: the image file, or the folder of an unzipped DICOM series.
        kind: ``dicom``, ``dicom_series``, ``nifti``, ``metaimage``, ``nrrd``, ``png`` or ``jpeg``.
        size_bytes: the uploaded bytes.
        voxels: what the header declares (all files of a series together).
        folder: the temporary folder (removed after the ``with`` block).
    """

    path: Path
    kind: str
    size_bytes: int
    voxels: int
    folder: Path

    def scrub(self, message: str) -> str:
        """``message`` without the temporary folder's path (reader errors name the file they read)."""
        return message.replace(f"{self.folder}/", "").replace(str(self.folder), "upload")


@contextlib.contextmanager
def staged_upload(data: bytes | BinaryIO, limits: UploadLimits | None = None) -> Iterator[StagedUpload]:
    """Copy, check and unpack an upload into a temporary folder removed on exit.

    Args:
        data: the uploaded bytes, or a binary file object positioned at their start.
        limits: size limits; the defaults of :class:`UploadLimits` when ``None``.

    Yields:
        StagedUpload whose ``path`` ``read_image`` accepts.

    Raises:
        UploadError: with ``status`` 400 (malformed), 413 (too large) or 415 (unsupported type).
    """
    limits = limits or UploadLimits()
    with tempfile.TemporaryDirectory(prefix="medlens-upload-") as name:
        folder = Path(name)
        raw = folder / "upload.bin"
        size = _copy_capped(data, raw, limits.max_upload_bytes)
        if size == 0:
            raise UploadError(f"the upload is empty (0 bytes); send one image file. Accepted: {ACCEPTED}")
        with open(raw, "rb") as f:
            head = f.read(HEADER_BYTES)
        kind = detect_upload(head)
        try:
            path, voxels = _STAGERS[kind](raw, head, limits)
        except UploadError as exc:  # library messages may name the temporary file
            raise UploadError(str(exc).replace(str(raw), "the upload").replace(name, "upload"), exc.status) from None
        yield StagedUpload(path, {"zip": "dicom_series", "gzip": "nifti"}.get(kind, kind), size, voxels, folder)


def _copy_capped(data: bytes | BinaryIO, target: Path, limit: int) -> int:
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    written = 0
    with open(target, "wb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > limit:
                raise UploadError(f"the upload is larger than the limit of {limit / 2**20:.0f} MiB; send a smaller "
                                  "image or raise the server's --max-upload-mb", 413)
            out.write(chunk)
    return written


def detect_upload(head: bytes) -> str:
    """The upload's type from its first bytes: ``dicom``, ``zip``, ``gzip``, ``nifti``, ``metaimage``,
    ``nrrd``, ``png`` or ``jpeg``.

    Raises:
        UploadError: 415 for anything else (a DICOM without its Part 10 preamble included).
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, kind in ((PNG_SIGNATURE, "png"), (b"\xff\xd8\xff", "jpeg"), (b"PK\x03\x04", "zip"),
                        (b"\x1f\x8b", "gzip"), (b"NRRD000", "nrrd")):
        if head.startswith(magic):
            return kind
    if _nifti_sizeof_hdr(head):
        return "nifti"
    if "ObjectType" in _metaimage_fields(head):
        return "metaimage"
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[4:6] in _VRS:
        raise UploadError("this looks like a DICOM data set without the 128-byte preamble and 'DICM' marker; "
                          "save it as a DICOM Part 10 file (e.g. pydicom save_as(..., enforce_file_format=True))", 415)
    raise UploadError(f"unsupported upload: the first bytes ({head[:8].hex(' ') or 'none'}) match no accepted "
                      f"image type. Accepted: {ACCEPTED}", 415)


def _check_voxels(voxels: int, what: str, limits: UploadLimits) -> int:
    """``voxels`` if within ``limits.max_voxels`` and the work budget in force, else UploadError 413."""
    budget = current_budget()
    if voxels > limits.max_voxels and limits.max_voxels <= budget.max_voxels:
        raise UploadError(f"{what} declares {voxels:,} voxels, more than the limit of {limits.max_voxels:,}; "
                          "send a smaller or downsampled image", 413)
    if voxels > budget.max_voxels:
        raise UploadError(f"{what} declares {voxels:,} voxels, more than the limit of {budget.max_voxels:,}; "
                          f"{budget.hint}", 413)
    return voxels


def _moved(raw: Path, name: str) -> Path:
    return raw.replace(raw.with_name(name))


# --- raster ------------------------------------------------------------------------------------------------

def _stage_raster(raw: Path, head: bytes, limits: UploadLimits, fmt: str) -> tuple[Path, int]:
    from PIL import Image as PILImage

    try:  # Image.open reads the header only (PNG IHDR, JPEG SOF); pixels are decoded later, by the reader
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(raw, formats=[fmt.upper()]) as pil:
                width, height = pil.size
                bands = len(pil.getbands())
    except (PILImage.DecompressionBombWarning, PILImage.DecompressionBombError) as exc:
        raise UploadError(f"the {fmt.upper()} header declares too many pixels ({exc}); send a smaller image",
                          413) from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise UploadError(f"the {fmt.upper()} header could not be read ({exc}); the file is truncated or corrupt, "
                          "export it again") from None
    voxels = _check_voxels(width * height * bands, f"the {fmt.upper()} header ({width} x {height})", limits)
    return _moved(raw, f"upload.{'png' if fmt == 'png' else 'jpg'}"), voxels


# --- NIfTI -------------------------------------------------------------------------------------------------

def _nifti_sizeof_hdr(head: bytes) -> int | None:
    """348 or 540 when the first int32 is NIfTI-1's or NIfTI-2's header size (either byte order) and the
    magic agrees; ``None`` otherwise."""
    if len(head) < 4:
        return None
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348 and (len(head) < 348 or head[344:347] in (b"n+1", b"ni1")):
            return size  # a short head is a truncated header, which _nifti_voxels names as such
        if size == 540 and (len(head) < 8 or head[4:7] in (b"n+2", b"ni2")):
            return size
    return None


def _nifti_voxels(head: bytes, limits: UploadLimits) -> int:
    """The voxel count of a NIfTI header (every dimension, channels and time included), checked."""
    size = _nifti_sizeof_hdr(head)
    if size is None or len(head) < size:
        raise UploadError(f"the NIfTI header is truncated: {len(head)} bytes, expected at least 348 (NIfTI-1) or "
                          "540 (NIfTI-2); export the file again")
    endian = "<" if struct.unpack("<i", head[:4])[0] == size else ">"
    pair = head[344:347] == b"ni1" if size == 348 else head[4:7] == b"ni2"
    if pair:
        raise UploadError("this NIfTI header keeps its voxels in a separate .img file; upload a single-file .nii "
                          "or .nii.gz", 415)
    dims = struct.unpack(endian + "8h", head[40:56]) if size == 348 else struct.unpack(endian + "8q", head[16:80])
    if not 1 <= dims[0] <= 7 or any(d < 1 for d in dims[1 : dims[0] + 1]):
        shown = list(dims[: dims[0] + 1 if 0 <= dims[0] <= 7 else 1])
        raise UploadError(f"the NIfTI header has invalid dimensions {shown}"
                          "; expected dim[0] in 1..7 and every size >= 1. Export the file again")
    voxels = 1
    for d in dims[1 : dims[0] + 1]:
        voxels *= int(d)
    return _check_voxels(voxels, f"the NIfTI header (size {list(dims[1 : dims[0] + 1])})", limits)


def _stage_nifti(raw: Path, head: bytes, limits: UploadLimits) -> tuple[Path, int]:
    return _moved(raw, "upload.nii"), _nifti_voxels(head, limits)


def _stage_gzip(raw: Path, head: bytes, limits: UploadLimits) -> tuple[Path, int]:
    """A gzip upload must hold a NIfTI image; the whole stream is decompressed in bounded steps."""
    decompressor = zlib.decompressobj(wbits=31)
    header, total, consumed, voxels = b"", 0, 0, None
    try:
        with open(raw, "rb") as f:
            while not decompressor.eof and (chunk := f.read(_CHUNK)):
                consumed += len(chunk)
                while chunk and not decompressor.eof:
                    out = decompressor.decompress(chunk, _CHUNK)
                    chunk = decompressor.unconsumed_tail
                    total += len(out)
                    header += out[: max(540 - len(header), 0)]
                    if voxels is None and len(header) >= 540:  # judge the header before inflating the rest
                        voxels = _gzipped_nifti_voxels(header, limits)
                    _check_expansion(total, consumed, limits, "the gzip stream")
            trailing = decompressor.unused_data or f.read(1)
    except zlib.error as exc:
        raise UploadError(f"corrupt gzip data ({exc}); compress the image again") from None
    if not decompressor.eof:
        raise UploadError("the gzip stream is truncated (it ends before its end marker); upload the whole file")
    if trailing:
        raise UploadError("data follows the end of the gzip stream; upload one .nii.gz file, not a concatenation")
    return _moved(raw, "upload.nii.gz"), voxels if voxels is not None else _gzipped_nifti_voxels(header, limits)


def _gzipped_nifti_voxels(header: bytes, limits: UploadLimits) -> int:
    if _nifti_sizeof_hdr(header) is None:
        raise UploadError(f"a gzip upload must hold a NIfTI image (.nii.gz), found other data; accepted: {ACCEPTED}",
                          415)
    return _nifti_voxels(header, limits)


def _check_expansion(total: int, consumed: int, limits: UploadLimits, what: str) -> None:
    if total > limits.max_uncompressed_bytes:
        raise UploadError(f"{what} expands past the limit of {limits.max_uncompressed_bytes / 2**20:.0f} MiB "
                          "(a compression bomb or an oversized image); send a smaller image", 413)
    if total > _RATIO_GRACE_BYTES and total > limits.max_compression_ratio * max(consumed, 1):
        raise UploadError(f"{what} expands more than {limits.max_compression_ratio:.0f}-fold (a compression bomb); "
                          "real images do not compress that well", 413)


# --- MetaImage and NRRD: text headers ------------------------------------------------------------------------

_META_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def _metaimage_fields(head: bytes) -> dict[str, str]:
    """``Key = Value`` fields up to and including ``ElementDataFile``; ``{}`` when the head is not such text."""
    fields: dict[str, str] = {}
    for line in head.decode("latin-1").splitlines()[:200]:
        match = _META_LINE.match(line)
        if match is None:
            return {}
        fields[match.group(1)] = match.group(2)
        if match.group(1) == "ElementDataFile":
            break
    return fields


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split()]
    except ValueError:  # the header's text is not shown: an upload's own words may identify someone
        raise UploadError(f"{what} must be whole numbers, found other text; export the file again") from None
    if not values or any(v < 1 for v in values):
        raise UploadError(f"{what} must be positive whole numbers, found {values or 'none'}; export the file again")
    return values


def _product(values: list[int]) -> int:
    result = 1
    for v in values:
        result *= v
    return result


def _stage_metaimage(raw: Path, head: bytes, limits: UploadLimits) -> tuple[Path, int]:
    fields = _metaimage_fields(head)
    if fields.get("ObjectType", "").lower() != "image":
        raise UploadError("a MetaImage upload must have ObjectType = Image, found another object type; save the "
                          "image as a MetaImage (.mha)")
    data_file = fields.get("ElementDataFile")
    if data_file is None:
        raise UploadError(f"the MetaImage header has no ElementDataFile line within its first {HEADER_BYTES} bytes; "
                          "upload a single-file .mha")
    if data_file.upper() != "LOCAL":
        raise UploadError("the MetaImage header points at a separate data file; the service reads nothing but the "
                          "upload: save it as one .mha (ElementDataFile = LOCAL)")
    sizes = _ints(fields.get("DimSize", ""), "MetaImage DimSize")
    channels = _ints(fields.get("ElementNumberOfChannels", "1"), "MetaImage ElementNumberOfChannels")
    voxels = _check_voxels(_product(sizes + channels), f"the MetaImage header (DimSize {sizes})", limits)
    return _moved(raw, "upload.mha"), voxels


def _stage_nrrd(raw: Path, head: bytes, limits: UploadLimits) -> tuple[Path, int]:
    text = head.decode("latin-1")
    end = min((i for i in (text.find("\n\n"), text.find("\r\n\r\n")) if i >= 0), default=-1)
    if end < 0:
        raise UploadError(f"the NRRD header does not end (no blank line) within its first {HEADER_BYTES} bytes; "
                          "the file is truncated or not NRRD")
    fields = {}
    for line in text[:end].splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip().lower()] = value.lstrip("=").strip()
    if "data file" in fields or "datafile" in fields:
        raise UploadError("the NRRD header points at a separate data file; the service reads nothing but the "
                          "upload: save it as one .nrrd with attached data")
    sizes = _ints(fields.get("sizes", ""), "NRRD sizes")
    return _moved(raw, "upload.nrrd"), _check_voxels(_product(sizes), f"the NRRD header (sizes {sizes})", limits)


# --- DICOM -------------------------------------------------------------------------------------------------

def _dicom_voxels(path: Path) -> int | None:
    """Rows x Columns x frames x samples from a DICOM header; ``None`` for a file without pixels."""
    import pydicom

    from medlens.io.dicom_checks import inflated_head

    try:
        with open(path, "rb") as f:
            head = f.read(_CHUNK)
        inflated = inflated_head(head)  # pydicom would inflate a deflated data set whole: 1 MB can hold 1 GiB
        ds = pydicom.dcmread(path if inflated is head else io.BytesIO(inflated), stop_before_pixels=True,
                             specific_tags=["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"])
        if "Rows" not in ds or "Columns" not in ds:
            return None
        frames = int(ds.get("NumberOfFrames") or 1)
        return int(ds.Rows) * int(ds.Columns) * max(frames, 1) * max(int(ds.get("SamplesPerPixel") or 1), 1)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on crafted headers: "unreadable header"
        raise UploadError(f"a DICOM header could not be parsed ({type(exc).__name__}); the file is truncated or "
                          "corrupt, export it again") from None


def _stage_dicom(raw: Path, head: bytes, limits: UploadLimits) -> tuple[Path, int]:
    path = _moved(raw, "upload.dcm")
    return path, _check_voxels(_dicom_voxels(path) or 0, "the DICOM header", limits)


def _stage_zip(raw: Path, head: bytes, limits: UploadLimits) -> tuple[Path, int]:
    """A zipped DICOM series: names, links, counts and sizes are checked before anything is extracted."""
    series = raw.with_name("series")
    try:
        with zipfile.ZipFile(raw) as archive:
            members = archive.infolist()
            _check_zip_members(members, raw.stat().st_size, limits)
            for number, info in enumerate(members, start=1):
                _extract_member(archive, info, number, series)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error, OSError) as exc:
        # the exception's text is not shown: zipfile quotes entry names in it ("Bad CRC-32 for file ...")
        raise UploadError(f"the zip archive is corrupt or uses an unsupported feature ({type(exc).__name__}); zip "
                          "the DICOM files again (deflate or store)") from None
    dicoms = [p for p in sorted(series.rglob("*")) if p.is_file() and _has_dicm(p)]
    if not dicoms:
        raise UploadError("the zip archive holds no DICOM Part 10 file ('DICM' marker at byte 128); a zip upload "
                          "must be one DICOM series", 415)
    voxels = sum(_dicom_voxels(p) or 0 for p in dicoms)
    return series, _check_voxels(voxels, f"the DICOM series ({len(dicoms)} files)", limits)


def _check_zip_members(members: list[zipfile.ZipInfo], compressed: int, limits: UploadLimits) -> None:
    if len(members) > limits.max_zip_entries:
        raise UploadError(f"the zip archive has {len(members)} entries, more than the limit of "
                          f"{limits.max_zip_entries}; send one series", 413)
    for number, info in enumerate(members, start=1):
        _check_zip_name(info, number)
    _check_expansion(sum(i.file_size for i in members), compressed, limits, "the zip archive")


def _check_zip_name(info: zipfile.ZipInfo, number: int) -> None:
    """Refuse entry ``number`` (1-based) of the archive for its name, type or encryption, never quoting the
    name: it is the uploader's text and may identify a patient."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\x00" in name:
        raise UploadError(f"zip entry #{number} points outside the archive (absolute path or '..'); zip the "
                          "series folder with relative names")
    if not parts:  # "", ".", "./": nothing to extract to
        raise UploadError(f"zip entry #{number} has an empty name (or only '.' and '/'); zip the series folder "
                          "again so every file has a name")
    if len(parts) > MAX_ZIP_DEPTH or any(len(p.encode()) > 255 for p in parts):
        raise UploadError(f"zip entry #{number} is nested more than {MAX_ZIP_DEPTH} folders deep or has a name part "
                          "longer than 255 bytes; zip the series folder itself, with short names")
    file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no Unix mode
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UploadError(f"zip entry #{number} is a symbolic link or special file; zip the files themselves")
    if info.flag_bits & 0x1:
        raise UploadError(f"zip entry #{number} is encrypted; upload an unencrypted zip")


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, number: int, series: Path) -> None:
    """Write entry ``number`` under ``series``, never past its declared size."""
    target = series.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
    if not target.resolve().is_relative_to(series.resolve()):
        raise UploadError(f"zip entry #{number} points outside the archive")
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with archive.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise UploadError(f"zip entry #{number} holds more than its declared size", 413)
                dst.write(chunk)
    except FileExistsError:
        raise UploadError(f"zip entry #{number} repeats the name of an earlier entry; zip each file once") from None


def _has_dicm(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(132)[128:132] == b"DICM"


_STAGERS = {
    "dicom": _stage_dicom, "zip": _stage_zip, "nifti": _stage_nifti, "gzip": _stage_gzip,
    "metaimage": _stage_metaimage, "nrrd": _stage_nrrd,
    "png": lambda raw, head, limits: _stage_raster(raw, head, limits, "png"),
    "jpeg": lambda raw, head, limits: _stage_raster(raw, head, limits, "jpeg"),
}
