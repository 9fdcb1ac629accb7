"""DICOM: single files and series folders.

pydicom reads the headers to group files by ``SeriesInstanceUID``, sort slices along the slice
normal and check the spacing. Uncompressed slices are then stacked straight from the bytes the
scan already read; SimpleITK reads compressed series (it decodes them and applies
RescaleSlope/Intercept, so CT comes out in HU).
Patient identifiers never leave this module: only a one-way ``patient_key`` does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import re
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.budget import check_voxels
from medlens.errors import DicomError, ReadError
from medlens.io.dicom_checks import (
    DEFLATED,
    check_pixel_data,
    check_series_budget,
    element_floats,
    element_int,
    file_meta,
    inflate_dataset,
    pixel_layout,
    quiet_pydicom,
)
from medlens.io.formats import is_clutter
from medlens.io.image import Image, from_sitk, quiet_native_stderr, simpleitk

_TAGS = ["SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
         "Rows", "Columns", "Modality", "SeriesDescription", "PatientID", "InstanceNumber",
         "NumberOfFrames", "SliceThickness", "SeriesNumber"]
# what a series folder scan also needs to stack uncompressed pixels without a second read
_PIXEL_TAGS = ["SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
               "PixelRepresentation", "RescaleSlope", "RescaleIntercept"]
# Elements that are usually byte-for-byte equal in every slice of a series, with VRs (US, IS, DS,
# CS, UI) that pydicom decodes from the bytes alone: no character set, no other element.
_REPEATED = {"SeriesInstanceUID": 0x0020000E, "ImageOrientationPatient": 0x00200037, "PixelSpacing": 0x00280030,
             "Rows": 0x00280010, "Columns": 0x00280011, "Modality": 0x00080060, "NumberOfFrames": 0x00280008,
             "SamplesPerPixel": 0x00280002, "PhotometricInterpretation": 0x00280004, "BitsAllocated": 0x00280100,
             "BitsStored": 0x00280101, "PixelRepresentation": 0x00280103, "RescaleSlope": 0x00281053,
             "RescaleIntercept": 0x00281052}
NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTRECORD", "SEG", "SR", "PR", "KO", "REG"}
# Relative tolerance on the slice step before a series is called unevenly spaced.
SPACING_RTOL = 0.01


@dataclass(frozen=True)
class SliceHeader:
    path: Path
    series_uid: str
    modality: str
    description: str
    rows: int | None
    columns: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance: int | None
    patient_key: str | None

    @property
    def is_image(self) -> bool:
        return self.rows is not None and self.modality not in NON_IMAGE_MODALITIES


def patient_key(patient_id: str | None) -> str | None:
    """A stable pseudonym for a DICOM PatientID (the raw ID is never stored or printed)."""
    if not patient_id:
        return None
    return "pid-" + hashlib.sha256(str(patient_id).encode()).hexdigest()[:16]


class HeaderValues:
    """Header values for the files of one folder scan; each distinct raw element decoded once.

    pydicom decodes an element's bytes on first access, which costs more than parsing the file
    did, and the slices of a series repeat most of the elements medlens reads byte for byte
    (size, orientation, pixel format, UIDs). Equal bytes, VR and byte order decode to equal
    values (for the VRs of ``_REPEATED``), so each is decoded once per scan.
    """

    def __init__(self) -> None:
        from pydicom.dataelem import RawDataElement

        self._raw_type = RawDataElement
        self._decoded: dict = {}

    def get(self, ds, keyword: str, default=None):
        """``ds.get(keyword, default)``."""
        tag = _REPEATED.get(keyword)
        if tag is None:
            return ds.get(keyword, default)
        elem = ds.get_item(tag)
        if elem is None:
            return default
        if not isinstance(elem, self._raw_type):
            return elem.value
        key = (tag, elem.VR, elem.value, elem.is_implicit_VR, elem.is_little_endian)
        try:
            return self._decoded[key]
        except KeyError:
            value = self._decoded[key] = ds[tag].value
            return value


@dataclass(frozen=True)
class ScannedFile:
    """One file as a series folder scan read it: its header and its bytes, for the pixels.

    Attributes:
        dataset: the header elements medlens needs (``specific_tags``), pixel data excluded.
        data: the whole file.
        pixel_offset: where in ``data`` the header read stopped: the start of the pixel data
            element, or the end of the file when there is none.
        values: the scan's decoded header values.
        inflated: ``data`` is a deflated file rewritten uncompressed (decoders must read ``data``,
            not the file).
    """

    dataset: object
    data: bytes
    pixel_offset: int
    values: HeaderValues
    inflated: bool = False


def read_header(path: Path, keep: dict | None = None, *, values: HeaderValues | None = None) -> SliceHeader | None:
    """The header fields medlens needs; ``None`` when the file is not DICOM at all.

    A deflated data set is inflated in bounded steps (never past its declared pixel data and a
    margin); header values that are not what their element must hold are refused by name.

    Args:
        keep: when given, the whole file is read into memory once and ``keep[path]`` holds a
            :class:`ScannedFile`, so the pixels need no second read.
        values: header values already decoded for other files of the same scan (with ``keep``).

    Raises:
        ReadError: the header cannot be parsed (truncated, nested too deeply, invalid values).
        BudgetError: a deflated file declares pixels past the work budget.
    """
    from pydicom.errors import InvalidDicomError

    try:
        with quiet_pydicom():
            ds = _read_dataset(Path(path), keep, values)
    except InvalidDicomError:
        return None
    except (OSError, ValueError, EOFError, AttributeError, TypeError, KeyError, IndexError, OverflowError,
            RecursionError, NotImplementedError, UnicodeError, struct.error) as exc:
        raise ReadError(f"{path}: DICOM header could not be parsed ({type(exc).__name__}); the file may be "
                        "truncated or corrupt") from None
    if ds is None or ("SeriesInstanceUID" not in ds and "Rows" not in ds):
        return None  # not DICOM; DICOMDIR and other non-image objects
    if keep is not None:
        values = keep[Path(path)].values
    get = values.get if values is not None else lambda ds, keyword, default=None: ds.get(keyword, default)
    with quiet_pydicom():
        return _slice_header(ds, get, Path(path))


def _read_dataset(path: Path, keep: dict | None, values: HeaderValues | None):
    """The parsed header (pixels excluded); with ``keep``, also the :class:`ScannedFile`."""
    import pydicom

    with open(path, "rb", buffering=0) as f:  # unbuffered: one read of the whole file, no copies
        head = f.read(132)
        if head[128:132] != b"DICM":
            return None  # what dcmread says (InvalidDicomError), without reading a large stray file
        if keep is None:
            meta = head + f.read(1 << 16)
            if file_meta(meta)[1] != DEFLATED:
                return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        f.seek(0)
        data = f.readall()
    inflated = file_meta(data)[1] == DEFLATED
    if inflated:
        data = inflate_dataset(data, path, functools.partial(_declared_pixel_bytes, path=path))
    fp = io.BytesIO(data)
    ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_TAGS + _PIXEL_TAGS)
    if keep is not None:
        keep[path] = ScannedFile(ds, data, fp.tell(), values or HeaderValues(), inflated)
    return ds


def _declared_pixel_bytes(data: bytes, path: Path) -> int:
    """Bytes of pixel data the header at the start of an uncompressed file declares, within the budget."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_TAGS + _PIXEL_TAGS)
    get = lambda ds, keyword, default=None: ds.get(keyword, default)  # noqa: E731
    rows, columns = element_int(ds, get, "Rows", path, 0), element_int(ds, get, "Columns", path, 0)
    if not rows or not columns:
        return 0
    frames, samples, bits, _ = pixel_layout(ds, get, path, rows, columns)
    count = check_voxels((frames, samples, rows, columns), f"inflating {path.name}")
    return (count * bits + 7) // 8


