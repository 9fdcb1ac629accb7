"""A model of several DICOM series (trained with ``--series-rule``) deployed on studies.

- ``POST /v1/predict`` with the field ``study`` (a .zip of the study, in any tree): the series are grouped by
  SeriesInstanceUID and picked by the plan's rules, in this process and in worker processes.
- ``medlens serve RUN --dicom AE@PORT``: the listener collects whole studies, the rules pick one series per view,
  and the result goes into the source study in a real Orthanc; a study the rules cannot read is logged and nothing
  is sent. The log names no description or patient.
"""

from __future__ import annotations

import contextlib
import csv
import io
import time
import zipfile
from pathlib import Path

import pytest

from tests.data.test_series_manifest import write_csv, write_study
from tests.deploy.pacs_data import study_uid
from tests.deploy.test_pacs_listener import ListeningService, send_series


@pytest.fixture(scope="module")
def study_model(tmp_path_factory) -> Path:
    """A two-series classifier (T1 and FLAIR of 12 thin studies, one epoch): its plan keeps the series rules."""
    from medlens.cli import main

    root = tmp_path_factory.mktemp("study-model")
    rows = []
    for i in range(12):
        write_study(root / "studies" / f"s{i:02d}", i, i % 2 == 1)
        rows.append({"study": f"studies/s{i:02d}", "label": "tumour" if i % 2 else "none", "patient": f"P{i:02d}"})
    run = root / "run"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["train", str(write_csv(root / "studies.csv", rows)), "--series-rule", "t1=T1", "--series-rule",
                     "flair=FLAIR", "--out", str(run), "--set", "train.max_epochs=1", "--set",
                     "evaluate.n_bootstrap=20", "--no-progress"]) == 0, printed.getvalue()[-2000:]
    return run


