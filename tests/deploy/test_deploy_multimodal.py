"""Predicting a case of several inputs (issue 16): Predictor, bundle, model card, HTTP service and web page.

One tiny fused run (``fused_run`` in tests/conftest.py, shared with the CLI tests): 40 synthetic cases of two
16x16 PNG views (axial, coronal) and two clinical columns (Age numeric in years, M/F categorical), trained for two
epochs of one ``seedcnn_2d``; its bundle carries the TorchScript and ONNX exports (two inputs: images and clinical
values).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medlens.errors import ConfigError, DatasetError

VIEWS = ("axial", "coronal")


@pytest.fixture(scope="module")
def cases(fused_cases) -> Path:
    return fused_cases


@pytest.fixture(scope="module")
def fused_bundle(fused_run, tmp_path_factory) -> Path:
    from medlens.deploy import export_bundle

    return export_bundle(fused_run, tmp_path_factory.mktemp("mm-bundle") / "mm.bundle", formats="both",
                         log=lambda m: None)


@pytest.fixture(scope="module")
def fused(fused_run):
    from medlens.deploy import Predictor

    return Predictor.from_run(fused_run)


def case_of(cases: Path, i: int, views=VIEWS) -> dict:
    return {v: str(cases.parent / v / f"s{i:02d}.png") for v in views}


def without_image_keys(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("heatmap_png", "model_version")}  # versions hash files


# ---- Predictor ------------------------------------------------------------------------------------------------------
def test_the_run_was_planned_with_views_encoded_apart_and_clinical_values(fused):
    assert fused.views == VIEWS and fused.config.data.fusion == "views" and fused.views_may_be_missing
    assert fused.clinical.columns == ["Age", "M/F"]


def test_run_and_bundle_give_the_same_answer_with_every_input(fused, fused_bundle, cases):
    from medlens.deploy import Predictor

    from_bundle = Predictor.from_bundle(fused_bundle)
    record = {"Age": 71, "M/F": "F"}
    a = fused.predict(case_of(cases, 1), clinical=record)
    b = from_bundle.predict(case_of(cases, 1), clinical=record)
    assert without_image_keys(a) == without_image_keys(b)
    assert a["missing"] == {"views": [], "clinical": []}
    assert a["inputs"] == {"views": ["axial", "coronal"], "clinical": {"Age": 71, "M/F": "F"}}
    assert sum(a["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_the_exported_networks_take_the_views_and_the_clinical_values(fused, fused_bundle, cases, backend):
    from medlens.deploy import Predictor

    exported = Predictor.from_bundle(fused_bundle, backend=backend)
    for source, record in ((case_of(cases, 1), {"Age": 71, "M/F": "F"}), (case_of(cases, 2, ("coronal",)), None)):
        a, b = fused.predict(source, clinical=record), exported.predict(source, clinical=record)
        assert a["missing"] == b["missing"]
        for name, p in a["probabilities"].items():
            assert b["probabilities"][name] == pytest.approx(p, abs=1e-4)


def test_an_ensemble_with_clinical_inputs_is_not_exported_to_drop_them(fused):
    from medlens.deploy.bundle import _drops_clinical

    config = replace(fused.config, model=replace(fused.config.model, members=2))
    assert _drops_clinical(fused.task.build_model(config).eval(), config)
    assert not _drops_clinical(fused.model, fused.config)


def test_the_bundle_carries_the_clinical_encoder_under_its_checksums(fused_bundle, fused_run):
    sums = json.loads((fused_bundle / "checksums.json").read_text())["files"]
    assert "clinical.json" in sums
    assert json.loads((fused_bundle / "clinical.json").read_text()) == json.loads((fused_run / "clinical.json")
                                                                                   .read_text())
    (fused_bundle.parent / "altered.bundle").mkdir()
    altered = fused_bundle.parent / "altered.bundle"
    for path in fused_bundle.iterdir():
        (altered / path.name).write_bytes(path.read_bytes())
    doc = json.loads((altered / "clinical.json").read_text())
    doc["means"]["Age"] = 20.0
    (altered / "clinical.json").write_text(json.dumps(doc))
    from medlens.deploy.bundle import BundleError, open_bundle

    with pytest.raises(BundleError, match="clinical.json does not match its checksum"):
        open_bundle(altered)


def test_a_missing_view_and_missing_clinical_values_are_predicted_and_reported(fused, cases):
    full = fused.predict(case_of(cases, 3), clinical={"Age": 64, "M/F": "M"})
    partial = fused.predict({"axial": case_of(cases, 3)["axial"], "coronal": None}, clinical={"Age": "", "M/F": "M"})
    assert partial["missing"] == {"views": ["coronal"], "clinical": ["Age"]}
    assert partial["inputs"] == {"views": ["axial"], "clinical": {"M/F": "M"}}
    # the network saw the coronal view as absent (all-NaN channels, masked out), not as a black image
    assert partial["probabilities"] != full["probabilities"]
    nothing = fused.predict({"coronal": case_of(cases, 3)["coronal"]})
    assert nothing["missing"] == {"views": ["axial"], "clinical": ["Age", "M/F"]}


def test_a_case_is_preprocessed_view_by_view_with_nan_for_a_missing_view(fused, cases):
    from medlens.tasks.classification.predict import case_array
    from medlens.transforms import Preprocessor

    inputs = fused.case_inputs({"coronal": case_of(cases, 5)["coronal"]}, None)
    array = case_array(inputs, fused.config, "case")
    assert array.shape == (2, 16, 16) and np.isnan(array[0]).all()
    expected = Preprocessor(fused.config.data)(fused.read(case_of(cases, 5)["coronal"]))
    np.testing.assert_array_equal(array[1:], expected)
    np.testing.assert_array_equal(inputs.clinical, fused.clinical.encode_record({}, "x"))


def test_views_fused_as_channels_are_stacked_then_preprocessed_and_none_may_be_missing(fused, cases):
    from medlens.data.views import stack_views
    from medlens.deploy import Predictor
    from medlens.tasks.classification.predict import case_array
    from medlens.transforms import Preprocessor

    data = replace(fused.config.data, fusion="channels", channels=2)
    config = replace(fused.config, data=data)
    stacked = Predictor(config, fused.model, calibration=fused.calibration, postprocess=fused.postprocess,
                        card=fused.card, clinical=fused.clinical)
    inputs = stacked.case_inputs(case_of(cases, 6), None)
    expected = Preprocessor(data)(stack_views([inputs.images[v] for v in VIEWS], list(VIEWS)))
    np.testing.assert_array_equal(case_array(inputs, config, "case"), expected)
    assert expected.shape == (2, 16, 16)
    with pytest.raises(ConfigError, match=r"view axial is missing.*stacked as channels of one image"):
        stacked.case_inputs(case_of(cases, 6, ("coronal",)), None)


@pytest.mark.parametrize(("source", "clinical", "error", "match"), [
    ({"sagittal": "axial/s01.png"}, None, ConfigError, "unknown view 'sagittal'; this model takes the views axial, "
                                                       "coronal"),
    ("axial/s01.png", None, ConfigError, r"takes 2 views \(axial, coronal\), got one input"),
    ({"axial": "axial/s01.png"}, {"Age": "seventy"}, DatasetError, "'Age' holds 'seventy', which is not a number"),
    ({"axial": "axial/s01.png"}, {"M/F": "X"}, DatasetError, "'X', a category the model was not trained with"),
    ({"axial": "axial/s01.png"}, {"age": 70}, ConfigError, "unknown clinical value 'age'; this model takes Age, M/F"),
    ({"axial": None, "coronal": ""}, None, ConfigError, "no view given"),
])
def test_inputs_that_do_not_fit_the_model_are_refused_with_what_it_takes(fused, cases, source, clinical, error,
                                                                         match):
    located = ({k: str(cases.parent / v) if v else v for k, v in source.items()} if isinstance(source, dict)
               else str(cases.parent / source))
    with pytest.raises(error, match=match):
        fused.predict(located, clinical=clinical)


def test_a_missing_view_is_refused_for_a_model_trained_without_modality_dropout(fused, cases):
    from medlens.deploy import Predictor

    config = replace(fused.config, train=replace(fused.config.train, modality_dropout=0.0))
    strict = Predictor(config, fused.model, calibration=fused.calibration, postprocess=fused.postprocess,
                       card=fused.card, clinical=fused.clinical)
    with pytest.raises(ConfigError, match=r"view coronal is missing, and this model cannot predict without it.*"
                                          r"train.modality_dropout: 0.*give coronal"):
        strict.predict({"axial": case_of(cases, 1)["axial"]})
    assert strict.predict(case_of(cases, 1))["missing"]["views"] == []


def test_a_model_of_one_image_refuses_views_and_clinical_values(predictor, demo_dir):
    study = demo_dir / "new_studies" / "study_01.png"
    with pytest.raises(ConfigError, match="takes one image per case, got views axial"):
        predictor.predict({"axial": study})
    with pytest.raises(ConfigError, match="takes no clinical values"):
        predictor.predict(study, clinical={"Age": 70})
    assert "missing" not in predictor.predict(study)


def test_heatmap_on_a_fused_model_answers_a_map_or_refuses_clearly(fused, cases):
    from medlens.errors import MedlensError

    try:
        result = fused.predict(case_of(cases, 1), heatmap=True)
    except MedlensError as exc:
        assert "no heat map for this model of several inputs" in str(exc)
    else:
        assert result["heatmap_png"].startswith(b"\x89PNG")


# ---- model card -----------------------------------------------------------------------------------------------------
def test_the_card_lists_the_views_and_the_clinical_fields_for_the_form(fused_bundle):
    card = json.loads((fused_bundle / "card.json").read_text())
    assert card["inputs"] == {
        "views": {"names": ["axial", "coronal"], "fusion": "views", "may_be_missing": True},
        "clinical": [{"name": "Age", "kind": "numeric", "unit": "years"},
                     {"name": "M/F", "kind": "categorical", "categories": ["F", "M"]}]}
    assert "the views axial, coronal (any of them may be missing)" in card["intended_use"]


# ---- HTTP service ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(fused):
    from fastapi.testclient import TestClient

    from medlens.deploy.service import create_app

    with TestClient(create_app(fused)) as c:
        yield c


def view_files(cases: Path, i: int, views=VIEWS) -> dict:
    return {f"view:{v}": (f"{v}.png", (cases.parent / v / f"s{i:02d}.png").read_bytes(), "image/png") for v in views}


def test_the_service_predicts_a_case_of_several_files_and_clinical_json(client, fused, cases):
    response = client.post("/v1/predict", files=view_files(cases, 1), data={"clinical": '{"Age": 71, "M/F": "F"}'})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = fused.predict(case_of(cases, 1), clinical={"Age": 71, "M/F": "F"})
    assert body["probabilities"] == expected["probabilities"] and body["label"] == expected["label"]
    assert body["missing"] == {"views": [], "clinical": []}
    assert body["input"]["views"]["axial"]["type"] == "png" and body["input"]["views"]["coronal"]["bytes"] > 0

    partial = client.post("/v1/predict", files=view_files(cases, 1, ("coronal",)), data={"clinical": '{"Age": 71}'})
    assert partial.status_code == 200, partial.text
    assert partial.json()["missing"] == {"views": ["axial"], "clinical": ["M/F"]}


@pytest.mark.parametrize(("files", "data", "status", "match"), [
    ({"file": ("a.png", b"x")}, {}, 400, "unknown form field 'file'; this model takes view:axial, view:coronal, "
                                         "clinical"),
    (None, {"clinical": "{Age: 71"}, 400, "the field 'clinical': not valid JSON"),
    (None, {"clinical": "[71]"}, 400, "expected a JSON object"),
    (None, {"notes": "x"}, 400, "unknown form field 'notes'"),
    ("three", {}, 400, "more files than this model takes"),
    (None, {"clinical": '{"M/F": "X"}'}, 422, "a category the model was not trained with"),
    (None, {"clinical": '{"age": 71}'}, 422, "unknown clinical value 'age'"),
    ({"clinical": (None, '{"Age": 71}')}, {}, 400, "no image in the form"),
])
def test_the_service_refuses_a_form_that_does_not_fit(client, cases, files, data, status, match):
    if files is None:
        files = view_files(cases, 2)
    elif files == "three":
        files = [*view_files(cases, 2).items(), ("view:axial", ("b.png", b"\x89PNG", "image/png"))]
    response = client.post("/v1/predict", files=files, data=data)
    assert response.status_code == status, response.text
    assert match in response.json()["error"]


def test_the_model_endpoint_exposes_the_inputs_and_the_form_fields(client):
    doc = client.get("/v1/model").json()
    assert doc["inputs"]["views"]["names"] == ["axial", "coronal"]
    assert [c["name"] for c in doc["inputs"]["clinical"]] == ["Age", "M/F"]
    assert doc["service"]["files"] == ["view:axial", "view:coronal"] and doc["service"]["clinical_field"] == "clinical"


def test_every_file_of_a_case_is_held_to_the_upload_limit(fused, cases):
    from fastapi.testclient import TestClient

    from medlens.deploy.service import create_app

    big = cases.parent / "axial" / "s01.png"
    with TestClient(create_app(fused, max_upload_bytes=big.stat().st_size - 1)) as small:
        response = small.post("/v1/predict", files=view_files(cases, 1))
    assert response.status_code == 413, response.text


def test_worker_processes_predict_a_case_of_several_inputs(fused_bundle, fused, cases):
    from fastapi.testclient import TestClient

    from medlens.deploy import Predictor
    from medlens.deploy.service import create_app
    from medlens.deploy.workers import WorkerPool, WorkerSpec

    pool = WorkerPool(WorkerSpec(fused_bundle, workers=1, timeout_s=60))
    with TestClient(create_app(Predictor.from_bundle(fused_bundle), workers=pool)) as c:
        ok = c.post("/v1/predict", files=view_files(cases, 1, ("axial",)), data={"clinical": '{"Age": 70}'})
        refused = c.post("/v1/predict", files=view_files(cases, 1), data={"clinical": '{"M/F": "unknown-sex"}'})
    assert ok.status_code == 200, ok.text
    expected = fused.predict({"axial": case_of(cases, 1)["axial"]}, clinical={"Age": 70})
    assert ok.json()["probabilities"] == expected["probabilities"]
    assert ok.json()["missing"] == {"views": ["coronal"], "clinical": ["M/F"]}
    assert refused.status_code == 422 and "not trained with" in refused.json()["error"]


# ---- web page -------------------------------------------------------------------------------------------------------
@pytest.mark.browser
def test_the_page_builds_one_picker_per_view_and_a_field_per_clinical_input(open_watched, serve, fused, cases):
    server = serve(fused)
    page, errors = open_watched(server.url + "/", (server.url, "data:", "blob:"))
    page.wait_for_selector("#case-form:not([hidden])")
    fields = page.eval_on_selector_all("#case-form .view-file", "ps => ps.map(p => p.dataset.field)")
    assert fields == ["view:axial", "view:coronal"]
    clinical = page.eval_on_selector_all("#case-form .clinical-value", "xs => xs.map(x => [x.dataset.column, "
                                                                        "x.tagName, x.type])")
    assert clinical == [["Age", "INPUT", "number"], ["M/F", "SELECT", "select-one"]]
    assert "years" in page.text_content("#case-form") and page.is_hidden("#drop") and page.is_disabled("#heatmap")
    page.set_input_files("#case-form .view-file[data-field='view:axial']", case_of(cases, 1)["axial"])
    page.fill("#case-form .clinical-value[data-column='Age']", "71")
    page.click("#case-form button")
    page.wait_for_selector("#missing:not([hidden])", timeout=60_000)
    assert "view coronal" in page.text_content("#missing") and "M/F" in page.text_content("#missing")
    expected = fused.predict({"axial": case_of(cases, 1)["axial"]}, clinical={"Age": 71})
    assert page.text_content("#label") == expected["label"]
    assert errors == []