def _slice_header(ds, get, path: Path) -> SliceHeader:
    position = element_floats(ds, lambda ds, k, d=None: ds.get(k, d), "ImagePositionPatient", path, 3)
    return SliceHeader(
        path=path,
        series_uid=str(get(ds, "SeriesInstanceUID", "")),
        modality=str(get(ds, "Modality", "")),
        description=str(ds.get("SeriesDescription", "")),
        rows=_size(ds, get, "Rows", path),
        columns=_size(ds, get, "Columns", path),
        position=position,
        orientation=element_floats(ds, get, "ImageOrientationPatient", path, 6),
        instance=element_int(ds, lambda ds, k, d=None: ds.get(k, d), "InstanceNumber", path),
        patient_key=patient_key(ds.get("PatientID")),
    )


def _size(ds, get, keyword: str, path: Path) -> int | None:
    """Rows / Columns: ``None`` when absent, refused when present but empty or not a positive number."""
    if keyword not in ds:
        return None
    value = element_int(ds, get, keyword, path)
    if value is None or value < 1:
        raise DicomError(f"{path}: the DICOM element {keyword} is {'empty' if value is None else value}; an image "
                         "needs 1 or more, the header is corrupt, export the file again")
    return value


def scan_folder(folder: Path, keep: dict | None = None) -> tuple[dict[str, list[SliceHeader]], list[Path]]:
    """Group the image slices under ``folder`` (recursively) by series.

    Returns:
        (series UID -> slice headers, files skipped because they are not DICOM images).
    """
    series: dict[str, list[SliceHeader]] = {}
    skipped: list[Path] = []
    values = HeaderValues() if keep is not None else None
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and not is_clutter(p.name)):
        header = read_header(path, keep, values=values)
        if header is None or not header.is_image:
            skipped.append(path)
            continue
        series.setdefault(header.series_uid, []).append(header)
    return series, skipped


