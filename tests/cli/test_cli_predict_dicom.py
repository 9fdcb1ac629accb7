"""``medlens predict RUN SERIES --dicom KINDS``: DICOM results beside the NIfTI / CSV outputs, from one prediction.

On the session's demo segmenter (a demo lesion volume written as a DICOM series) and the session's 3D blob
classifier (a blob volume written as a DICOM series).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medlens.deploy import Predictor
from medlens.deploy.dicom import dciodvfy_errors
from medlens.io import read_image
from medlens.io.dicom_write import write_dicom_series


@pytest.fixture(scope="module")
def lesion_series(demo_dir, tmp_path_factory) -> Path:
    """A demo lesion volume (one of the segmenter's test-like volumes) as an axial MR DICOM series."""
    image = read_image(demo_dir / "segmentation" / "imagesTr" / "lesion_000.nii.gz")
    folder = tmp_path_factory.mktemp("lesion-dicom") / "lesion_mr"
    write_dicom_series(np.clip(image.array[0], 0, None), folder, spacing_mm=image.spacing_mm,
                       origin_mm=image.origin_mm, modality="MR", rescale_intercept=0.0, patient_id="PID-7")
    return folder


@pytest.fixture(scope="module")
def blob_series(make_blob_volume, tmp_path_factory) -> Path:
    """A blob volume with a lesion (what the 3D blob classifier was trained on) as an axial CT series."""
    image = make_blob_volume(np.random.default_rng(7), True)
    folder = tmp_path_factory.mktemp("blob-dicom") / "blob_ct"
    write_dicom_series(image.array[0], folder, spacing_mm=image.spacing_mm, origin_mm=image.origin_mm)
    return folder


def test_predict_writes_seg_and_sr_from_the_same_prediction_as_the_nifti(cli, seg_run, lesion_series, tmp_path,
                                                                         monkeypatch):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    calls = []
    predict = Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, source, **kw: calls.append(source) or
                        predict(self, source, **kw))
    out = tmp_path / "out"
    done = cli("predict", seg_run.root, lesion_series, "--dicom", "seg,sr", "--out", out)
    assert done.rc == 0, done.out + done.err
    assert calls == [lesion_series]  # one prediction for the NIfTI mask and the DICOM objects
    folder = out / "lesion_mr_dicom"
    assert f"{lesion_series} -> {folder / 'seg.dcm'}  (DICOM seg)" in done.out
    assert f"{lesion_series} -> {folder / 'sr.dcm'}  (DICOM sr)" in done.out
    assert sorted(p.name for p in folder.iterdir()) == ["seg.dcm", "sr.dcm"]
    assert dciodvfy_errors(folder / "seg.dcm") == [] and dciodvfy_errors(folder / "sr.dcm") == []

    nifti = read_image(out / "lesion_mr_seg.nii.gz")
    assert nifti.array.sum() > 20  # the demo segmenter finds the lesion
    source = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(lesion_series.iterdir())]
    seg = hd.seg.segread(folder / "seg.dcm")
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[d.SOPInstanceUID for d in source],
                                               combine_segments=True)
    np.testing.assert_array_equal(np.transpose(frames, (2, 1, 0)), nifti.array[0])
    assert seg.SegmentSequence[0].SegmentLabel == "lesion"
    [group] = hd.sr.srread(folder / "sr.dcm").content.get_volumetric_roi_measurement_groups()
    [volume] = group.get_measurements(name=codes.SCT.Volume)
    assert volume.value == pytest.approx(int(nifti.array.sum()) * np.prod(nifti.spacing_mm) / 1000, rel=1e-5)
    assert "PID-7" not in done.out + done.err


def test_predict_writes_sr_and_capture_for_a_classifier(cli, blob_run_3d, blob_series, tmp_path):
    import highdicom as hd
    from PIL import Image as PILImage

    out = tmp_path / "predictions.csv"
    done = cli("predict", blob_run_3d, blob_series, "--dicom", "sr,capture", "--out", out)
    assert done.rc == 0, done.out + done.err
    folder = tmp_path / "blob_ct_dicom"
    assert sorted(p.name for p in folder.iterdir()) == ["capture.dcm", "sr.dcm"]
    assert dciodvfy_errors(folder / "sr.dcm") == [] and dciodvfy_errors(folder / "capture.dcm") == []
    expected = Predictor.from_path(blob_run_3d).predict(blob_series, heatmap=True)
    groups = hd.sr.srread(folder / "sr.dcm").content.get_image_measurement_groups()
    reported = {g.tracking_identifier: g.get_measurements()[0].value for g in groups}
    assert reported == pytest.approx(expected["probabilities"])
    present = [g.tracking_identifier for g in groups
               if g.get_qualitative_evaluations()[0].value.meaning == "Present"]
    assert present == [expected["label"]]
    capture = pydicom.dcmread(folder / "capture.dcm")
    np.testing.assert_array_equal(capture.pixel_array,
                                  np.asarray(PILImage.open(io.BytesIO(expected["heatmap_png"])).convert("RGB")))
    assert out.exists()  # the CSV of predictions as usual


def test_one_dicom_file_gets_sr_and_capture_from_the_2d_classifier(cli, cls_run, demo_dir, tmp_path, monkeypatch):
    """A radiograph as one DICOM file (a demo chest image): without --out its results sit in
    ``predictions/<stem>_dicom/``."""
    png = sorted((demo_dir / "classification" / "lesion").glob("*.png"))[0]
    image = read_image(png)
    [dcm] = write_dicom_series(image.array[0][..., None].astype(float), tmp_path / "cr", rescale_intercept=0.0,
                               spacing_mm=(*image.spacing_mm, 1.0))
    monkeypatch.chdir(tmp_path)
    done = cli("predict", cls_run.root, dcm, "--dicom", "sr,capture")
    assert done.rc == 0, done.out + done.err
    folder = Path("predictions") / "slice_000_dicom"
    assert f"{dcm} -> {folder / 'sr.dcm'}  (DICOM sr)" in done.out
    assert f"{dcm} -> {folder / 'capture.dcm'}  (DICOM capture)" in done.out
    for path in (folder / "sr.dcm", folder / "capture.dcm"):
        assert dciodvfy_errors(path) == [], path
    capture = pydicom.dcmread(folder / "capture.dcm")
    assert capture.pixel_array.ndim == 3 and capture.StudyInstanceUID == pydicom.dcmread(dcm).StudyInstanceUID


def test_non_dicom_inputs_get_a_message_and_their_usual_outputs(cli, seg_run, demo_dir, tmp_path):
    volume = demo_dir / "segmentation" / "imagesTr" / "lesion_001.nii.gz"
    done = cli("predict", seg_run.root, volume, "--dicom", "seg", "--out", tmp_path)
    assert done.rc == 0, done.out + done.err
    assert f"{volume}: not a DICOM series folder or DICOM file, no DICOM results" in done.out
    assert (tmp_path / "lesion_001_seg.nii.gz").exists()
    assert not list(tmp_path.glob("*_dicom"))


def test_a_kind_the_task_cannot_give_is_refused_before_predicting(cli, blob_run_3d, blob_series, tmp_path):
    done = cli("predict", blob_run_3d, blob_series, "--dicom", "seg,sr", "--out", tmp_path / "p.csv")
    assert done.rc != 0
    assert "--dicom seg: a classification model cannot give seg (it predicts no mask)" in done.out + done.err
    assert "use --dicom sr,capture" in done.out + done.err
    assert not list(tmp_path.iterdir())
