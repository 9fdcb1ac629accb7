"""DICOM results (medlens.deploy.dicom): SEG / SR / Secondary Capture (and RTSTRUCT) from a prediction on a series.

The objects are written from hand-made prediction answers on an oblique synthetic series (and a real oblique MR
series, realdata), re-read with highdicom (and medlens' own DICOM label reader when present), checked voxel for
voxel and against the source geometry, and validated with dciodvfy. The predictors are real ``Predictor`` objects
of a plan (no trained weights needed: ``write_results`` reads the task and the classes, not the network).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from medlens.config import Config, DatasetSection
from medlens.deploy import Predictor
from medlens.deploy.dicom import DICOM_KINDS, dciodvfy_errors, parse_kinds, write_results
from medlens.errors import ConfigError, MedlensError
from medlens.io import read_image
from medlens.io.dicom import series_datasets
from medlens.io.dicom_write import write_dicom_series

DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets")
PGBM = DATA / "dicom" / "brain_tumor_progression_PGBM-003" / "11-T1post-18670"
SHAPE = (24, 20, 8)  # X (columns), Y (rows), Z (slices)
SPACING = (0.7, 0.8, 2.5)
PATIENT = "Doe"  # one component: highdicom warns about such a name, quoting it
CLASSES = ("background", "lesion", "kidney", "absent thing")  # mask values 0, 2, 5, 7: not 1..K on purpose
VALUES = (0, 2, 5, 7)


def tilted(angles_deg=(20.0, -15.0, 10.0)) -> np.ndarray:
    """A rotation matrix whose columns are the row direction, the column direction and the slice normal."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


@pytest.fixture
def oblique_series(tmp_path) -> Path:
    """An oblique CT series (written by medlens, then tilted: orientation and positions along the tilted normal)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "ct"
    paths = write_dicom_series(rng.normal(0, 50, SHAPE), folder, spacing_mm=SPACING, origin_mm=(-10, 20, 30),
                               patient_id="P-123")
    rotation = tilted()
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [float(v) for v in (*rotation[:, 0], *rotation[:, 1])]
        ds.ImagePositionPatient = [float(v) for v in np.array([-10.0, 20.0, 30.0]) + k * SPACING[2] * rotation[:, 2]]
        ds.PatientName = PATIENT
        ds.save_as(path)
    return folder


def predictor_for(task: str, class_names: tuple[str, ...], label_values: tuple[int, ...] = ()) -> Predictor:
    config = Config(dataset=DatasetSection(task=task, class_names=class_names, label_values=label_values,
                                           spatial_dims=3))
    return Predictor(config, torch.nn.Identity(), calibration={}, postprocess={}, card={"model_version": "test-1"})


def blobs_mask(image) -> np.ndarray:
    """``(1, X, Y, Z)`` values 2 (a box touching the first and last slices) and 5 (a small block); 7 absent."""
    mask = np.zeros((1, *image.spatial_shape), dtype=np.int16)
    mask[0, 3:11, 4:12, :] = 2
    mask[0, 15:19, 2:5, 2:4] = 5
    return mask


def seg_result(image) -> dict:
    return {"task": "segmentation", "mask": image.with_array(blobs_mask(image)), "model_version": "test-1"}


def read_back_values(seg_path: Path, source: list, numbers_to_values: dict[int, int]) -> np.ndarray:
    """The SEG re-read by highdicom as ``(X, Y, Z)`` mask values, slice k from source instance k."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[d.SOPInstanceUID for d in source],
                                               combine_segments=True, relabel=False)
    values = np.zeros(frames.shape, dtype=np.int16)
    for number, value in numbers_to_values.items():
        values[frames == number] = value
    return np.transpose(values, (2, 1, 0))


