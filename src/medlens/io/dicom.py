"""DICOM: single files and series folders.

pydicom reads the headers to group files by ``SeriesInstanceUID``, sort slices along the slice
normal and check the spacing. Uncompressed slices are then stacked straight from the bytes the
scan already read; SimpleITK reads compressed series (it decodes them and applies
RescaleSlope/Intercept, so CT comes out in HU).
Patient identifiers never leave this module: only a one-way ``patient_key`` does.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.errors import DicomError, ReadError
from medlens.io.image import Image, from_sitk

_TAGS = ["SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
         "Rows", "Columns", "Modality", "SeriesDescription", "PatientID", "InstanceNumber",
         "NumberOfFrames", "SliceThickness", "SeriesNumber"]
# what a series folder scan also needs to stack uncompressed pixels without a second read
_PIXEL_TAGS = ["SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
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
    """

    dataset: object
    data: bytes
    pixel_offset: int
    values: HeaderValues


def read_header(path: Path, keep: dict | None = None, *, values: HeaderValues | None = None) -> SliceHeader | None:
    """The header fields medlens needs; ``None`` when the file is not DICOM at all.

    Args:
        keep: when given, the whole file is read into memory once and ``keep[path]`` holds a
            :class:`ScannedFile`, so the pixels need no second read.
        values: header values already decoded for other files of the same scan (with ``keep``).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        if keep is None:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        else:
            with open(path, "rb", buffering=0) as f:  # unbuffered: one read of the whole file, no copies
                if f.read(132)[128:132] != b"DICM":
                    return None  # what dcmread says (InvalidDicomError), without reading a large stray file
                f.seek(0)
                data = f.readall()
            fp = io.BytesIO(data)
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_TAGS + _PIXEL_TAGS)
            values = values or HeaderValues()
            keep[Path(path)] = ScannedFile(ds, data, fp.tell(), values)
    except InvalidDicomError:
        return None
    except (OSError, ValueError, EOFError, AttributeError, TypeError) as exc:
        raise ReadError(f"{path}: DICOM header could not be parsed ({exc}); the file may be truncated") from None
    if "SeriesInstanceUID" not in ds and "Rows" not in ds:
        return None  # DICOMDIR and other non-image objects
    get = values.get if values is not None else lambda ds, keyword, default=None: ds.get(keyword, default)
    position = ds.get("ImagePositionPatient")
    orientation = get(ds, "ImageOrientationPatient")
    return SliceHeader(
        path=Path(path),
        series_uid=str(get(ds, "SeriesInstanceUID", "")),
        modality=str(get(ds, "Modality", "")),
        description=str(ds.get("SeriesDescription", "")),
        rows=int(get(ds, "Rows")) if "Rows" in ds else None,
        columns=int(get(ds, "Columns")) if "Columns" in ds else None,
        position=tuple(float(v) for v in position) if position is not None and len(position) == 3 else None,
        orientation=tuple(float(v) for v in orientation) if orientation is not None and len(orientation) == 6 else None,
        instance=int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
        patient_key=patient_key(ds.get("PatientID")),
    )


def scan_folder(folder: Path, keep: dict | None = None) -> tuple[dict[str, list[SliceHeader]], list[Path]]:
    """Group the image slices under ``folder`` (recursively) by series.

    Returns:
        (series UID -> slice headers, files skipped because they are not DICOM images).
    """
    series: dict[str, list[SliceHeader]] = {}
    skipped: list[Path] = []
    values = HeaderValues() if keep is not None else None
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith(".")):
        header = read_header(path, keep, values=values)
        if header is None or not header.is_image:
            skipped.append(path)
            continue
        series.setdefault(header.series_uid, []).append(header)
    return series, skipped


def select_series(series: dict[str, list[SliceHeader]], folder: Path, series_uid: str | None) -> list[SliceHeader]:
    """The one series to read: the only one, or the one the user named."""
    if not series:
        raise DicomError(f"{folder}: no DICOM image files found (non-image objects such as RTSTRUCT or SEG "
                         "are skipped); point medlens at the folder that holds the image slices")
    if series_uid is not None:
        if series_uid not in series:
            raise DicomError(f"{folder}: no series with SeriesInstanceUID {series_uid}; found: "
                             + "; ".join(_describe(uid, s) for uid, s in series.items()))
        return series[series_uid]
    if len(series) > 1:
        raise DicomError(
            f"{folder} mixes {len(series)} DICOM series: " + "; ".join(_describe(uid, s) for uid, s in series.items())
            + ". Point medlens at one series' own folder, or name it with series_uid= (CLI: --series UID)")
    return next(iter(series.values()))


def _describe(uid: str, headers: list[SliceHeader]) -> str:
    first = headers[0]
    return f"{uid} ({first.modality} '{first.description}', {len(headers)} files, e.g. {first.path.name})"


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


def read_dicom_series(folder: Path, series_uid: str | None = None) -> Image:
    """Read one DICOM series from a folder into a 3D image (a 1-slice series gives 2D).

    Args:
        folder: a folder holding the slices (subfolders included).
        series_uid: which series, when the folder holds several.

    Returns:
        Image ``(1, X, Y, Z)`` in stored units after rescale (HU for CT).
    """
    import SimpleITK as sitk

    scanned: dict = {}
    series, skipped = scan_folder(Path(folder), keep=scanned)
    ordered, notes = sort_slices(select_series(series, Path(folder), series_uid), Path(folder))
    if len(ordered) == 1:
        image = read_dicom_file(ordered[0].path)
    elif (image := _stack_uncompressed(ordered, scanned)) is not None:
        image.path = Path(folder)
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(h.path) for h in ordered])
        try:
            image = from_sitk(reader.Execute(), path=Path(folder))
        except RuntimeError as exc:
            raise ReadError(f"{folder}: the pixel data could not be decoded ({str(exc).splitlines()[-1][:200]}); "
                            "a slice may be truncated or use an unsupported compression") from None
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
        ds = pydicom.dcmread(io.BytesIO(scan.data))
    except (OSError, ValueError, EOFError, AttributeError, TypeError) as exc:
        raise ReadError(f"{path}: DICOM header could not be parsed ({exc}); the file may be truncated") from None
    try:
        return ds.pixel_array, 0  # pydicom has already corrected the unused high bits
    except (ValueError, AttributeError, NotImplementedError, RuntimeError):
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

    Returns:
        Image ``(C, X, Y)`` for one frame, ``(C, X, Y, Z)`` for several.
    """
    import SimpleITK as sitk

    header = read_header(path)
    if header is None:
        raise ReadError(f"{path} is not a DICOM file (no DICM marker or readable header)")
    if not header.is_image:
        raise ReadError(f"{path} is a DICOM {header.modality or 'non-image'} object without pixels; "
                        "read the image series it refers to instead")
    try:
        sitk_image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).splitlines()[-1][:200]
        raise ReadError(f"{path}: the DICOM pixel data could not be decoded ({reason})") from None
    image = from_sitk(sitk_image, path=Path(path))
    if image.spatial_dims == 3 and image.spatial_shape[2] == 1:
        image = Image(image.array[..., 0], image.spacing_mm[:2], image.origin_mm[:2],
                      tuple(np.array(image.direction).reshape(3, 3)[:2, :2].ravel()), path=Path(path),
                      meta={"position_mm": image.origin_mm})
    image.meta.update(modality=header.modality, series_uid=header.series_uid, patient_key=header.patient_key)
    return image