def zipped(study: Path, *, flat: bool = False) -> bytes:
    """The study's files as a zip: its folders kept, or (``flat``) every file at the top under a number."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for k, path in enumerate(files_of(study)):
            archive.write(path, f"IM{k:04d}" if flat else str(path.relative_to(study)))
    return buffer.getvalue()


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor(study_model):
    from medlens.deploy import Predictor

    return Predictor.from_path(study_model)


@pytest.mark.parametrize("flat", [False, True])
def test_the_service_predicts_a_zipped_study_through_the_plans_series_rules(predictor, tmp_path, flat):
    from fastapi.testclient import TestClient

    from medlens.deploy.service import create_app

    study = write_study(tmp_path / "study", 92, True)
    expected = predictor.predict({"t1": study / "2-t1", "flair": study / "5-flair"})
    with TestClient(create_app(predictor)) as client:
        upload = {"study": ("study.zip", zipped(study, flat=flat), "application/zip")}
        response = client.post("/v1/predict", files=upload)
        model = client.get("/v1/model").json()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["probabilities"] == pytest.approx(expected["probabilities"]) and body["label"] == expected["label"]
    assert body["input"]["study"]["type"] == "dicom_series" and body["missing"]["views"] == []
    assert model["service"]["study_field"] == "study" and model["service"]["files"] == ["view:t1", "view:flair"]


def test_a_study_the_rules_cannot_read_or_a_study_beside_views_is_refused(predictor, tmp_path, study_model):
    from fastapi.testclient import TestClient

    from medlens.deploy import Predictor
    from medlens.deploy.service import create_app
    from medlens.deploy.workers import WorkerPool, WorkerSpec

    no_flair = write_study(tmp_path / "no_flair", 93, True, flair="T2 axial")
    good = write_study(tmp_path / "good", 94, False)
    pool = WorkerPool(WorkerSpec(study_model, workers=1, timeout_s=60))
    with TestClient(create_app(Predictor.from_path(study_model), workers=pool)) as client:
        refused = client.post("/v1/predict", files={"study": ("s.zip", zipped(no_flair), "application/zip")})
        both = client.post("/v1/predict", files={"study": ("s.zip", zipped(good), "application/zip"),
                                                  "view:t1": ("t1.zip", zipped(good / "2-t1"), "application/zip")})
        png = client.post("/v1/predict", files={"study": ("s.png", png_bytes(), "image/png")})
        ok = client.post("/v1/predict", files={"study": ("s.zip", zipped(good, flat=True), "application/zip")})
    assert refused.status_code == 422 and "rule flair matches no series" in refused.json()["error"]
    assert "T2 axial" in refused.json()["error"] and "medlens-upload" not in refused.json()["error"]
    assert both.status_code == 400 and "not both" in both.json()["error"]
    assert png.status_code == 415 and "takes a .zip of the study's DICOM files, got a png" in png.json()["error"]
    assert ok.status_code == 200, ok.text
    expected = predictor.predict({"t1": good / "2-t1", "flair": good / "5-flair"})
    assert ok.json()["probabilities"] == pytest.approx(expected["probabilities"])


def test_a_dicomweb_study_is_pulled_by_the_rules_predicted_as_one_case_and_its_result_pushed(
        orthanc, study_model, predictor, cli, tmp_path):
    study = write_study(tmp_path / "study", 93, True)
    orthanc.upload(files_of(study))
    uid = study_uid(files_of(study))
    address = f"dicomweb://127.0.0.1:{orthanc.http_port}/dicom-web/studies/{uid}"
    result = cli("predict", study_model, address, "--push", "--out", tmp_path / "out" / "predictions.csv")
    assert result.rc == 0, result.out + result.err
    assert "pulled a study (t1: series 2 (MR, 4 slices), flair: series 5 (MR, 4 slices))" in result.out
    assert "pushed 1 DICOM object(s)" in result.out
    assert orthanc.modalities_of(uid).count("SR") == 1
    expected = predictor.predict({"t1": study / "2-t1", "flair": study / "5-flair"})
    with (tmp_path / "out" / "predictions.csv").open() as f:
        row = next(csv.DictReader(f))
    assert row["predicted"] == expected["label"]
    assert float(row[f"p_{expected['label']}"]) == pytest.approx(expected["probabilities"][expected["label"]], abs=1e-4)


def test_a_dicomweb_study_the_rules_cannot_read_is_refused_before_anything_is_pushed(orthanc, study_model, cli,
                                                                                    tmp_path):
    study = write_study(tmp_path / "study", 94, True, flair="T2 axial")
    orthanc.upload(files_of(study))
    uid = study_uid(files_of(study))
    address = f"dicomweb://127.0.0.1:{orthanc.http_port}/dicom-web/studies/{uid}"
    result = cli("predict", study_model, address, "--push", "--out", tmp_path / "out")
    assert result.rc != 0
    assert "rule flair matches no series" in result.err and "series 5: 'MR T2 axial'" in result.err
    assert "SR" not in orthanc.modalities_of(uid)
    one_series = cli("predict", study_model, f"{address}/series/1.2.3", "--out", tmp_path / "out")
    assert one_series.rc != 0 and "without /series/UID" in one_series.err


@pytest.mark.browser
def test_the_page_offers_the_study_beside_the_views(open_watched, serve, predictor, tmp_path):
    server = serve(predictor)
    page, errors = open_watched(server.url + "/", (server.url, "data:", "blob:"))
    page.wait_for_selector("#case-form:not([hidden])")
    fields = page.eval_on_selector_all("#case-form .view-file", "ps => ps.map(p => p.dataset.field)")
    assert fields == ["view:t1", "view:flair", "study"]
    study = write_study(tmp_path / "study", 95, True)
    (tmp_path / "study.zip").write_bytes(zipped(study))
    page.set_input_files("#case-form .view-file[data-field='study']", tmp_path / "study.zip")
    page.click("#case-form button")
    page.wait_for_selector("#label:not(:empty)", timeout=60_000)
    assert page.text_content("#label") == predictor.predict({"t1": study / "2-t1", "flair": study / "5-flair"})["label"]
    assert errors == []


@pytest.fixture(scope="module")
def service(study_model, orthanc, tmp_path_factory):
    server = ListeningService(study_model, f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}",
                              tmp_path_factory.mktemp("serve") / "serve.log")
    yield server
    log = server.stop()
    for secret in ("T1 axial", "FLAIR axial", "T2 axial", "Localizer", "P90", "P91"):  # descriptions, patients
        assert secret not in log


def files_of(study: Path) -> list[Path]:
    return sorted(p for p in study.rglob("*.dcm"))


def test_a_study_is_collected_its_series_picked_by_the_rules_and_the_result_stored_in_it(service, orthanc,
                                                                                        tmp_path):
    assert "takes studies, one series for each of the rules t1=T1, flair=FLAIR" in service.text()
    study = write_study(tmp_path / "study", 90, True)
    send_series(files_of(study), service.dicom_port)  # the study's three series in one association
    log = service.wait_for_log("result object(s) sent to ORTHANC@", timeout_s=180)
    assert "a study (t1: series 2 (MR, 4 slices), flair: series 5 (MR, 4 slices)): 1 result object(s) sent" in log
    assert orthanc.modalities_of(study_uid(files_of(study))).count("SR") == 1


def test_a_study_the_rules_cannot_read_is_logged_and_nothing_sent(service, orthanc, tmp_path):
    study = write_study(tmp_path / "study", 91, True, flair="T2 axial")
    for series in sorted(p for p in study.iterdir() if p.is_dir()):  # one association per series, as PACS may,
        send_series(files_of(series), service.dicom_port)
        time.sleep(0.7)  # each longer after the last than a series' release grace: the study still waits
    log = service.wait_for_log("rule flair matches no series", timeout_s=120)
    assert "not predicted: a study of 3 series: rule flair matches no series; nothing sent" in log
    assert "SR" not in orthanc.modalities_of(study_uid(files_of(study)))
