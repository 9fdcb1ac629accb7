"""DICOM label objects (SEG, RTSTRUCT) as label maps on the grid of the series they annotate.

``read_dicom_labels(label_file, series_folder)`` gives a mask ``(1, X, Y, Z)`` int16 on the grid
``read_image(series_folder, series_uid=referenced)`` gives (``(1, X, Y)`` for a one-slice series), values
``1..K`` for the structures, 0 for background. Structures that overlap are resolved by order: a later
structure (in ``names`` order, else the file's) wins the voxels it shares with an earlier one (the higher
value is painted last), and
``meta["read_warnings"]`` says how many voxels that took (code ``labels.overlap``).

SEG objects are read by highdicom. Frames are placed by their source instance when every frame names a
slice of the series and sits on it (exact, and frames for only some slices are fine); otherwise by their
plane positions (highdicom's volume, matched to the series grid by permuting, flipping, padding and
cropping, or resampled nearest-neighbour onto it when the grids differ: ``labels.resampled``).
RTSTRUCT contours are rasterised by :mod:`medlens.io.rtstruct`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.budget import check_voxels
from medlens.errors import DicomError, ReadError
from medlens.io.dicom import series_datasets
from medlens.io.dicom_checks import quiet_pydicom
from medlens.io.image import Image

SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}  # Segmentation, Label Map
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
# how far (mm) a SEG frame may sit from the slice it names before it is placed by geometry instead
POSITION_TOL_MM = 0.01


@dataclass(frozen=True)
class SeriesGrid:
    """The voxel grid of one DICOM series, from its headers (no pixels read).

    Index ``(x, y, z)`` = (column, row, slice in :func:`~medlens.io.dicom.series_paths` order), as
    :class:`~medlens.io.Image` orders axes; ``point_mm = origin + direction @ (index * spacing)``.
    """

    datasets: list
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: np.ndarray
    direction: np.ndarray  # (3, 3), columns: row direction (x), column direction (y), slice normal (z)

    @classmethod
    def of_series(cls, folder: Path, series_uid: str | None) -> SeriesGrid:
        """The grid of the series ``series_uid`` under ``folder`` (DicomError as :func:`series_datasets`)."""
        return cls.of_datasets(series_datasets(folder, series_uid), where=str(folder))

    @classmethod
    def of_datasets(cls, datasets: Sequence, where: str = "the source series") -> SeriesGrid:
        """The grid of ``datasets``, one per slice in series order (headers are enough).

        Raises:
            DicomError: no slice, or slices without ImagePositionPatient / ImageOrientationPatient / PixelSpacing.
        """
        if not datasets:
            raise DicomError(f"{where}: no image slices; labels need the series they annotate")
        if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
            raise DicomError(f"{where}: the series is one multi-frame (enhanced) file; medlens places labels on "
                             "series of one file per slice, export the series that way")
        lacking = [k for k, ds in enumerate(datasets) if not all(
            key in ds for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))]
        if lacking:
            raise DicomError(f"{where}: {len(lacking)} slice(s) lack ImagePositionPatient, ImageOrientationPatient or "
                             "PixelSpacing, so labels in patient coordinates cannot be placed on them; export the "
                             "series with its geometry")
        first = datasets[0]
        orientation = np.array(first.ImageOrientationPatient, float)
        row, col = orientation[:3], orientation[3:]
        normal = np.cross(row, col)
        positions = np.array([ds.ImagePositionPatient for ds in datasets], float)
        if len(datasets) > 1:
            step = float(np.dot(normal, positions[-1] - positions[0])) / (len(datasets) - 1)
        else:
            step = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        spacing = (float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), step)
        return cls(list(datasets), (int(first.Columns), int(first.Rows), len(datasets)), spacing, positions[0],
                   np.stack([row, col, normal], axis=1))

    @property
    def sop_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    @property
    def frame_of_reference_uid(self) -> str | None:
        return self.datasets[0].get("FrameOfReferenceUID")

    def to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """``(N, 3)`` patient mm -> ``(N, 3)`` continuous ``(x, y, z)`` indices."""
        scaled = np.linalg.solve(self.direction, (np.asarray(points_mm, float) - self.origin_mm).T).T
        return scaled / np.asarray(self.spacing_mm)

    def to_mm(self, index: np.ndarray) -> np.ndarray:
        """``(N, 3)`` continuous ``(x, y, z)`` indices -> ``(N, 3)`` patient mm."""
        return self.origin_mm + (np.asarray(index, float) * np.asarray(self.spacing_mm)) @ self.direction.T

    def image(self, labels: np.ndarray, meta: dict | None = None) -> Image:
        """``labels (X, Y, Z)`` as an Image on this grid; 2D ``(1, X, Y)`` for a one-slice series, as
        :func:`~medlens.io.read_image` reads one."""
        if self.shape[2] == 1:
            return Image(labels[None, :, :, 0], self.spacing_mm[:2], self.origin_mm[:2],
                         tuple(self.direction[:2, :2].ravel()), meta={"position_mm": tuple(self.origin_mm),
                                                                       **(meta or {})})
        return Image(labels[None], self.spacing_mm, tuple(self.origin_mm), tuple(self.direction.ravel()),
                     meta=dict(meta or {}))


def label_kind(path: str | os.PathLike) -> str | None:
    """``"SEG"``, ``"RTSTRUCT"`` or ``None``, from the file meta alone (cheap: reads the first few hundred bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if head[128:132] != b"DICM":
        return None
    found = _UID.search(head[132:])  # the first storage class in the file meta: MediaStorageSOPClassUID
    uid = found.group().decode() if found else ""
    return "SEG" if uid in SEG_SOP_CLASSES else "RTSTRUCT" if uid == RTSTRUCT_SOP_CLASS else None


_UID = re.compile(rb"1\.2\.840\.10008\.5\.1\.4\.1\.1\.[0-9.]+")  # storage SOP class UIDs in the file meta


def read_label_header(path: Path):
    """The label object's header (pixels excluded).

    Raises:
        ReadError: not a DICOM SEG or RTSTRUCT.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with quiet_pydicom():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, TypeError, KeyError) as exc:
        raise ReadError(f"{path}: not a readable DICOM file ({type(exc).__name__}); expected a DICOM SEG or "
                        "RTSTRUCT object") from None
    if str(ds.get("SOPClassUID", "")) not in SEG_SOP_CLASSES | {RTSTRUCT_SOP_CLASS}:
        raise ReadError(f"{path}: a DICOM {ds.get('Modality', 'object')} (SOP class {ds.get('SOPClassUID', '?')}), "
                        "not a SEG or RTSTRUCT; point medlens at the segmentation or structure set file")
    return ds


def referenced_series_uid(label_file: str | os.PathLike) -> str:
    """The SeriesInstanceUID of the image series a SEG or RTSTRUCT annotates.

    Raises:
        ReadError: not a SEG / RTSTRUCT.
        DicomError: the object names no series (or, for a SEG, several).
    """
    path = Path(label_file)
    return series_referenced_by(read_label_header(path), path)


def series_referenced_by(ds, path: Path) -> str:
    """:func:`referenced_series_uid` of a label object's header already read."""
    if ds.SOPClassUID == RTSTRUCT_SOP_CLASS:
        uids = [str(series.SeriesInstanceUID) for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
                for study in frame.get("RTReferencedStudySequence", [])
                for series in study.get("RTReferencedSeriesSequence", []) if "SeriesInstanceUID" in series]
        where = "ReferencedFrameOfReferenceSequence > RTReferencedStudySequence > RTReferencedSeriesSequence"
    else:
        uids = [str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in s]
        where = "ReferencedSeriesSequence"
    uids = list(dict.fromkeys(uids))
    if not uids:
        raise DicomError(f"{path}: the {ds.Modality} names no referenced image series ({where} is missing or empty), "
                         "so medlens cannot tell which series it annotates; export it again from the viewer with its "
                         "image references")
    if len(uids) > 1 and ds.SOPClassUID != RTSTRUCT_SOP_CLASS:
        raise DicomError(f"{path}: the SEG references {len(uids)} image series; medlens reads a SEG made on one series")
    return uids[0]


def read_dicom_labels(label_file: str | os.PathLike, series_folder: str | os.PathLike, *,
                      names: Sequence[str] | None = None) -> tuple[Image, tuple[str, ...]]:
    """A SEG or RTSTRUCT as a label map on the grid of the series it references.

    Args:
        label_file: the SEG or RTSTRUCT file.
        series_folder: a folder holding the referenced series (other series and files may sit beside it).
        names: structure names for values 1..K (matched to segment labels / ROI names ignoring case and
            surrounding spaces); structures of the file not named are left out (``labels.dropped`` warning), a
            name the file lacks simply has no voxels. ``None``: every structure, in the file's order (ROIs or
            segments sharing one name share one value).

    Returns:
        ``(mask, names)``: mask Image ``(1, X, Y, Z)`` int16 (``(1, X, Y)`` for a one-slice series) on the
        series' grid, ``meta`` with ``series_uid``, ``label_kind`` and ``read_warnings``; the names of values 1..K.

    Raises:
        ReadError: not a SEG / RTSTRUCT.
        DicomError: the referenced series is not in ``series_folder``; a SEG on another frame of reference;
            RTSTRUCT contours on slices the folder lacks, off the image or between slices; no structure at all.
    """
    path, folder = Path(label_file), Path(series_folder)
    header = read_label_header(path)
    uid = series_referenced_by(header, path)
    grid = _grid_or_explain(path, folder, uid, header.Modality)
    if header.SOPClassUID == RTSTRUCT_SOP_CLASS:
        from medlens.io.rtstruct import rasterise_rtstruct

        labels, out_names, warnings = rasterise_rtstruct(path, grid, names)
    else:
        labels, out_names, warnings = _read_seg(path, grid, names)
    meta = {"series_uid": uid, "label_kind": str(header.Modality), "label_names": list(out_names),
            "read_warnings": warnings}
    image = grid.image(labels, meta)
    image.path = path
    return image, out_names


def _grid_or_explain(path: Path, folder: Path, uid: str, modality: str) -> SeriesGrid:
    """The referenced series' grid; one scan of ``folder`` (what :func:`series_datasets` does, plus the why)."""
    import pydicom

    from medlens.io.dicom import scan_folder, sort_slices

    if not folder.is_dir():
        raise FileNotFoundError(f"no such series folder: {folder}")
    series, _ = scan_folder(folder)
    if uid not in series:
        raise DicomError(f"{path}: the {modality} annotates a series that is not in {folder} (the folder holds "
                         f"{len(series)} image series, none with the referenced SeriesInstanceUID); copy the "
                         "referenced series into the folder, or point medlens at the folder that holds it")
    ordered, _ = sort_slices(series[uid], folder)
    with quiet_pydicom():
        datasets = [pydicom.dcmread(h.path, stop_before_pixels=True) for h in ordered]
    return SeriesGrid.of_datasets(datasets, where=str(folder))


def assign_values(file_names: Sequence[str], names: Sequence[str] | None, path: Path
                  ) -> tuple[list[int], tuple[str, ...], list[dict]]:
    """Label values for the file's structures (0 = left out), the names of values 1..K, warnings.

    Raises:
        DicomError: ``names`` given twice the same (a value each would be ambiguous).
    """
    key = lambda n: str(n).strip().casefold()  # noqa: E731
    if names is None:
        out = list(dict.fromkeys(file_names))
        return [out.index(n) + 1 for n in file_names], tuple(out), []
    wanted = [key(n) for n in names]
    if len(set(wanted)) != len(wanted):
        raise DicomError(f"{path}: the names asked for repeat one ({list(names)}); give each structure once")
    values = [wanted.index(key(n)) + 1 if key(n) in wanted else 0 for n in file_names]
    dropped = sorted({n for n, v in zip(file_names, values) if v == 0})
    warnings = [{"code": "labels.dropped", "message": f"{path.name}: structure(s) {', '.join(dropped)} are not among "
                 f"the names asked for and were left out"}] if dropped else []
    return values, tuple(names), warnings


def combine(masks: Sequence[tuple[int, np.ndarray]], shape: tuple[int, int, int], path: Path
            ) -> tuple[np.ndarray, list[dict]]:
    """``(value, bool (X, Y, Z))`` pairs painted by increasing value into one int16 label map: where structures
    overlap, the higher value (the later name) wins."""
    labels = np.zeros(shape, np.int16)
    overlap = 0
    for value, hit in sorted(masks, key=lambda pair: pair[0]):
        if value:
            overlap += int(np.count_nonzero(hit & (labels > 0) & (labels != value)))
            labels[hit] = value
    warnings = [{"code": "labels.overlap", "message": f"{path.name}: structures overlap on {overlap} voxel(s); each "
                 "such voxel takes the later structure's value"}] if overlap else []
    return labels, warnings


def _read_seg(path: Path, grid: SeriesGrid, names: Sequence[str] | None
              ) -> tuple[np.ndarray, tuple[str, ...], list[dict]]:
    """A SEG's segments painted on ``grid``: ``(labels (X, Y, Z) int16, names, warnings)``."""
    import highdicom as hd

    try:
        with quiet_pydicom():
            seg = hd.seg.segread(path)
    except (ValueError, AttributeError, KeyError, TypeError, NotImplementedError) as exc:
        raise DicomError(f"{path}: highdicom cannot read this SEG ({type(exc).__name__}: {str(exc)[:200]}); "
                         "export it again") from None
    _check_frame_of_reference(path, seg, grid)
    segments = [(int(s.SegmentNumber), str(s.get("SegmentLabel", "") or f"segment {s.SegmentNumber}"))
                for s in seg.SegmentSequence]
    values, out_names, warnings = assign_values([n for _, n in segments], names, path)
    check_voxels((int(seg.get("NumberOfFrames", 1) or 1), int(seg.Rows), int(seg.Columns)), f"decoding {path.name}")
    fractional = str(seg.SegmentationType) == "FRACTIONAL"
    threshold = int(seg.get("MaximumFractionalValue", 255)) / 2 if fractional else 0
    masks, how = [], "source"
    for (number, _), value in zip(segments, values):
        if value:  # one segment at a time: a SEG of many segments never holds them all in memory at once
            pixels, how = _seg_channel(seg, grid, number, path)  # (X, Y, Z)
            masks.append((value, pixels > threshold))
    labels, overlap = combine(masks, grid.shape, path)
    if how == "resampled":
        warnings.append({"code": "labels.resampled", "message": f"{path.name}: the SEG's frames are on another grid "
                         "than the series; resampled onto it (nearest neighbour)"})
    return labels, out_names, warnings + overlap


def _check_frame_of_reference(path: Path, seg, grid: SeriesGrid) -> None:
    own, series = seg.get("FrameOfReferenceUID"), grid.frame_of_reference_uid
    if own and series and own != series:
        raise DicomError(f"{path}: the SEG is in another frame of reference than the series it references, so its "
                         "positions cannot be compared with the slices'; export it again on that series")


def _seg_channel(seg, grid: SeriesGrid, number: int, path: Path) -> tuple[np.ndarray, str]:
    """One segment's stored values on ``grid``: ``((X, Y, Z) uint8, how)``, ``how`` in source / geometry / resampled."""
    options = {"segment_numbers": [number], "rescale_fractional": False, "dtype": np.uint8}
    if _frames_sit_on_their_sources(seg, grid):
        # positions checked above, so highdicom's refusal to index non-"spatially preserved" frames does not apply
        pixels = seg.get_pixels_by_source_instance(grid.sop_uids, ignore_spatial_locations=True, **options)
        return pixels[..., 0].transpose(2, 1, 0), "source"
    from highdicom.volume import VolumeGeometry

    try:
        volume = seg.get_volume(combine_segments=False, **options)
    except (RuntimeError, ValueError) as exc:
        raise DicomError(f"{path}: the SEG's frames neither name slices of the series nor form a regular volume "
                         f"({str(exc)[:200]}); export it again on the series") from None
    target = VolumeGeometry(_hd_affine(grid), grid.shape[::-1], "PATIENT", grid.frame_of_reference_uid)
    try:
        matched = volume.match_geometry(target)  # permute, flip, pad, crop or subsample: no interpolation
        return np.asarray(matched.array)[..., 0].transpose(2, 1, 0), "geometry"
    except RuntimeError:
        return _resample(volume, grid), "resampled"


def _frames_sit_on_their_sources(seg, grid: SeriesGrid) -> bool:
    """Every frame names one slice of the series, has its size and orientation, and lies at its position."""
    if (int(seg.Rows), int(seg.Columns)) != (grid.shape[1], grid.shape[0]):
        return False
    index = {uid: k for k, uid in enumerate(grid.sop_uids)}
    positions = np.array([ds.ImagePositionPatient for ds in grid.datasets], float)
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    for frame in seg.get("PerFrameFunctionalGroupsSequence", []):
        sources = [s.ReferencedSOPInstanceUID for d in frame.get("DerivationImageSequence", [])
                   for s in d.get("SourceImageSequence", [])]
        if len(sources) != 1 or sources[0] not in index:
            return False
        plane = _functional(frame, shared, "PlanePositionSequence")
        orientation = _functional(frame, shared, "PlaneOrientationSequence")
        if plane is None or not np.allclose(plane.ImagePositionPatient, positions[index[sources[0]]],
                                            atol=POSITION_TOL_MM):
            return False
        if orientation is not None and not np.allclose(orientation.ImageOrientationPatient,
                                                       grid.datasets[0].ImageOrientationPatient, atol=1e-4):
            return False
    return "PerFrameFunctionalGroupsSequence" in seg


def _functional(frame, shared, keyword: str):
    for group in (frame, shared):
        if group is not None and keyword in group and len(group[keyword].value):
            return group[keyword].value[0]
    return None


def _hd_affine(grid: SeriesGrid) -> np.ndarray:
    """highdicom's affine: indices ``(slice, row, column)`` -> patient mm."""
    affine = np.eye(4)
    sx, sy, sz = grid.spacing_mm
    affine[:3, 0] = grid.direction[:, 2] * sz
    affine[:3, 1] = grid.direction[:, 1] * sy
    affine[:3, 2] = grid.direction[:, 0] * sx
    affine[:3, 3] = grid.origin_mm
    return affine


def _resample(volume, grid: SeriesGrid) -> np.ndarray:
    """A one-channel highdicom volume resampled nearest-neighbour onto ``grid``: ``(X, Y, Z)``."""
    from medlens.io.image import simpleitk, to_sitk

    sitk = simpleitk()
    reference = to_sitk(Image(np.zeros((1, *grid.shape), np.uint8), grid.spacing_mm, tuple(grid.origin_mm),
                              tuple(grid.direction.ravel())))
    moving = volume.with_array(np.asarray(volume.array)[..., 0]).to_simpleitk()
    moved = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    return sitk.GetArrayFromImage(moved).T