def test_seg_round_trip_on_an_oblique_series(oblique_series, tmp_path):
    image = read_image(oblique_series)
    assert not np.allclose(image.direction, np.eye(3).ravel(), atol=0.05)  # the series really is oblique
    predictor = predictor_for("segmentation", CLASSES, VALUES)
    result = seg_result(image)
    [seg_path] = write_results(predictor, oblique_series, result, tmp_path / "out", ["seg"])
    assert seg_path == tmp_path / "out" / "seg.dcm"
    source = series_datasets(oblique_series)
    back = read_back_values(seg_path, source, {1: 2, 2: 5, 3: 7})
    np.testing.assert_array_equal(back, result["mask"].array[0])


def test_seg_geometry_equals_the_source(oblique_series, tmp_path):
    """Every voxel of highdicom's volume of the SEG sits at the world position of a source voxel, and carries
    that voxel's mask value; each frame is placed where its source slice is."""
    import highdicom as hd

    image = read_image(oblique_series)
    result = seg_result(image)
    [seg_path] = write_results(predictor_for("segmentation", CLASSES, VALUES), oblique_series, result, tmp_path,
                               ["seg"])
    seg = hd.seg.segread(seg_path)
    volume = seg.get_volume(combine_segments=True, relabel=False)  # the mask touches both end slices: whole grid
    assert sorted(volume.array.shape) == sorted(SHAPE)
    index = np.indices(volume.array.shape).reshape(3, -1)
    world = volume.affine[:3, :3] @ index + volume.affine[:3, 3:]
    to_image = np.asarray(image.direction).reshape(3, 3) * np.asarray(image.spacing_mm)
    xyz = np.linalg.solve(to_image, world - np.asarray(image.origin_mm)[:, None])
    np.testing.assert_allclose(xyz, np.round(xyz), atol=1e-3)
    x, y, z = np.round(xyz).astype(int)
    assert len(set(zip(x, y, z))) == np.prod(SHAPE) and x.min() == y.min() == z.min() == 0
    values = np.select([volume.array.ravel() == n for n in (1, 2, 3)], VALUES[1:], 0)
    np.testing.assert_array_equal(values, result["mask"].array[0][x, y, z])
    by_uid = {d.SOPInstanceUID: d for d in series_datasets(oblique_series)}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        referenced = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position],
                                   [float(v) for v in by_uid[referenced].ImagePositionPatient], atol=1e-3)