def select_series(series: dict[str, list[SliceHeader]], folder: Path, series_uid: str | None) -> list[SliceHeader]:
    """The one series to read: the only one, or the one the user named.

    Args:
        series_uid: a SeriesInstanceUID, or the 1-based number of a series as the mixed-series
            message lists them ("2").

    Raises:
        DicomError: no image series, several and none named, or a name that matches none. The
            series are listed by number, modality and slice count, never by UID or description.
    """
    if not series:
        raise DicomError(f"{folder}: no DICOM image files found (non-image objects such as RTSTRUCT or SEG "
                         "are skipped); point medlens at the folder that holds the image slices")
    listed = list(series.values())
    if series_uid is not None:
        if series_uid in series:
            return series[series_uid]
        if series_uid.strip().isdigit() and 1 <= int(series_uid) <= len(listed):
            return listed[int(series_uid) - 1]
        raise DicomError(f"{folder}: no series with SeriesInstanceUID {series_uid}; found: {_describe(listed)}. "
                         f"Name one by its number (1 to {len(listed)}) or its UID")
    if len(series) > 1:
        raise DicomError(
            f"{folder} mixes {len(series)} DICOM series: {_describe(listed)}. Point medlens at one series' own "
            "folder, or name it by number or UID with series_uid= (CLI: --series 2)")
    return listed[0]


# DICOM's defined terms for Modality (PS3.3 C.7.3.1.1.1): anything else is not shown, it may be free text
_MODALITIES = {"CR", "CT", "MR", "NM", "US", "OT", "BI", "DG", "ES", "LS", "PT", "RG", "TG", "XA", "RF", "RTIMAGE",
               "HC", "DX", "MG", "IO", "PX", "GM", "SM", "XC", "OP", "IVUS", "OCT", "OPT", "AR", "BDUS", "DOC",
               "EPS", "HD", "IVOCT", "OAM", "OPM", "OPV", "OSS", "RESP", "SMR", "SRF", "STAIN", "VA", "XAPROTOCOL",
               "ECG", "CTPROTOCOL", "MRPROTOCOL", "PA", "LEN", "KER", "ASMT", "AU", "BMD", "FID", "IOL", "M3D",
               "POS", "RWV", "TEXTUREMAP", "VF", "DMS", "PLAN", "OPTBSV", "OPTENF", *NON_IMAGE_MODALITIES}


def _describe(listed: list[list[SliceHeader]]) -> str:
    return "; ".join(
        f"series {k} ({h[0].modality if h[0].modality in _MODALITIES else 'unknown modality'}, {len(h)} files)"
        for k, h in enumerate(listed, start=1))


