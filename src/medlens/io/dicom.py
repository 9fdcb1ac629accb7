"""DICOM: single files and series folders.

pydicom reads the headers to group files by ``SeriesInstanceUID``, sort slices along the slice
normal and check the spacing; SimpleITK then reads the pixels of the sorted files (it decodes
compressed transfer syntaxes and applies RescaleSlope/Intercept, so CT comes out in HU).
Patient identifiers never leave this module: only a one-way ``patient_key`` does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.errors import DicomError, ReadError
from medlens.io.image import Image, from_sitk

_TAGS = ["SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
         "Rows", "Columns", "Modality", "SeriesDescription", "PatientID", "InstanceNumber",
         "NumberOfFrames", "SliceThickness", "SeriesNumber"]
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


def read_header(path: Path, keep: dict | None = None) -> SliceHeader | None:
    """The header fields medlens needs; ``None`` when the file is not DICOM at all.

    Args:
        keep: when given, the file is read whole (pixels included) and its dataset stored in
            ``keep[path]``, so the pixels need no second read.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        if keep is None:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        else:
            ds = keep[Path(path)] = pydicom.dcmread(path)
    except InvalidDicomError:
        return None
    except (OSError, ValueError, EOFError, AttributeError, TypeError) as exc:
        raise ReadError(f"{path}: DICOM header could not be parsed ({exc}); the file may be truncated") from None
    if "SeriesInstanceUID" not in ds and "Rows" not in ds:
        return None  # DICOMDIR and other non-image objects
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    return SliceHeader(
        path=Path(path),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        description=str(ds.get("SeriesDescription", "")),
        rows=int(ds.Rows) if "Rows" in ds else None,
        columns=int(ds.Columns) if "Columns" in ds else None,
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
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith(".")):
        header = read_header(path, keep)
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
        if h.orientation and first.orientation and not np.allclose(h.orientation, first.orientation, atol=1e-4):
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

    datasets: dict = {}
    series, skipped = scan_folder(Path(folder), keep=datasets)
    ordered, notes = sort_slices(select_series(series, Path(folder), series_uid), Path(folder))
    if len(ordered) == 1:
        image = read_dicom_file(ordered[0].path)
    elif (image := _stack_uncompressed(ordered, datasets)) is not None:
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


def _stack_uncompressed(ordered: list[SliceHeader], datasets: dict) -> Image | None:
    """Stack uncompressed single-channel slices from the datasets the scan already read.

    Saves SimpleITK a second parse of every file. Compressed transfer syntaxes, colour,
    multi-frame or undecodable slices return ``None``: SimpleITK's series reader takes those.
    """
    if any(h.position is None or h.orientation is None for h in ordered):
        return None
    slices, rescale = [], []
    for h in ordered:
        ds = datasets[h.path]
        if ds.file_meta.get("TransferSyntaxUID") not in _UNCOMPRESSED or int(ds.get("SamplesPerPixel", 1)) != 1 \
                or int(ds.get("NumberOfFrames", 1) or 1) != 1 or "PixelData" not in ds:
            return None
        try:
            slices.append(ds.pixel_array)
        except (ValueError, AttributeError, NotImplementedError, RuntimeError):
            return None  # let SimpleITK decode it or explain why it cannot
        rescale.append((float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)))
    spacing_rc = [float(v) for v in (datasets[ordered[0].path].get("PixelSpacing") or [1.0, 1.0])]
    volume = _apply_rescale(np.stack(slices, axis=-1), rescale)  # (rows, columns, slices) = (Y, X, Z)
    row, col = np.array(ordered[0].orientation[:3]), np.array(ordered[0].orientation[3:])
    normal = np.cross(row, col)
    span = float(np.dot(normal, np.subtract(ordered[-1].position, ordered[0].position)))
    spacing = (spacing_rc[1], spacing_rc[0], span / (len(ordered) - 1))
    direction = tuple(np.stack([row, col, normal], axis=1).ravel())
    return Image(volume.transpose(1, 0, 2)[None], spacing, ordered[0].position, direction)


def _apply_rescale(stored: np.ndarray, rescale: list[tuple[float, float]]) -> np.ndarray:
    """Stored values to output units (HU for CT): int32 for integer rescales, else float32."""
    if all(r == (1.0, 0.0) for r in rescale):
        return stored
    slopes = np.array([r[0] for r in rescale])
    intercepts = np.array([r[1] for r in rescale])
    if np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)):
        return stored.astype(np.int32) * slopes.astype(np.int32) + intercepts.astype(np.int32)
    return (stored.astype(np.float64) * slopes + intercepts).astype(np.float32)


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
        raise ReadError(f"{path}: the DICOM pixel data could not be decoded ({str(exc).splitlines()[-1][:200]})") from None
    image = from_sitk(sitk_image, path=Path(path))
    if image.spatial_dims == 3 and image.spatial_shape[2] == 1:
        image = Image(image.array[..., 0], image.spacing_mm[:2], image.origin_mm[:2],
                      tuple(np.array(image.direction).reshape(3, 3)[:2, :2].ravel()), path=Path(path),
                      meta={"position_mm": image.origin_mm})
    image.meta.update(modality=header.modality, series_uid=header.series_uid, patient_key=header.patient_key)
    return image