def test_seg_segments_are_coded_and_the_object_is_new_in_the_same_study(oblique_series, tmp_path):
    import highdicom as hd

    image = read_image(oblique_series)
    [seg_path] = write_results(predictor_for("segmentation", CLASSES, VALUES), oblique_series, seg_result(image),
                               tmp_path, ["seg"])
    seg, first = hd.seg.segread(seg_path), series_datasets(oblique_series)[0]
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["lesion", "kidney", "absent thing"]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in segments] == ["52988006", "64033007",
                                                                                    "85756007"]
    assert [s.SegmentedPropertyCategoryCodeSequence[0].CodeValue for s in segments] == ["49755003", "91723000",
                                                                                        "85756007"]
    algorithm = segments[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("medlens", "test-1")
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    assert seg.SOPInstanceUID not in {d.SOPInstanceUID for d in series_datasets(oblique_series)}
    assert seg.PatientID == "P-123"
    assert seg.get_segment_numbers() == [1, 2, 3]  # the empty class keeps its segment


def test_seg_read_back_by_medlens_label_reader(oblique_series, tmp_path):
    labels = pytest.importorskip("medlens.io.dicom_labels", reason="medlens.io.dicom_labels (issue 18, H1) not here")
    image = read_image(oblique_series)
    result = seg_result(image)
    [seg_path] = write_results(predictor_for("segmentation", CLASSES, VALUES), oblique_series, result, tmp_path,
                               ["seg"])
    mask, names = labels.read_dicom_labels(seg_path, oblique_series)
    assert names == CLASSES[1:]
    assert mask.same_geometry(image)
    expected = np.select([result["mask"].array == v for v in VALUES[1:]], [1, 2, 3], 0)
    np.testing.assert_array_equal(mask.array, expected)


def test_rtstruct_read_back_by_medlens_label_reader(oblique_series, tmp_path):
    """RTSTRUCT through medlens.io.rtstruct (contours traced on each slice, then rasterised again): the blocks come
    back voxel for voxel (their edges lie on voxel boundaries); the empty class is an ROI without contours."""
    labels = pytest.importorskip("medlens.io.dicom_labels", reason="medlens.io.dicom_labels (issue 18, H1) not here")
    image = read_image(oblique_series)
    result = seg_result(image)
    [path] = write_results(predictor_for("segmentation", CLASSES, VALUES), oblique_series, result, tmp_path / "out",
                           ["rtstruct"])
    assert path == tmp_path / "out" / "rtstruct.dcm" and dciodvfy_errors(path) == []
    rtstruct = pydicom.dcmread(path)
    assert [r.ROIName for r in rtstruct.StructureSetROISequence] == list(CLASSES[1:])
    assert rtstruct.SeriesInstanceUID != series_datasets(oblique_series)[0].SeriesInstanceUID
    mask, names = labels.read_dicom_labels(path, oblique_series, names=CLASSES[1:3])
    assert names == CLASSES[1:3] and mask.same_geometry(image)
    for number, value in enumerate(VALUES[1:3], start=1):
        np.testing.assert_array_equal(mask.array == number, result["mask"].array == value)


def sr_volumes(sr_path: Path) -> dict[str, tuple[float, int | None]]:
    """``{tracking identifier: (volume ml, (SEG SOP instance UID, segment number) or None)}`` from a written SR."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    report = hd.sr.srread(sr_path)
    volumes = {}
    for group in report.content.get_volumetric_roi_measurement_groups():
        [measurement] = group.get_measurements(name=codes.SCT.Volume)
        assert measurement.unit.value == "mL"
        segment = group.referenced_segment
        [number] = segment.referenced_segment_numbers
        volumes[group.tracking_identifier] = (measurement.value, (segment.referenced_sop_instance_uid, number))
    for group in report.content.get_image_measurement_groups():
        [measurement] = group.get_measurements(name=codes.SCT.Volume)
        volumes[group.tracking_identifier] = (measurement.value, None)
    return volumes


def test_sr_volumes_are_voxel_counts_times_voxel_volume_and_reference_the_seg(oblique_series, tmp_path):
    import highdicom as hd

    image = read_image(oblique_series)
    result = seg_result(image)
    seg_path, sr_path = write_results(predictor_for("segmentation", CLASSES, VALUES), oblique_series, result,
                                      tmp_path, ["sr", "seg"])
    voxel_ml = np.prod(SPACING) / 1000
    counts = {name: int((result["mask"].array == v).sum()) for v, name in zip(VALUES[1:], CLASSES[1:])}
    assert counts["lesion"] == 8 * 8 * 8 and counts["kidney"] == 4 * 3 * 2 and counts["absent thing"] == 0
    volumes = sr_volumes(sr_path)
    assert set(volumes) == set(CLASSES[1:])
    seg = pydicom.dcmread(seg_path)
    for number, name in enumerate(CLASSES[1:], start=1):
        assert volumes[name][0] == pytest.approx(counts[name] * voxel_ml, rel=1e-6)
        assert volumes[name][1] == (seg.SOPInstanceUID, number)
    report = hd.sr.srread(sr_path)
    evidence = _evidence_uids(report)
    assert seg.SOPInstanceUID in evidence and series_datasets(oblique_series)[0].SOPInstanceUID in evidence


def _evidence_uids(report) -> set[str]:
    return {sop.ReferencedSOPInstanceUID for study in report.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}


def test_sr_without_a_seg_still_reports_each_volume(oblique_series, tmp_path):
    image = read_image(oblique_series)
    [sr_path] = write_results(predictor_for("segmentation", CLASSES, VALUES), oblique_series, seg_result(image),
                              tmp_path, ["sr"])
    volumes = sr_volumes(sr_path)
    assert volumes["lesion"] == (pytest.approx(512 * np.prod(SPACING) / 1000), None)
    assert not (tmp_path / "seg.dcm").exists()


def classification_result(heatmap: bool = True) -> dict:
    from medlens.explain.overlay import png_bytes

    rgb = np.zeros((40, 90, 3), dtype=np.uint8)
    rgb[5:20, 10:30] = (255, 40, 0)
    return {"task": "binary", "label": "lesion", "probabilities": {"normal": 0.25, "lesion": 0.75},
            "confidence": 0.75, "model_version": "test-1", "heatmap_png": png_bytes(rgb) if heatmap else None}


def test_sr_classification_finding_with_its_probability(oblique_series, tmp_path):
    import highdicom as hd

    predictor = predictor_for("binary", ("normal", "lesion"))
    [sr_path] = write_results(predictor, oblique_series, classification_result(), tmp_path, ["sr"])
    groups = {g.tracking_identifier: g for g in hd.sr.srread(sr_path).content.get_image_measurement_groups()}
    assert set(groups) == {"normal", "lesion"}
    lesion, normal = groups["lesion"], groups["normal"]
    assert lesion.finding_type.value == "52988006" and normal.finding_type.scheme_designator == "99MEDLENS"
    assert [m.value for m in lesion.get_measurements()] == [0.75]
    assert [m.value for m in normal.get_measurements()] == [0.25]
    assert [q.value.meaning for q in lesion.get_qualitative_evaluations()] == ["Present"]
    assert [q.value.meaning for q in normal.get_qualitative_evaluations()] == ["Absent"]


def test_sr_detection_boxes_are_polylines_on_their_centre_slice(oblique_series, tmp_path):
    import highdicom as hd

    boxes = [{"label": "nodule", "score": 0.91, "box": [2.0, 3.0, 1.0, 9.5, 7.0, 4.0]},
             {"label": "nodule", "score": 0.4, "box": [10.0, 10.0, 6.2, 14.0, 12.0, 8.0]}]
    [sr_path] = write_results(predictor_for("detection", ("background", "nodule")), oblique_series,
                              {"task": "detection", "boxes": boxes, "model_version": "test-1"}, tmp_path, ["sr"])
    source = series_datasets(oblique_series)
    groups = hd.sr.srread(sr_path).content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["nodule 1", "nodule 2"]
    assert [[m.value for m in g.get_measurements()] for g in groups] == [[0.91], [0.4]]
    np.testing.assert_allclose(groups[0].roi.value, [[2, 3], [9.5, 3], [9.5, 7], [2, 7], [2, 3]])
    slices = [g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID for g in groups]
    assert slices == [source[2].SOPInstanceUID, source[7].SOPInstanceUID]  # centre z 2.5 -> 2, 7.1 -> 7


def test_capture_is_the_overlay_in_the_study(oblique_series, tmp_path):
    import io

    from PIL import Image as PILImage

    result = classification_result()
    [path] = write_results(predictor_for("binary", ("normal", "lesion")), oblique_series, result, tmp_path,
                           ["capture"])
    capture, first = pydicom.dcmread(path), series_datasets(oblique_series)[0]
    expected = np.asarray(PILImage.open(io.BytesIO(result["heatmap_png"])).convert("RGB"))
    np.testing.assert_array_equal(capture.pixel_array, expected)
    assert capture.PhotometricInterpretation == "RGB" and capture.StudyInstanceUID == first.StudyInstanceUID
    assert capture.SeriesInstanceUID != first.SeriesInstanceUID
    assert list(capture.PatientOrientation) == ["L", "P"]  # the tilted rows run mostly left, columns posterior
    assert capture.SoftwareVersions[-1] == "model test-1"


def test_dciodvfy_reports_no_error_on_any_object(oblique_series, tmp_path):
    image = read_image(oblique_series)
    segmentation = predictor_for("segmentation", CLASSES, VALUES)
    kinds = ["seg", "sr"] + (["rtstruct"] if _has_rtstruct_writer() else [])
    paths = write_results(segmentation, oblique_series, seg_result(image), tmp_path / "seg", kinds)
    paths += write_results(predictor_for("binary", ("normal", "lesion")), oblique_series, classification_result(),
                           tmp_path / "cls", ["sr", "capture"])
    paths += write_results(predictor_for("detection", ("background", "nodule")), oblique_series,
                           {"boxes": [{"label": "nodule", "score": 0.5, "box": [1, 1, 1, 4, 4, 3]}]},
                           tmp_path / "det", ["sr"])
    assert len(paths) == len(kinds) + 3
    for path in paths:
        assert dciodvfy_errors(path) == [], path


def _has_rtstruct_writer() -> bool:
    try:
        from medlens.io.rtstruct import write_rtstruct  # noqa: F401
    except ImportError:
        return False
    return True


def test_dciodvfy_errors_finds_errors_in_a_broken_object(oblique_series, tmp_path):
    image = read_image(oblique_series)
    [path] = write_results(predictor_for("segmentation", CLASSES, VALUES), oblique_series, seg_result(image),
                           tmp_path, ["seg"])
    broken = pydicom.dcmread(path)
    del broken.SegmentSequence
    broken.save_as(tmp_path / "broken.dcm")
    errors = dciodvfy_errors(tmp_path / "broken.dcm")
    assert errors and all(line.startswith("Error") for line in errors)
    assert any("<SegmentSequence>" in line for line in errors)


def test_no_patient_identifier_in_logs_or_warnings(oblique_series, tmp_path, caplog, recwarn, capfd):
    import logging

    caplog.set_level(logging.DEBUG)
    image = read_image(oblique_series)
    write_results(predictor_for("segmentation", CLASSES, VALUES), oblique_series, seg_result(image), tmp_path,
                  ["seg", "sr"])
    write_results(predictor_for("binary", ("normal", "lesion")), oblique_series, classification_result(),
                  tmp_path / "cls", ["capture"])
    printed = capfd.readouterr()
    said = caplog.text + printed.out + printed.err + " ".join(str(w.message) for w in recwarn)
    assert "Doe" not in said and "P-123" not in said
    assert series_datasets(oblique_series)[0].StudyInstanceUID not in said


def test_a_kind_the_task_cannot_give_is_refused_with_the_fix(oblique_series, tmp_path):
    classifier = predictor_for("binary", ("normal", "lesion"))
    with pytest.raises(ConfigError, match=r"--dicom seg,rtstruct: a classification model cannot give .*"
                                          r"use --dicom sr,capture"):
        write_results(classifier, oblique_series, classification_result(), tmp_path / "out", ["seg", "rtstruct"])
    with pytest.raises(ConfigError, match=r"capture .*it draws no heat map.*use --dicom seg,rtstruct,sr"):
        write_results(predictor_for("segmentation", CLASSES, VALUES), oblique_series, {}, tmp_path / "out", ["capture"])
    with pytest.raises(ConfigError, match="choose from seg, rtstruct, sr, capture"):
        parse_kinds("seg,pdf")
    with pytest.raises(ConfigError, match="capture needs the heat map: predict with heatmap=True"):
        write_results(classifier, oblique_series, classification_result(heatmap=False), tmp_path / "out", ["capture"])
    assert not (tmp_path / "out").exists()  # nothing written by a refused call
    assert parse_kinds("sr, SEG,sr") == ("seg", "sr") and DICOM_KINDS == ("seg", "rtstruct", "sr", "capture")


def test_a_mask_off_the_series_grid_is_refused(oblique_series, tmp_path):
    image = read_image(oblique_series)
    small = image.with_array(np.zeros((1, *SHAPE), dtype=np.int16))
    small.array = small.array[:, :, :, :5]
    with pytest.raises(MedlensError, match=r"the mask is 24x20x5 voxels but the series is 24x20x8"):
        write_results(predictor_for("segmentation", CLASSES, VALUES), oblique_series,
                      {"mask": small, "model_version": None}, tmp_path / "out", ["seg", "sr"])
    if _has_rtstruct_writer():  # the RTSTRUCT is made before the SR is written: neither is
        with pytest.raises(MedlensError):
            write_results(predictor_for("segmentation", CLASSES, VALUES), oblique_series,
                          {"mask": small, "model_version": None}, tmp_path / "out", ["rtstruct", "sr"])
    assert not (tmp_path / "out").exists()


@pytest.mark.realdata
@pytest.mark.skipif(not PGBM.exists(), reason=f"{PGBM} not present (set MEDLENS_DATA_DIR)")
def test_real_oblique_mr_series_round_trip(tmp_path):
    """PGBM-003 T1 post-contrast (TCIA Brain-Tumor-Progression): 22 slices tilted about 11 degrees."""
    image = read_image(PGBM)
    assert abs(image.direction[5]) > 0.1  # oblique: the rows tilt towards the head
    bright = image.array[0] > np.percentile(image.array, 97)
    mask = np.where(bright, 1, 0).astype(np.int16)[None]
    predictor = predictor_for("segmentation", ("background", "enhancing"), (0, 1))
    seg_path, sr_path = write_results(predictor, PGBM, {"mask": image.with_array(mask), "model_version": "t"},
                                      tmp_path, ["seg", "sr"])
    source = series_datasets(PGBM)
    np.testing.assert_array_equal(read_back_values(seg_path, source, {1: 1}), mask[0])
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    expected_ml = int(mask.sum()) * float(np.prod(image.spacing_mm)) / 1000
    assert sr_volumes(sr_path)["enhancing"][0] == pytest.approx(expected_ml, rel=1e-5)


def test_one_dicom_file_gets_its_results_too(tmp_path):
    """A radiograph-like single file: SR and capture reference it; a one-slice mask becomes a one-frame SEG."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    [path] = write_dicom_series(np.random.default_rng(1).normal(0, 40, (30, 26, 1)), tmp_path / "cr",
                                spacing_mm=(0.5, 0.4, 1.0))
    image = read_image(path)
    assert image.spatial_dims == 2
    mask = np.zeros((1, 30, 26), dtype=np.int16)
    mask[0, 4:9, 10:20] = 2
    paths = write_results(predictor_for("segmentation", CLASSES, VALUES), path, {"mask": image.with_array(mask)},
                          tmp_path / "seg", ["seg", "sr"])
    paths += write_results(predictor_for("binary", ("normal", "lesion")), path, classification_result(),
                           tmp_path / "cls", ["sr", "capture"])
    for written in paths:
        assert dciodvfy_errors(written) == [], written
    uid = pydicom.dcmread(path).SOPInstanceUID
    np.testing.assert_array_equal(read_back_values(paths[0], [pydicom.dcmread(path)], {1: 2, 2: 5, 3: 7}),
                                  mask[0][..., None])
    [area] = hd.sr.srread(paths[1]).content.get_volumetric_roi_measurement_groups()[0].get_measurements(
        name=codes.SCT.Area)
    assert area.value == pytest.approx(50 * 0.5 * 0.4) and area.unit.value == "mm2"
    assert uid in _evidence_uids(hd.sr.srread(paths[2]))
    with pytest.raises(ConfigError, match="capture needs the heat map"):
        write_results(predictor_for("binary", ("normal", "lesion")), path, classification_result(heatmap=False),
                      tmp_path / "none", ["capture"])
