"""Tiny DICOM series (axial or oblique) with SEG objects written by highdicom, for the label reader tests.

The SEG writer here is highdicom's own (not medlens'), so the reader is checked against what another program wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from medlens.io.dicom import series_datasets
from medlens.io.dicom_write import write_dicom_series

OBLIQUE_DEG = (20.0, 10.0, 30.0)  # rotations about x, y, z of the slice plane


def tilted(degrees=OBLIQUE_DEG) -> np.ndarray:
    """A 3x3 rotation; its columns are the row direction, the column direction and the slice normal."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def write_series(folder: Path, shape=(24, 20, 8), *, spacing_mm=(0.8, 0.9, 2.0), oblique: bool = False,
                 patient_id: str = "P1", seed: str = "s1", origin_mm=(-10.0, 5.0, 3.0)) -> list[Path]:
    """A CT series of ``shape (X, Y, Z)`` with a blob of bright voxels; tilted slices when ``oblique``."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    volume = np.where((x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 < (min(shape[:2]) / 3) ** 2, 200.0, -100.0)
    noise = np.random.default_rng(list(seed.encode())).integers(0, 20, shape)
    volume = volume + z + noise  # slices differ, and so do series of other seeds
    paths = write_dicom_series(volume, folder, spacing_mm=spacing_mm, origin_mm=origin_mm, patient_id=patient_id,
                               uid_seed=seed)
    rotation = tilted() if oblique else np.eye(3)
    row, col, normal = rotation[:, 0], rotation[:, 1], rotation[:, 2]
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [f"{v:.8f}"[:16] for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.6f}"[:16] for v in np.asarray(origin_mm) + k * spacing_mm[2] * normal]
        # the patient / study elements a SEG or RTSTRUCT copies (type 2: present, may be empty)
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "19700101", "O", "20240101", "120000"
        ds.PatientName = f"{patient_id}^Test"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.save_as(path)
    return paths


def write_seg(series_folder: Path, segments: list[np.ndarray], names: list[str], out: Path, *,
              omit_empty_frames: bool = True, fractional: bool = False) -> Path:
    """A BINARY SEG by highdicom: one segment per bool ``(X, Y, Z)`` array (they may overlap); FRACTIONAL for
    float arrays in 0..1 when ``fractional``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = series_datasets(series_folder, pixels=True)
    pixels = np.stack([np.asarray(s).transpose(2, 1, 0) for s in segments], axis=-1)  # (Z, Y, X, S)
    pixels = pixels.astype(np.float32 if fractional else np.uint8)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=name, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Organ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, name in enumerate(names, start=1)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type="FRACTIONAL" if fractional else "BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="tests", manufacturer_model_name="tests",
        software_versions="1", device_serial_number="1", omit_empty_frames=omit_empty_frames)
    seg.save_as(out)
    return out


def ellipsoid(shape, centre, radii) -> np.ndarray:
    """bool ``shape`` (X, Y, Z): voxels inside the ellipsoid (radii in voxels)."""
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) < 1


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)