def sort_slices(headers: list[SliceHeader], folder: Path) -> tuple[list[SliceHeader], dict]:
    """Sort slices along the slice normal and check they form an evenly spaced volume.

    Returns:
        (sorted headers, notes for ``Image.meta``).

    Raises:
        DicomError: slices of different size or orientation, two slices at one position,
            missing slices (a gap that is a multiple of the step), or uneven spacing.
    """
    _check_consistent(headers, folder)
    if any(h.position is None or h.orientation is None for h in headers):
        ordered = sorted(headers, key=lambda h: (h.instance is None, h.instance or 0, h.path.name))
        return ordered, {"slice_order": "InstanceNumber (ImagePositionPatient missing)"}
    row, col = np.array(headers[0].orientation[:3]), np.array(headers[0].orientation[3:])
    normal = np.cross(row, col)
    positions = {h.path: float(np.dot(normal, h.position)) for h in headers}
    ordered = sorted(headers, key=lambda h: positions[h.path])
    if len(ordered) > 1:
        _check_spacing([positions[h.path] for h in ordered], ordered, folder)
    return ordered, {"slice_order": "position along the slice normal"}


def _check_consistent(headers: list[SliceHeader], folder: Path) -> None:
    first = headers[0]
    for h in headers[1:]:
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise DicomError(f"{folder}: slice {h.path.name} is {h.rows}x{h.columns} but {first.path.name} is "
                             f"{first.rows}x{first.columns}; one series must have one slice size")
        if h.orientation and first.orientation and h.orientation != first.orientation \
                and not np.allclose(h.orientation, first.orientation, atol=1e-4):  # equal: the usual, cheap case
            raise DicomError(f"{folder}: slice {h.path.name} has orientation {h.orientation} but {first.path.name} "
                             f"has {first.orientation}; a tilted or mixed acquisition cannot be stacked as one volume")


def _check_spacing(positions: list[float], ordered: list[SliceHeader], folder: Path) -> None:
    steps = np.diff(positions)
    # the smallest real gap is the step: a median is pulled up by a gap in a short series
    real = steps[steps >= 1e-4]
    step = float(real.min()) if real.size else 0.0
    for i, gap in enumerate(steps):
        a, b = ordered[i].path.name, ordered[i + 1].path.name
        if gap < 1e-4:
            raise DicomError(f"{folder}: slices {a} and {b} sit at the same position ({positions[i]:.3f} mm); "
                             "the folder holds duplicates or two acquisitions, remove one")
        ratio = gap / step
        if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
            raise DicomError(f"{folder}: about {round(ratio) - 1} slice(s) missing between {a} and {b} "
                             f"(gap {gap:.3f} mm, step {step:.3f} mm); copy the complete series")
        if abs(gap - step) > SPACING_RTOL * step + 1e-3:
            raise DicomError(f"{folder}: uneven slice spacing: {gap:.3f} mm between {a} and {b}, but the step "
                             f"is {step:.3f} mm; resample the series or export it as one volume (NIfTI)")


def series_paths(folder: Path, series_uid: str | None = None) -> list[Path]:
    """The files of one series in the order :func:`read_dicom_series` stacks them: entry ``k`` is slice
    ``k`` of the image's last axis. What SEG / RTSTRUCT / SR writers reference, and readers map onto.

    Raises:
        DicomError: as :func:`read_dicom_series` (no series, several and none named, gaps, uneven spacing).
    """
    series, _ = scan_folder(Path(folder))
    ordered, _ = sort_slices(select_series(series, Path(folder), series_uid), Path(folder))
    return [h.path for h in ordered]


def series_datasets(folder: Path, series_uid: str | None = None, *, pixels: bool = False) -> list:
    """The pydicom datasets of one series, in :func:`series_paths` order (headers only unless ``pixels``)."""
    import pydicom

    with quiet_pydicom():
        return [pydicom.dcmread(p, stop_before_pixels=not pixels) for p in series_paths(folder, series_uid)]


