"""The service with volumes: a zipped DICOM series through a 3D classifier (no identifier leaves the server),
and a segmentation bundle answering with a NIfTI mask on the upload's own grid."""

from __future__ import annotations

import base64
import io
import logging
import zipfile

import httpx
import numpy as np
import pytest

from medlens.deploy import Predictor
from medlens.io import read_image
from medlens.io.dicom_write import write_dicom_series

PATIENT = "DOE^JANE-4711"


def zipped_series(volume, folder, patient_id: str) -> bytes:
    write_dicom_series(np.round(volume.array[0]), folder, spacing_mm=volume.spacing_mm, origin_mm=volume.origin_mm,
                       rescale_intercept=0.0, modality="MR", patient_id=patient_id)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, arcname=f"series/{path.name}")
    return buffer.getvalue()


def test_a_zipped_dicom_series_is_classified_and_no_identifier_leaves_the_server(
        blob_run_3d, make_blob_volume, serve, tmp_path, caplog):
    server = serve(Predictor.from_run(blob_run_3d))
    upload = zipped_series(make_blob_volume(np.random.default_rng(5), True), tmp_path / "dicom", PATIENT)
    with caplog.at_level(logging.DEBUG):
        response = httpx.post(f"{server.url}/v1/predict?heatmap=true", timeout=60,
                              files={"file": ("DOE_JANE.zip", upload, "application/octet-stream")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in ("normal", "lesion") and 0 <= body["confidence"] <= 1
    assert base64.b64decode(body["heatmap_png"]).startswith(b"\x89PNG")
    expected = Predictor.from_run(blob_run_3d).predict(tmp_path / "dicom")
    assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
    for text in (response.text, caplog.text):
        assert PATIENT not in text and "DOE" not in text and "JANE" not in text


def test_a_segmentation_bundle_returns_a_nifti_mask_on_the_uploads_grid(serve, seg_bundle, demo_dir, tmp_path):
    server = serve(Predictor.from_bundle(seg_bundle))
    source = demo_dir / "new_volumes" / "lesion_new.nii.gz"
    response = httpx.post(f"{server.url}/v1/predict?mask=true", timeout=120,
                          files={"file": ("scan.nii.gz", source.read_bytes(), "application/gzip")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "segmentation" and set(body["voxels"]) == {"lesion"}
    (tmp_path / "mask.nii.gz").write_bytes(base64.b64decode(body["mask_nifti"]))
    mask, original = read_image(tmp_path / "mask.nii.gz"), read_image(source)
    assert mask.spatial_shape == original.spatial_shape
    np.testing.assert_allclose(mask.direction, original.direction, atol=1e-6)
    np.testing.assert_allclose(mask.origin_mm, original.origin_mm, atol=1e-4)
    assert int((mask.array == 1).sum()) == body["voxels"]["lesion"]
