"""The prediction service through its real HTTP interface: uvicorn on loopback, httpx as the client."""

from __future__ import annotations

import base64
import io
import logging
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from corpus import dicom_files, malformed_uploads

from medlens.io import Image, identity_direction, read_image, write_image

TOKEN = "test-token-7d1f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 2 << 20


@pytest.fixture(scope="module")
def server(live):
    return live(token=TOKEN, max_upload_bytes=MAX_UPLOAD)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def study(demo_dir):
    return demo_dir / "new_studies" / "study_01.png"


def post(client, data: bytes, name: str = "image", headers=AUTH, **params) -> httpx.Response:
    return client.post("/v1/predict", params=params, files={"file": (name, data)}, headers=headers)


def test_healthz_and_the_page_answer_without_a_token(client):
    assert client.get("/healthz").json() == {"status": "ok", "auth": "bearer"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: no external resource


@pytest.mark.parametrize("path", ["/v1/model", "/metrics"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_protected_endpoints_answer_401_without_the_right_bearer_token(client, path, headers):
    response = client.get(path, headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in response.json()["error"]


def test_predict_needs_the_token_too(client, study):
    response = post(client, study.read_bytes(), headers={})
    assert response.status_code == 401 and "error" in response.json()


def test_the_model_card_is_served_as_json_with_the_options_the_task_answers(client, predictor):
    response = client.get("/v1/model", headers=AUTH)
    assert response.status_code == 200 and response.json() == {**predictor.card, "service": {"options": ["heatmap"]}}


def test_an_option_the_task_does_not_answer_is_refused(client, study):
    response = client.post("/v1/predict?mask=true", headers=AUTH, files={"file": ("a.png", study.read_bytes())})
    assert response.status_code == 400
    assert response.json()["error"] == "mask=true: a classification model does not answer with a mask (its options: " \
                                       "heatmap=true)"


def test_prediction_of_a_png_matches_the_predictor_and_carries_a_heat_map(client, predictor, study):
    response = post(client, study.read_bytes(), name="whatever.dcm", heatmap="true")
    assert response.status_code == 200, response.text
    body = response.json()
    direct = predictor.predict(study)
    assert body["probabilities"] == pytest.approx(direct["probabilities"], abs=1e-6)
    assert body["label"] == direct["label"] and body["confidence"] == pytest.approx(direct["confidence"])
    assert body["model_version"] == predictor.card["model_version"] and body["task"] == "binary"
    assert body["input"] == {"type": "png", "bytes": study.stat().st_size}
    assert body["explained_class"] in predictor.card["class_names"]
    assert base64.b64decode(body["heatmap_png"]).startswith(b"\x89PNG\r\n\x1a\n")
    plain = post(client, study.read_bytes()).json()
    assert "heatmap_png" not in plain and plain["explained_class"] is None


def test_the_same_pixels_as_nifti_give_the_same_prediction(client, study, tmp_path):
    image = read_image(study)
    nifti = write_image(Image(image.array.astype(np.float32), (1.0, 1.0), (0.0, 0.0), identity_direction(2)),
                        tmp_path / "study.nii.gz")
    from_png, from_nifti = post(client, study.read_bytes()).json(), post(client, nifti.read_bytes()).json()
    assert from_nifti["input"]["type"] == "nifti"
    assert from_nifti["probabilities"] == pytest.approx(from_png["probabilities"], abs=1e-5)


def test_a_dicom_series_for_a_2d_model_is_refused_with_422_and_no_identifier(client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in dicom_files():
            archive.writestr(f"series/{name}", data)
    response = post(client, buffer.getvalue())
    assert response.status_code == 422
    assert "2D" in response.json()["error"] and "PAT-CORPUS" not in response.text


def test_uploads_past_the_limit_get_413_by_content_length_and_while_streaming(client):
    response = post(client, b"\0" * (MAX_UPLOAD + (100 << 10)))
    assert response.status_code == 413 and "larger than the limit" in response.json()["error"]

    def chunked():  # no Content-Length: the body is counted as it arrives
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * (100 << 10)
        yield b"\r\n--b--\r\n"

    response = client.post("/v1/predict", content=chunked(),
                           headers={**AUTH, "content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413 and "larger than the limit" in response.json()["error"]


@pytest.mark.parametrize("kwargs, message", [
    ({"content": b"x"}, "multipart/form-data with the field 'file'"),
    ({"files": {"other": ("a.png", b"x")}}, "no file in the form field 'file'"),
    ({"files": {"file": ("a.png", b"x")}, "params": {"heatmap": "maybe"}}, "expected true or false"),
])
def test_malformed_requests_get_400_with_a_json_error(client, kwargs, message):
    response = client.post("/v1/predict", headers=AUTH, **kwargs)
    assert response.status_code == 400 and message in response.json()["error"]


CORPUS = malformed_uploads()


@pytest.mark.parametrize("bad", CORPUS, ids=[b.name for b in CORPUS])
def test_every_malformed_upload_gets_its_4xx_json_error(client, bad):
    response = post(client, bad.data, name=bad.name)
    assert response.status_code == bad.status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error and "Traceback" not in error and "medlens-upload-" not in error and "PAT-CORPUS" not in error


def test_the_server_still_serves_after_the_corpus(client, study):
    for bad in CORPUS:  # the whole corpus again, back to back, then a valid request
        assert 400 <= post(client, bad.data).status_code < 500
    assert client.get("/healthz").status_code == 200
    assert post(client, study.read_bytes()).status_code == 200


def test_concurrent_clients_all_get_the_same_answer(server, study):
    data = study.read_bytes()

    def one(_):
        with httpx.Client(base_url=server.url, timeout=120) as c:
            return post(c, data, heatmap="true")

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(one, range(12)))
    assert all(r.status_code == 200 for r in responses)
    assert len({str(r.json()["probabilities"]) for r in responses}) == 1


def test_metrics_count_requests_by_endpoint_and_status_with_a_latency_histogram(client, study):
    post(client, study.read_bytes())
    post(client, b"text")
    client.get("/v1/model")
    text = client.get("/metrics", headers=AUTH).text
    counts = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("medlens_requests_total")}
    assert counts['medlens_requests_total{endpoint="/v1/predict",method="POST",status="200"}'] >= 1
    assert counts['medlens_requests_total{endpoint="/v1/predict",method="POST",status="415"}'] >= 1
    assert counts['medlens_requests_total{endpoint="/v1/model",method="GET",status="401"}'] >= 1
    assert "# TYPE medlens_request_duration_seconds histogram" in text
    inf = [line for line in text.splitlines() if line.startswith('medlens_request_duration_seconds_bucket{'
                                                                 'endpoint="/v1/predict",le="+Inf"}')]
    total = sum(v for k, v in counts.items() if 'endpoint="/v1/predict"' in k)
    assert len(inf) == 1 and float(inf[0].rsplit(" ", 1)[1]) == total


def test_logs_carry_status_size_type_and_latency_but_no_names_or_identifiers(client, caplog):
    series = io.BytesIO()
    with zipfile.ZipFile(series, "w") as archive:
        archive.writestr("PAT-CORPUS-123_slice.dcm", dicom_files()[0][1])
    with caplog.at_level(logging.INFO, logger="medlens.service"):
        post(client, series.getvalue(), name="PAT-CORPUS-123.zip")
        post(client, b"hello", name="john_doe_chest.png")
    lines = [r.getMessage() for r in caplog.records if r.name == "medlens.service"]
    assert any(line.startswith("POST /v1/predict 200 ") and "B dicom_series " in line for line in lines), lines
    assert any(" /v1/predict 415 " in line for line in lines), lines
    assert not any("PAT-CORPUS" in line or "john_doe" in line for line in lines)


def test_without_a_token_the_api_is_open(live, study):
    open_server = live()
    with httpx.Client(base_url=open_server.url, timeout=60) as c:
        assert c.get("/healthz").json()["auth"] == "none"
        assert c.get("/v1/model").status_code == 200
        assert post(c, study.read_bytes(), headers={}).status_code == 200