def read_dicom_series(folder: Path, series_uid: str | None = None) -> Image:
    """Read one DICOM series from a folder into a 3D image (a 1-slice series gives 2D).

    Args:
        folder: a folder holding the slices (subfolders included).
        series_uid: which series, when the folder holds several: its SeriesInstanceUID, or its
            1-based number as the mixed-series message lists them.

    Returns:
        Image ``(1, X, Y, Z)`` in stored units after rescale (HU for CT).

    Raises:
        DicomError: mixed or inconsistent series, a slice whose header its pixel data contradicts.
        ReadError: a slice that cannot be parsed or decoded.
        BudgetError: all the slices together are past the work budget (checked before decoding).
    """
    sitk = simpleitk()
    scanned: dict = {}
    series, skipped = scan_folder(Path(folder), keep=scanned)
    ordered, notes = sort_slices(select_series(series, Path(folder), series_uid), Path(folder))
    check_series_budget([_check_pixels(scanned[h.path], h) for h in ordered], Path(folder))
    if len(ordered) == 1:
        image = _decode_file(scanned[ordered[0].path], ordered[0])
    elif (image := _stack_uncompressed(ordered, scanned)) is not None:
        image.path = Path(folder)
    else:
        with _decodable_files(ordered, scanned) as names:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(names)
            try:
                with quiet_native_stderr():
                    decoded = reader.Execute()
                image = from_sitk(decoded, path=Path(folder))
            except RuntimeError as exc:
                raise ReadError(f"{folder}: the pixel data could not be decoded ({_itk_reason(exc)}); a slice may "
                                "be truncated or use an unsupported compression") from None
    first = ordered[0]
    image.meta.update(notes, modality=first.modality, series_uid=first.series_uid, num_slices=len(ordered),
                      series_description=first.description, patient_key=first.patient_key,
                      skipped_files=len(skipped))
    return image


_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_IMPLICIT_LE, _EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_PIXEL_DATA_TAG = {False: b"\xe0\x7f\x10\x00", True: b"\x7f\xe0\x00\x10"}  # (7FE0,0010) by big-endianness


def _stack_uncompressed(ordered: list[SliceHeader], scanned: dict) -> Image | None:
    """Stack uncompressed single-channel slices from the bytes the scan already read.

    Saves SimpleITK a second parse of every file. Compressed transfer syntaxes, colour,
    multi-frame or undecodable slices return ``None``: SimpleITK's series reader takes those.
    """
    if any(h.position is None or h.orientation is None for h in ordered):
        return None
    slices, rescale = [], []
    for h in ordered:
        scan = scanned[h.path]
        ds, get = scan.dataset, scan.values.get
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax not in _UNCOMPRESSED or int(get(ds, "SamplesPerPixel", 1)) != 1 \
                or int(get(ds, "NumberOfFrames", 1) or 1) != 1 \
                or scan.data[scan.pixel_offset:scan.pixel_offset + 4] != _PIXEL_DATA_TAG[syntax == _BIG_ENDIAN]:
            return None  # no PixelData (the header read stops at Float/DoubleFloatPixelData too)
        pixels = _native_pixels(scan, h)
        if pixels is None:  # anything unusual: pydicom's own decoder, on a full read of the same bytes
            pixels = _pydicom_pixels(scan, h.path)
            if pixels is None:
                return None  # let SimpleITK decode it or explain why it cannot
        slices.append(pixels)
        rescale.append((float(get(ds, "RescaleSlope", 1) or 1), float(get(ds, "RescaleIntercept", 0) or 0)))
    first = scanned[ordered[0].path]
    spacing_rc = [float(v) for v in (first.values.get(first.dataset, "PixelSpacing") or [1.0, 1.0])]
    volume = _apply_rescale(_fill_volume(slices), rescale)  # (slices, rows, columns) = (Z, Y, X)
    row, col = np.array(ordered[0].orientation[:3]), np.array(ordered[0].orientation[3:])
    normal = np.cross(row, col)
    span = float(np.dot(normal, np.subtract(ordered[-1].position, ordered[0].position)))
    spacing = (spacing_rc[1], spacing_rc[0], span / (len(ordered) - 1))
    direction = tuple(np.stack([row, col, normal], axis=1).ravel())
    return Image(volume.transpose(2, 1, 0)[None], spacing, ordered[0].position, direction)


