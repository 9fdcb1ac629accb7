"""RTSTRUCT contours <-> label maps on a series' grid.

Reading (:func:`rasterise_rtstruct`, called by :func:`medlens.io.dicom_labels.read_dicom_labels`): each
CLOSED_PLANAR contour (patient mm) goes onto the slice its ContourImageSequence names when that slice is in
the series, else onto the slice whose plane it lies in; its points become continuous voxel indices with the
series' geometry and the voxels whose centres lie inside the polygon are filled. Contours of one ROI on one
slice combine even-odd (XOR): a contour inside another is a hole. POINT and OPEN_PLANAR contours enclose no
area and are skipped (``labels.not_closed``); a contour partly past the image edge is clipped
(``labels.clipped``).

Refused (DicomError): contours on slices the series folder lacks (the message says how many of the slices
the structure set references are missing), contours wholly off the image or between slices, contours not in
a slice plane, and a structure set without any contour. An ROI without contours is kept, with no voxels
(``labels.empty_roi``).

Writing (:func:`write_rtstruct`): the outline of each label on each slice is traced by contourpy at level
0.5 between voxel centres (so filling it again gives the same voxels) and written in patient mm.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medlens._files import write_atomic
from medlens.errors import DicomError
from medlens.io.dicom_checks import quiet_pydicom
from medlens.io.dicom_labels import RTSTRUCT_SOP_CLASS, SeriesGrid, assign_values, combine
from medlens.io.image import Image

PLANE_TOL = 0.5  # slices: how far (in steps) a contour may sit from the slice it is put on
DEFAULT_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
                  (255, 128, 0), (128, 0, 255), (0, 128, 255), (128, 255, 0))


def rasterise_rtstruct(path: Path, grid: SeriesGrid, names: Sequence[str] | None
                       ) -> tuple[np.ndarray, tuple[str, ...], list[dict]]:
    """An RTSTRUCT's ROIs filled on ``grid``: ``(labels (X, Y, Z) int16, names of 1..K, warnings)``.

    Raises:
        DicomError: see the module docstring.
    """
    import pydicom

    with quiet_pydicom():
        ds = pydicom.dcmread(path)
    rois = [(int(r.ROINumber), str(r.get("ROIName", "") or "").strip() or f"ROI {r.ROINumber}")
            for r in ds.get("StructureSetROISequence", [])]
    contours = {int(c.ReferencedROINumber): list(c.get("ContourSequence", []) or [])
                for c in ds.get("ROIContourSequence", []) if "ReferencedROINumber" in c}
    if not any(contours.get(number) for number, _ in rois):
        raise DicomError(f"{path}: the structure set holds no contour ({len(rois)} ROI(s), all empty); nothing to "
                         "train on, export the structures with their contours")
    values, out_names, warnings = assign_values([name for _, name in rois], names, path)
    tally = _Tally(path, grid)
    masks = []
    for (number, name), value in zip(rois, values):
        if value and not contours.get(number):
            warnings.append({"code": "labels.empty_roi", "message": f"{path.name}: ROI {name!r} has no contour"})
        if value and contours.get(number):
            masks.append((value, _fill_roi(contours[number], name, grid, tally)))
    tally.raise_if_refused(_referenced_images(ds))
    labels, overlap = combine(masks, grid.shape, path)
    return labels, out_names, warnings + _frame_warning(ds, grid, path) + tally.warnings() + overlap


def _frame_warning(ds, grid: SeriesGrid, path: Path) -> list[dict]:
    """``labels.frame_of_reference`` when the structure set names another frame of reference than the series."""
    frames = {str(f.FrameOfReferenceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])
              if "FrameOfReferenceUID" in f}
    if not frames or grid.frame_of_reference_uid is None or grid.frame_of_reference_uid in frames:
        return []
    return [{"code": "labels.frame_of_reference", "message": f"{path.name}: the structure set names another frame of "
             "reference than its series (some tools write a new one); its contours are placed by their patient "
             "coordinates as if they shared the series' frame"}]


class _Tally:
    """What went wrong (refused) or was adjusted (warned) while filling the contours of one file."""

    def __init__(self, path: Path, grid: SeriesGrid):
        self.path, self.grid = path, grid
        self.absent: dict[str, list] = {}  # ROI name -> the missing SOP instance UID of each such contour
        self.off: dict[str, int] = {}
        self.not_planar: dict[str, int] = {}
        self.clipped = self.not_closed = 0

    def add(self, kind: dict, name: str, item=1) -> None:
        if isinstance(item, int):
            kind[name] = kind.get(name, 0) + item
        else:
            kind.setdefault(name, []).append(item)

    def raise_if_refused(self, referenced: set[str]) -> None:
        path, grid = self.path, self.grid
        if self.absent:
            slices = set().union(*map(set, self.absent.values()))
            count = sum(len(v) for v in self.absent.values())
            referenced |= slices
            raise DicomError(f"{path}: {count} contour(s) of {len(self.absent)} ROI(s) ({_names(self.absent)}) lie on "
                             f"{len(slices)} slice(s) the series folder lacks: it holds {grid.shape[2]} slice(s), and "
                             f"{len(referenced - set(grid.sop_uids))} of the {len(referenced)} image(s) the structure "
                             "set references are missing; copy the complete series into the folder")
        if self.off:
            raise DicomError(f"{path}: {sum(self.off.values())} contour(s) of {_names(self.off)} lie wholly off the "
                             f"image ({grid.shape[0]} x {grid.shape[1]} voxels, {grid.shape[2]} slice(s)) or between "
                             "slices; the structure set was drawn on another series or grid, export it on this one")
        if self.not_planar:
            raise DicomError(f"{path}: {sum(self.not_planar.values())} contour(s) of {_names(self.not_planar)} do "
                             "not lie in a slice plane of the series (drawn on an oblique reformat?); export them on "
                             "the series' own slices")

    def warnings(self) -> list[dict]:
        out = []
        if self.clipped:
            out.append({"code": "labels.clipped", "message": f"{self.path.name}: {self.clipped} contour(s) reach past "
                        "the image edge; only the part on the image is filled"})
        if self.not_closed:
            out.append({"code": "labels.not_closed", "message": f"{self.path.name}: {self.not_closed} POINT or "
                        "OPEN_PLANAR contour(s) enclose no area and were skipped"})
        return out


def _names(by_name: dict) -> str:
    shown = sorted(by_name)
    return ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")


def _referenced_images(ds) -> set[str]:
    return {str(image.ReferencedSOPInstanceUID) for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
            for study in frame.get("RTReferencedStudySequence", [])
            for series in study.get("RTReferencedSeriesSequence", [])
            for image in series.get("ContourImageSequence", []) if "ReferencedSOPInstanceUID" in image}


def _fill_roi(items, name: str, grid: SeriesGrid, tally: _Tally) -> np.ndarray:
    """One ROI's contours filled even-odd, slice by slice: bool ``(X, Y, Z)``."""
    mask = np.zeros(grid.shape, bool)
    slice_of = {uid: k for k, uid in enumerate(grid.sop_uids)}
    for item in items:
        if str(item.get("ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
            tally.not_closed += 1
            continue
        points = contour_points(item, tally.path)
        if points.size < 9 or points.size % 3:
            continue  # fewer than three points: no area
        index = grid.to_index(points.reshape(-1, 3))
        k = _slice_index(item, index[:, 2], slice_of, name, tally)
        if k is None:
            continue
        filled = fill_polygon(index[:, :2], grid.shape[:2])
        if filled is None:
            tally.add(tally.off, name)
            continue
        if index[:, 0].min() < -0.5 or index[:, 1].min() < -0.5 or index[:, 0].max() > grid.shape[0] - 0.5 \
                or index[:, 1].max() > grid.shape[1] - 0.5:
            tally.clipped += 1
        window, inside = filled
        mask[window[0], window[1], k] ^= inside
    return mask


CONTOUR_DATA = 0x30060050


def contour_points(item, path: Path) -> np.ndarray:
    """A contour item's ContourData as floats ``(3N,)``; parsed from the raw text when pydicom has not yet
    decoded it (about 10x faster than a DSfloat per value on outlines of thousands of points).

    Raises:
        DicomError: values that are not numbers.
    """
    from pydicom.dataelem import RawDataElement

    raw = item.get_item(CONTOUR_DATA)
    if raw is None:
        return np.zeros(0)
    if isinstance(raw, RawDataElement) and raw.value:
        text = raw.value.decode("ascii", "replace").strip(" \0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # a text fromstring that stops early warns
            values = np.fromstring(text, sep="\\")
        if values.size == text.count("\\") + 1 and np.isfinite(values).all():
            return values
    try:
        values = np.asarray(item.ContourData or [], float)
    except (ValueError, TypeError):
        values = np.array([np.nan])
    if not np.isfinite(values).all():
        raise DicomError(f"{path}: a contour's ContourData holds values that are not numbers; the structure set is "
                         "corrupt, export it again")
    return values


def _slice_index(item, z: np.ndarray, slice_of: dict, name: str, tally: _Tally) -> int | None:
    """The slice a contour goes on (its referenced image when in the series, else its plane), or None."""
    if z.max() - z.min() > 2 * PLANE_TOL:
        tally.add(tally.not_planar, name)
        return None
    refs = [str(image.ReferencedSOPInstanceUID) for image in item.get("ContourImageSequence", [])
            if "ReferencedSOPInstanceUID" in image]
    centre = float(z.mean())
    k = slice_of[refs[0]] if refs and refs[0] in slice_of else int(round(centre))
    if 0 <= k < len(slice_of) and abs(centre - k) <= PLANE_TOL:
        return k
    if refs and refs[0] not in slice_of:
        tally.add(tally.absent, name, refs[0])
    else:
        tally.add(tally.off, name)
    return None


def fill_polygon(xy: np.ndarray, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Voxels of an ``(X, Y)`` slice whose centres lie inside the polygon ``xy`` ``(N, 2)`` (continuous indices).

    Returns:
        ``(window, inside)``: the slice's window around the polygon and bool ``inside`` of the window's shape;
        ``None`` when the polygon's bounding box misses the slice.
    """
    from matplotlib.path import Path as Polygon

    low = np.maximum(np.ceil(xy.min(axis=0) - 1e-9), 0).astype(int)
    high = np.minimum(np.floor(xy.max(axis=0) + 1e-9), np.asarray(shape) - 1).astype(int)
    if (high < low).any():
        return None
    gx, gy = np.mgrid[low[0]:high[0] + 1, low[1]:high[1] + 1]
    inside = Polygon(xy, closed=False).contains_points(np.column_stack([gx.ravel(), gy.ravel()]))
    return (slice(low[0], high[0] + 1), slice(low[1], high[1] + 1)), inside.reshape(gx.shape)


def trace_contours(binary: np.ndarray) -> list[np.ndarray]:
    """Outlines of a bool ``(X, Y)`` slice: closed polygons ``(N, 2)`` of continuous ``(x, y)`` indices, the
    first point not repeated. Traced by contourpy at level 0.5 between voxel centres; holes are polygons too."""
    import contourpy

    padded = np.pad(binary.T.astype(np.float32), 1)  # contourpy's z is (rows, columns) = (y, x)
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    lines = []
    for line in generator.lines(0.5):
        line = np.asarray(line, float) - 1.0
        if len(line) > 1 and np.allclose(line[0], line[-1]):
            line = line[:-1]
        if len(line) >= 3:
            lines.append(_drop_collinear(line))
    return lines


def _drop_collinear(line: np.ndarray) -> np.ndarray:
    """The polygon without points that lie on the straight segment between their neighbours."""
    before, after = np.roll(line, 1, axis=0), np.roll(line, -1, axis=0)
    into, out = line - before, after - line
    cross = into[:, 0] * out[:, 1] - into[:, 1] * out[:, 0]
    keep = np.abs(cross) > 1e-9
    return line[keep] if keep.sum() >= 3 else line


def write_rtstruct(mask: Image, names: Sequence[str], source: Sequence, out: str | Path, *,
                   colors: Sequence[tuple[int, int, int]] | None = None) -> Path:
    """Write the labels of ``mask`` as an RTSTRUCT referencing the series ``source``; atomically.

    Args:
        mask: Image ``(1, X, Y, Z)`` (``(1, X, Y)`` for a one-slice series) of label values on the grid of
            ``source``; value ``k`` (1..K) is structure ``names[k - 1]``.
        names: ROI names, one per label value 1..K (a value with no voxels gives an ROI without contours).
        source: the series' pydicom datasets (headers are enough) in
            :func:`~medlens.io.dicom.series_paths` order: slice ``k`` of the mask is ``source[k]``.
        out: the file to write.
        colors: RGB 0-255 per ROI; a fixed palette by default.

    Returns:
        ``out``.

    Raises:
        DicomError: a mask not on the series' grid, or no names.
    """
    grid = SeriesGrid.of_datasets(source)
    labels = _labels_on_grid(mask, grid)
    if not names:
        raise DicomError("write_rtstruct: no structure names; give one name per label value 1..K")
    ds = _structure_set(source, grid, names, colors or DEFAULT_COLORS)
    for k, roi in enumerate(ds.ROIContourSequence, start=1):
        roi.ContourSequence = _roi_contours(labels == k, grid)
        if not len(roi.ContourSequence):
            del roi.ContourSequence
    with quiet_pydicom():
        return write_atomic(out, lambda f: ds.save_as(f, enforce_file_format=True))


def _labels_on_grid(mask: Image, grid: SeriesGrid) -> np.ndarray:
    """``mask``'s values ``(X, Y, Z)`` after checking it lies on ``grid``."""
    expected = grid.image(np.zeros(grid.shape, np.int16))
    if mask.channels != 1 or not expected.same_geometry(mask):
        raise DicomError(f"write_rtstruct: the mask (array {mask.array.shape}, spacing {mask.spacing_mm}, origin "
                         f"{mask.origin_mm}) is not on the source series' grid (shape {grid.shape}, spacing "
                         f"{grid.spacing_mm}, origin {tuple(grid.origin_mm)}); resample it onto the series "
                         "(nearest neighbour) first")
    array = np.rint(np.asarray(mask.array[0])).astype(np.int64)
    return array[..., None] if array.ndim == 2 else array


def _roi_contours(binary: np.ndarray, grid: SeriesGrid) -> list:
    from pydicom.dataset import Dataset

    items = []
    for k in range(grid.shape[2]):
        if not binary[:, :, k].any():
            continue
        for line in trace_contours(binary[:, :, k]):
            points = grid.to_mm(np.column_stack([line, np.full(len(line), k)]))
            item = Dataset()
            item.ContourImageSequence = [_image_reference(grid.datasets[k])]
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourNumber = len(items) + 1
            _set_contour_data(item, points.ravel())
            items.append(item)
    return items


def _set_contour_data(item, values: np.ndarray) -> None:
    """ContourData as one raw DS text: pydicom writes it as is, instead of validating a DSfloat per value."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    text = "\\".join(f"{v:.4f}"[:16] for v in values).encode("ascii")
    text += b" " * (len(text) % 2)  # DICOM values have an even length
    tag = Tag(CONTOUR_DATA)
    item[tag] = RawDataElement(tag, "DS", len(text), text, 0, True, True)


def _image_reference(source):
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return ref


_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                  "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _structure_set(source: Sequence, grid: SeriesGrid, names: Sequence[str], colors):
    """The RTSTRUCT data set without contours: patient and study copied from ``source``, new UIDs."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian, generate_uid

    first = source[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    # implicit VR: its 4-byte lengths hold the ContourData of a long outline; explicit VR caps a DS at 64 KiB
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 192") or "ISO_IR 192"
    now = datetime.datetime.now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    for keyword in _PATIENT_STUDY:
        setattr(ds, keyword, first.get(keyword, "") or "")
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 901
    ds.SeriesDescription, ds.OperatorsName = "medlens structures", ""
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "medlens", "medlens", _version()
    ds.StructureSetLabel, ds.StructureSetName = "medlens", "medlens structures"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    frame_uid = grid.frame_of_reference_uid or generate_uid()
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "") or ""
    ds.ReferencedFrameOfReferenceSequence = [_frame_reference(source, frame_uid)]
    ds.StructureSetROISequence = [_roi(k, name, frame_uid) for k, name in enumerate(names, start=1)]
    ds.ROIContourSequence = [_roi_contour(k, colors[(k - 1) % len(colors)]) for k in range(1, len(names) + 1)]
    ds.RTROIObservationsSequence = [_observation(k) for k in range(1, len(names) + 1)]
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _frame_reference(source: Sequence, frame_uid: str):
    from pydicom.dataset import Dataset

    series = Dataset()
    series.SeriesInstanceUID = source[0].SeriesInstanceUID
    series.ContourImageSequence = [_image_reference(s) for s in source]
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, as PS3.3 C.8.8.5 asks
    study.ReferencedSOPInstanceUID = source[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = [study]
    return frame


def _roi(number: int, name: str, frame_uid: str):
    from pydicom.dataset import Dataset

    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, frame_uid
    roi.ROIName, roi.ROIGenerationAlgorithm = str(name)[:64], "AUTOMATIC"
    return roi


def _roi_contour(number: int, color):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = [int(c) for c in color]
    return item


def _observation(number: int):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ObservationNumber, item.ReferencedROINumber = number, number
    item.RTROIInterpretedType, item.ROIInterpreter = "ORGAN", ""
    return item


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medlens")
    except PackageNotFoundError:
        return "unknown"
