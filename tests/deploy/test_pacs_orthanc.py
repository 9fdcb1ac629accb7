"""medlens against a real Orthanc (DICOMweb plugin): pull a study, predict, push the SEG and SR back."""

from __future__ import annotations

import numpy as np
import pytest

from tests.deploy.pacs_data import leaks, study_uid, write_study


@pytest.fixture(scope="module")
def uploaded(orthanc, tmp_path_factory):
    """A small MR study uploaded through Orthanc's REST API: (its files, its StudyInstanceUID)."""
    paths = write_study(tmp_path_factory.mktemp("study") / "series", seed=11)
    orthanc.upload(paths)
    return paths, study_uid(paths)


def test_predict_pulls_predicts_and_pushes_seg_and_sr(orthanc, uploaded, seg_run, cli, tmp_path):
    from medlens.deploy import Predictor

    paths, uid = uploaded
    address = f"dicomweb://127.0.0.1:{orthanc.http_port}/dicom-web/studies/{uid}"
    result = cli("predict", seg_run.root, address, "--push", "--dicom", "seg,sr", "--out", tmp_path / "out")
    assert result.rc == 0, result.out + result.err
    assert "pushed 2 DICOM object(s)" in result.out
    assert orthanc.modalities_of(uid) == ["MR", "SEG", "SR"]
    assert not leaks(result.out + result.err)

    # the SEG as Orthanc stores it, re-read with highdicom, equals the mask predicted here from the same files
    seg = _stored(orthanc, uid, "SEG")
    local = Predictor.from_run(seg_run.root).predict(paths[0].parent)["mask"].array[0]
    assert local.sum() > 0
    assert np.array_equal(_seg_mask(seg, paths), local.astype(bool))
    sr = _stored(orthanc, uid, "SR")
    assert sr.StudyInstanceUID == uid and sr.SeriesInstanceUID != seg.SeriesInstanceUID


def _stored(orthanc, uid: str, modality: str):
    from dicomweb_client.api import DICOMwebClient
    from pydicom import Dataset

    client = DICOMwebClient(orthanc.dicomweb)
    series = [Dataset.from_json(s) for s in client.search_for_series(uid)]
    wanted = [s.SeriesInstanceUID for s in series if s.Modality == modality]
    assert len(wanted) == 1, f"{modality}: {len(wanted)} series in the study"
    (instance,) = client.retrieve_series(uid, wanted[0])
    return instance


def _seg_mask(dataset, paths) -> np.ndarray:
    """The SEG's segment 1 as a boolean (X, Y, Z) array on the source series (slice k = paths[k])."""
    import highdicom as hd
    import pydicom

    seg = hd.seg.Segmentation.from_dataset(dataset)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    return np.transpose(pixels, (2, 1, 0)).astype(bool)  # (Z, rows = Y, columns = X) -> (X, Y, Z)


def test_a_wrong_dicomweb_path_is_a_clear_error_and_nothing_is_pushed(orthanc, uploaded, seg_run, cli, tmp_path):
    _, uid = uploaded
    before = orthanc.get("/statistics")["CountInstances"]
    result = cli("predict", seg_run.root, f"dicomweb://127.0.0.1:{orthanc.http_port}/no-such-root/studies/{uid}",
                 "--push", "--out", tmp_path / "out")
    assert result.rc != 0
    message = result.out + result.err
    assert "answered 404" in message and "/dicom-web" in message, message
    assert orthanc.get("/statistics")["CountInstances"] == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.dcm"))


def test_a_stopped_server_is_a_clear_error(seg_run, cli, tmp_path):
    from tests.deploy.orthanc import free_port

    result = cli("predict", seg_run.root, f"dicomweb://127.0.0.1:{free_port()}/dicom-web/studies/1.2.3", "--push")
    assert result.rc != 0
    assert "could not be reached" in result.out + result.err


def test_stow_to_a_wrong_path_stores_nothing(orthanc, uploaded, tmp_path):
    """The push side on its own: a STOW-RS refusal raises with the fix, and Orthanc holds no new instance."""
    import pydicom

    from medlens.deploy.pacs.send import Destination, SendError, send_files

    paths, _ = uploaded
    copies = []
    for k, path in enumerate(paths[:3]):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(tmp_path / f"{k}.dcm")
        copies.append(tmp_path / f"{k}.dcm")
    before = orthanc.get("/statistics")["CountInstances"]
    with pytest.raises(SendError, match="answered 404 to STOW-RS.*check the URL's path"):
        send_files(copies, Destination.parse(f"{orthanc.url}/wrong-root"))
    assert orthanc.get("/statistics")["CountInstances"] == before
    send_files(copies, Destination.parse(orthanc.dicomweb))  # the right root takes all three
    assert orthanc.get("/statistics")["CountInstances"] == before + 3


def test_a_study_with_no_series_the_model_takes_is_refused_with_the_reason(orthanc, seg_run, cli, tmp_path):
    ct = write_study(tmp_path / "ct", seed=12, modality="CT", shape=(24, 24, 6))
    orthanc.upload(ct)
    before = orthanc.get("/statistics")["CountInstances"]
    result = cli("predict", seg_run.root, f"dicomweb://127.0.0.1:{orthanc.http_port}/dicom-web/studies/{study_uid(ct)}",
                 "--push")
    assert result.rc != 0
    # "series 1: modality CT" without a slice count: refused from the series search, before any instance is pulled
    assert "no series of the study" in result.err and "series 1: modality CT, the model was trained on MR" in result.err
    assert orthanc.get("/statistics")["CountInstances"] == before
    assert not leaks(result.out + result.err)