def _native_pixels(scan: ScannedFile, header: SliceHeader) -> tuple[np.ndarray, int] | None:
    """A little-endian slice as a read-only view on the file bytes, and its unused high bits.

    The same array ``ds.pixel_array`` gives (which also clears or sign-extends the bits above
    BitsStored: the returned shift), without pydicom's decoder machinery. ``None`` for whatever
    is not plain monochrome 8/16/32/64-bit data of exactly the expected length, or would make
    pydicom warn (an empty NumberOfFrames): the caller then asks pydicom itself.
    """
    ds, get = scan.dataset, scan.values.get
    syntax = ds.file_meta.get("TransferSyntaxUID")
    bits, stored, signed = get(ds, "BitsAllocated"), get(ds, "BitsStored"), get(ds, "PixelRepresentation")
    if syntax not in (_IMPLICIT_LE, _EXPLICIT_LE) or bits not in (8, 16, 32, 64) or signed not in (0, 1) \
            or not isinstance(stored, int) or not 1 <= stored <= bits \
            or (stored != bits and not _pydicom_corrects_unused_bits()) \
            or get(ds, "PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2") \
            or ("NumberOfFrames" in ds and get(ds, "NumberOfFrames") != 1) \
            or not 0 < header.rows < 65536 or not 0 < header.columns < 65536:
        return None
    data, at = scan.data, scan.pixel_offset
    explicit = data[at + 4:at + 6] in (b"OB", b"OW") and data[at + 6:at + 8] == b"\0\0"
    if explicit != (syntax == _EXPLICIT_LE):
        return None  # the element does not look like the transfer syntax says
    start = at + (12 if explicit else 8)
    length = int.from_bytes(data[start - 4:start], "little")
    expected = header.rows * header.columns * (bits // 8)
    if length not in (expected, expected + expected % 2) or len(data) - start < expected:
        return None  # truncated, padded or oversized: pydicom's checks and messages decide
    dtype = np.dtype(("u" if signed == 0 else "i") + str(bits // 8)).newbyteorder("<")
    pixels = np.frombuffer(data, dtype=dtype, count=header.rows * header.columns, offset=start)
    return pixels.reshape(header.rows, header.columns), bits - stored


@functools.cache
def _pydicom_corrects_unused_bits() -> bool:
    """pydicom 3 clears (or sign-extends) the bits above BitsStored in ``pixel_array``; 2.x did not."""
    import pydicom

    return int(pydicom.__version__.split(".")[0]) >= 3


def _pydicom_pixels(scan: ScannedFile, path: Path) -> tuple[np.ndarray, int] | None:
    """``ds.pixel_array`` of a full read of the file; ``None`` when pydicom cannot decode it."""
    import pydicom

    try:
        with quiet_pydicom():
            ds = pydicom.dcmread(io.BytesIO(scan.data))
    except (OSError, ValueError, EOFError, AttributeError, TypeError, KeyError, IndexError, RecursionError) as exc:
        raise ReadError(f"{path}: DICOM header could not be parsed ({type(exc).__name__}); the file may be "
                        "truncated") from None
    try:
        with quiet_pydicom():
            return ds.pixel_array, 0  # pydicom has already corrected the unused high bits
    except (ValueError, AttributeError, NotImplementedError, RuntimeError, TypeError, KeyError):
        return None


def _fill_volume(slices: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """One ``(Z, rows, columns)`` array from the slices, copied once; high bits corrected in place."""
    dtype = np.result_type(*(pixels.dtype for pixels, _ in slices))  # what np.stack would give
    volume = np.empty((len(slices), *slices[0][0].shape), dtype=dtype)
    for k, (pixels, shift) in enumerate(slices):
        if shift and pixels.dtype != dtype:  # correct in the slice's own type, then widen
            pixels = np.right_shift(np.left_shift(pixels, shift), shift)
            shift = 0
        volume[k] = pixels
        if shift:
            np.left_shift(volume[k], shift, out=volume[k])
            np.right_shift(volume[k], shift, out=volume[k])
    return volume


def _apply_rescale(stored: np.ndarray, rescale: list[tuple[float, float]]) -> np.ndarray:
    """Stored values ``(Z, rows, columns)`` to output units (HU for CT).

    int32 for integer rescales, else float32, with the same arithmetic as before, slice by slice:
    ``stored.astype(int32) * slope + intercept`` or ``(stored.astype(float64) * slope + intercept)
    .astype(float32)``, without whole-volume temporaries.
    """
    if all(r == (1.0, 0.0) for r in rescale):
        return stored
    slopes = np.array([r[0] for r in rescale])
    intercepts = np.array([r[1] for r in rescale])
    if np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)):
        out = np.empty(stored.shape, dtype=np.int32)
        np.copyto(out, stored, casting="unsafe")
        out *= slopes.astype(np.int32)[:, None, None]
        out += intercepts.astype(np.int32)[:, None, None]
        return out
    out = np.empty(stored.shape, dtype=np.float32)
    for k in range(stored.shape[0]):
        values = stored[k].astype(np.float64)
        values *= slopes[k]
        values += intercepts[k]
        out[k] = values
    return out


def read_dicom_file(path: Path) -> Image:
    """Read a single DICOM file (a 2D image, or a multi-frame volume).

    The pixel data is checked against the header (size, frames, bits, embedded codec's size) and
    the work budget before anything is decoded.

    Returns:
        Image ``(C, X, Y)`` for one frame, ``(C, X, Y, Z)`` for several.

    Raises:
        ReadError: not DICOM, no pixels, a header the data contradicts, undecodable pixels.
        BudgetError: the declared pixels are past the work budget.
    """
    scanned: dict = {}
    header = read_header(path, scanned)
    if header is None:
        raise ReadError(f"{path} is not a DICOM file (no DICM marker or readable header)")
    if not header.is_image:
        raise ReadError(f"{path} is a DICOM {_shown_modality(header.modality) or 'non-image'} object without "
                        "pixels; read the image series it refers to instead")
    scan = scanned[Path(path)]
    check_voxels(_check_pixels(scan, header), f"decoding {Path(path).name}")
    image = _decode_file(scan, header)
    image.meta.update(modality=header.modality, series_uid=header.series_uid, patient_key=header.patient_key)
    return image


def _check_pixels(scan: ScannedFile, header: SliceHeader) -> int:
    """:func:`check_pixel_data` on a scanned file; the elements its pixels decode to."""
    with quiet_pydicom():
        return check_pixel_data(scan.dataset, scan.values.get, scan.data, scan.pixel_offset, header.path,
                                header.rows, header.columns)


def _decode_file(scan: ScannedFile, header: SliceHeader) -> Image:
    """One checked file's pixels through SimpleITK (from the inflated bytes for a deflated file)."""
    path = header.path
    with _decodable_files([header], {path: scan}) as names:
        try:
            with quiet_native_stderr():
                sitk_image = simpleitk().ReadImage(names[0])
        except RuntimeError as exc:
            raise ReadError(f"{path}: the DICOM pixel data could not be decoded ({_itk_reason(exc)})") from None
    image = from_sitk(sitk_image, path=Path(path))
    if image.spatial_dims == 3 and image.spatial_shape[2] == 1:
        image = Image(image.array[..., 0], image.spacing_mm[:2], image.origin_mm[:2],
                      tuple(np.array(image.direction).reshape(3, 3)[:2, :2].ravel()), path=Path(path),
                      meta={"position_mm": image.origin_mm})
    return image


@contextlib.contextmanager
def _decodable_files(headers: list[SliceHeader], scanned: dict) -> Iterator[list[str]]:
    """File names SimpleITK can decode: the files, or for deflated ones their inflated bytes in a
    temporary folder (so GDCM never inflates a stream medlens has not bounded)."""
    if not any(scanned[h.path].inflated for h in headers):
        yield [str(h.path) for h in headers]
        return
    with tempfile.TemporaryDirectory(prefix="medlens-dicom-") as folder:
        names = []
        for k, h in enumerate(headers):
            target = Path(folder) / f"{k:06d}.dcm"
            target.write_bytes(scanned[h.path].data)
            names.append(str(target))
        yield names


def _itk_reason(exc: Exception) -> str:
    """The last line of ITK's message, with any file path in it reduced to a bare name."""
    line = (str(exc).strip().splitlines() or ["unknown error"])[-1][:200]
    return re.sub(r"(/[^\s:]*/)([^/\s:]+)", r"\2", line)


def _shown_modality(modality: str) -> str:
    return modality if modality in _MODALITIES else ""
