"""write_rtstruct (contourpy outlines -> RTSTRUCT) and reading it back, on an oblique series.

Tolerance of the round trip mask -> RTSTRUCT -> mask: exact (every voxel equal). Outlines are traced at level
0.5 between voxel centres, so no voxel centre lies on a contour and filling the polygons again gives the same
voxels; the tests hold this on smooth shapes, holes, diagonal neighbours and random noise (many saddles).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medlens.errors import DicomError
from medlens.io import read_image
from medlens.io.dicom import series_datasets
from medlens.io.dicom_labels import read_dicom_labels, referenced_series_uid
from medlens.io.rtstruct import write_rtstruct
from tests.io.dicom_label_data import dice, ellipsoid, write_series

SHAPE = (24, 20, 8)


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    """An oblique series (slices tilted 20, 10, 30 degrees) and its image."""
    root = tmp_path_factory.mktemp("rt")
    write_series(root / "ct", SHAPE, oblique=True)
    image = read_image(root / "ct")
    assert not np.allclose(np.abs(np.asarray(image.direction).reshape(3, 3)), np.eye(3), atol=0.1)
    return root, image


def shapes() -> np.ndarray:
    """Two structures: an ellipsoid with a tunnel (a hole on some slices) and a small ball; (1, X, Y, Z)."""
    labels = np.zeros((1, *SHAPE), np.int16)
    labels[0][ellipsoid(SHAPE, (9, 9, 3.5), (7, 6, 3))] = 1
    labels[0][ellipsoid(SHAPE, (9, 9, 3.5), (2, 2, 9))] = 0  # the tunnel along z
    labels[0][ellipsoid(SHAPE, (19, 14, 5), (3, 3, 2))] = 2
    return labels


def round_trip(root: Path, image, labels: np.ndarray, name: str = "rt.dcm"):
    out = write_rtstruct(image.with_array(labels), ["Body", "Ball"], series_datasets(root / "ct"), root / name)
    return read_dicom_labels(out, root / "ct")


def test_round_trip_on_an_oblique_series_gives_every_voxel_back(oblique):
    root, image = oblique
    labels = shapes()
    back, names = round_trip(root, image, labels)

    assert names == ("Body", "Ball") and back.same_geometry(image)
    assert dice(back.array == 1, labels == 1) == 1.0 and dice(back.array == 2, labels == 2) == 1.0
    np.testing.assert_array_equal(back.array, labels)
    assert (labels[0, 9, 9, 3] == 0) and back.array[0, 9, 9, 3] == 0  # the hole stays a hole (even-odd)


def test_round_trip_of_noise_and_diagonal_neighbours_is_exact(oblique):
    root, image = oblique
    noise = np.random.default_rng(0).integers(0, 3, (1, *SHAPE)).astype(np.int16)
    back, _ = round_trip(root, image, noise, "noise.dcm")
    np.testing.assert_array_equal(back.array, noise)


def test_written_rtstruct_passes_dciodvfy_and_references_the_source(oblique):
    root, image = oblique
    out = write_rtstruct(image.with_array(shapes()), ["Body", "Ball"], series_datasets(root / "ct"),
                         root / "checked.dcm")
    dciodvfy = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    report = subprocess.run([dciodvfy, str(out)], capture_output=True, text=True, timeout=60)
    assert "RTStructureSet" in report.stdout + report.stderr
    assert [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")] == []

    rt, source = pydicom.dcmread(out), pydicom.dcmread(sorted((root / "ct").iterdir())[0])
    assert rt.Modality == "RTSTRUCT" and rt.PatientID == source.PatientID
    assert rt.StudyInstanceUID == source.StudyInstanceUID and rt.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert rt.SeriesInstanceUID != source.SeriesInstanceUID and rt.SOPInstanceUID != source.SOPInstanceUID
    assert referenced_series_uid(out) == source.SeriesInstanceUID
    referenced = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert len(referenced.ContourImageSequence) == SHAPE[2]
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["Body", "Ball"]
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]  # written atomically, no leftovers


def test_a_mask_off_the_series_grid_is_refused(oblique):
    root, image = oblique
    shifted = image.with_array(shapes())
    shifted.origin_mm = tuple(np.add(image.origin_mm, 1.0))
    with pytest.raises(DicomError, match="not on the source series' grid.*resample it onto the series"):
        write_rtstruct(shifted, ["Body", "Ball"], series_datasets(root / "ct"), root / "never.dcm")
    assert not (root / "never.dcm").exists()


def _moved(root: Path, image, name: str, offset_mm) -> Path:
    """An RTSTRUCT of :func:`shapes` whose Ball contours are moved by ``offset_mm`` (patient x, y, z)."""
    out = write_rtstruct(image.with_array(shapes()), ["Body", "Ball"], series_datasets(root / "ct"), root / name)
    ds = pydicom.dcmread(out)
    for contour in ds.ROIContourSequence[1].ContourSequence:
        points = np.asarray(contour.ContourData, float).reshape(-1, 3) + offset_mm
        contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
    ds.save_as(out)
    return out


def test_contours_wholly_off_the_image_are_refused_naming_the_roi(oblique):
    root, image = oblique
    row = np.asarray(image.direction).reshape(3, 3)[:, 0]
    out = _moved(root, image, "off.dcm", row * 100.0)  # 100 mm along the rows: past the 19 mm wide image
    with pytest.raises(DicomError, match=r"contour\(s\) of Ball lie wholly off the image"):
        read_dicom_labels(out, root / "ct")


def test_contours_between_slices_are_refused(oblique):
    root, image = oblique
    normal = np.asarray(image.direction).reshape(3, 3)[:, 2]
    out = _moved(root, image, "between.dcm", normal * 0.5 * image.spacing_mm[2] + normal * 0.2)
    with pytest.raises(DicomError, match="off the image .* or between slices"):
        read_dicom_labels(out, root / "ct")


def test_contours_partly_past_the_edge_are_clipped_with_a_warning(oblique):
    root, image = oblique
    row = np.asarray(image.direction).reshape(3, 3)[:, 0]
    out = _moved(root, image, "edge.dcm", row * 4 * image.spacing_mm[0])  # the ball (x 16..22) moves 4 voxels
    back, _ = read_dicom_labels(out, root / "ct")

    assert any(w["code"] == "labels.clipped" for w in back.meta["read_warnings"])
    ball = shapes()[0] == 2
    expected = np.zeros_like(ball)
    expected[4:] = ball[:-4]
    np.testing.assert_array_equal(back.array[0] == 2, expected)


@pytest.mark.realdata
def test_round_trip_on_the_oblique_pgbm_series_is_exact_and_dciodvfy_clean(tmp_path):
    """PGBM-003's T1 post-contrast series: 22 oblique slices (tilted about 11 degrees), real patient/study headers."""
    import os

    from scipy import ndimage

    data = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "datasets")
    folder = data / "dicom" / "brain_tumor_progression_PGBM-003" / "11-T1post-18670"
    if not folder.exists():
        pytest.skip(f"{folder} is missing from the datasets folder")
    image = read_image(folder)
    assert abs(np.asarray(image.direction).reshape(3, 3)[2, 2]) < 0.99  # the slices are oblique
    smooth = ndimage.gaussian_filter(image.array[0].astype(np.float32), 2)
    labels = np.zeros(image.array.shape, np.int16)
    labels[0][smooth > np.percentile(smooth, 70)] = 1
    labels[0][smooth > np.percentile(smooth, 95)] = 2

    out = write_rtstruct(image.with_array(labels), ["head", "bright"], series_datasets(folder), tmp_path / "rt.dcm")
    back, _ = read_dicom_labels(out, folder)
    np.testing.assert_array_equal(back.array, labels)
    report = subprocess.run([shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy"), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")] == []
