"""The out-of-distribution guard through deployment: run -> bundle (checksummed) -> Predictor -> service JSON and
the web page's warning; a run or bundle from before the guard still predicts, without it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from medlens.deploy import Predictor, export_bundle, open_bundle
from medlens.tasks.classification.ood import GUARD_FILE, GuardError, fit_guard, save_guard


@pytest.fixture(scope="module")
def smear(demo_dir) -> Path:
    """A detection smear: another synthetic modality, which the chest classifier must flag."""
    return demo_dir / "detection" / "smear_000.png"


@pytest.fixture(scope="module")
def study(cls_run, demo_dir) -> Path:
    """A chest image the classifier was trained on: well inside its training data (a new study may, by design,
    land among the 5% of validation-like images above the threshold)."""
    return demo_dir / json.loads((cls_run.root / "splits.json").read_text())["folds"][0]["train"][0]


@pytest.fixture(scope="module")
def onnx_bundle(cls_run, tmp_path_factory) -> Path:
    return export_bundle(cls_run.root, tmp_path_factory.mktemp("ood-bundle") / "model.bundle", formats="onnx",
                         log=lambda m: None)


@pytest.fixture(scope="module")
def old_run(cls_run, tmp_path_factory) -> Path:
    """The demo run as a run made before the guard existed: no guard file."""
    root = shutil.copytree(cls_run.root, tmp_path_factory.mktemp("old") / "run")
    (root / GUARD_FILE).unlink()
    return root


def test_the_bundle_carries_the_guard_checksummed_and_every_backend_answers_as_the_run(cls_run, onnx_bundle, smear,
                                                                                      study):
    sums = json.loads((onnx_bundle / "checksums.json").read_text())["files"]
    assert GUARD_FILE in sums and (onnx_bundle / GUARD_FILE).read_bytes() == (cls_run.root / GUARD_FILE).read_bytes()
    assert open_bundle(onnx_bundle).card["ood_guard"]["fitted"] is True
    predictors = {"run": Predictor.from_run(cls_run.root), "bundle": Predictor.from_bundle(onnx_bundle),
                  "onnx": Predictor.from_bundle(onnx_bundle, backend="onnx")}
    for image, inside in ((smear, False), (study, True)):
        results = {name: p.predict(image) for name, p in predictors.items()}
        for result in results.values():
            assert isinstance(result["ood_score"], float) and result["in_distribution"] is inside
            assert result["ood_score"] == pytest.approx(results["run"]["ood_score"], rel=1e-5)
        threshold = predictors["run"].card["ood_guard"]["threshold"]
        assert (results["run"]["ood_score"] > threshold) is not inside


def test_the_service_answers_ood_score_and_in_distribution(serve, onnx_bundle, smear, study):
    server = serve(Predictor.from_path(onnx_bundle))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        bodies = [client.post("/v1/predict", files={"file": (p.name, p.read_bytes())}).json() for p in (smear, study)]
        card = client.get("/v1/model").json()
    assert [b["in_distribution"] for b in bodies] == [False, True]
    assert bodies[0]["ood_score"] > card["ood_guard"]["threshold"] >= bodies[1]["ood_score"]


def test_predict_writes_the_ood_columns_and_warns(cli, cls_run, smear, study, tmp_path):
    result = cli("predict", cls_run.root, smear, study, "--out", tmp_path / "p.csv")
    assert result.rc == 0 and "WARNING: out of distribution" in result.out.splitlines()[0]
    assert "WARNING" not in result.out.splitlines()[1]
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["in_distribution"] for r in rows] == ["false", "true"] and float(rows[0]["ood_score"]) > 0


def test_a_run_and_a_bundle_from_before_the_guard_predict_without_it(cli, old_run, serve, smear, tmp_path):
    predictor = Predictor.from_run(old_run)
    assert predictor.card["ood_guard"]["fitted"] is False and "no out-of-distribution guard" in \
        predictor.card["ood_guard"]["note"]
    result = predictor.predict(smear)
    assert result["ood_score"] is None and result["in_distribution"] is None and result["label"]
    bundle = export_bundle(old_run, tmp_path / "old.bundle", formats="none", log=lambda m: None)
    assert not (bundle / GUARD_FILE).exists()
    server = serve(Predictor.from_path(bundle))
    body = httpx.post(f"{server.url}/v1/predict", files={"file": ("s.png", smear.read_bytes())}, timeout=60).json()
    assert body["ood_score"] is None and body["in_distribution"] is None
    assert body["probabilities"] == pytest.approx(result["probabilities"], abs=1e-6)
    printed = cli("predict", old_run, smear, "--out", tmp_path / "p.csv")
    assert printed.rc == 0 and "WARNING" not in printed.out
    row = next(csv.DictReader(open(tmp_path / "p.csv")))
    assert row["ood_score"] == row["in_distribution"] == "" and row["predicted"] == result["label"]


def test_a_guard_that_does_not_fit_the_model_or_of_the_first_layout_is_refused_naming_the_file(old_run, smear,
                                                                                               tmp_path):
    from safetensors.numpy import save_file

    run = shutil.copytree(old_run, tmp_path / "run")
    rng = np.random.default_rng(0)
    save_guard(fit_guard({"input": rng.normal(0, 1, (20, 4))}, None, {"input": rng.normal(0, 1, (10, 4))}),
               run / GUARD_FILE)
    with pytest.raises(GuardError, match=rf"{run / GUARD_FILE}: the guard holds blocks of features {{'input': 4}} "
                                         r"but the model gives {'input': 23, '0:"):
        Predictor.from_run(run).predict(smear)
    save_file({"means": np.zeros((2, 4), np.float32), "precision": np.eye(4, dtype=np.float32),
               "threshold": np.asarray(1.0, np.float32)}, str(run / GUARD_FILE), metadata={"medlens_ood": "{}"})
    with pytest.raises(GuardError, match=rf"{run / GUARD_FILE}: a guard of the first layout"):
        Predictor.from_run(run).predict(smear)


# ---- the web page -----------------------------------------------------------------------------------------------

PAGE_CSP = ("default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
            "connect-src 'self'")
ANSWER = {"task": "binary", "label": "lesion", "confidence": 0.8, "model_version": "v-test",
          "probabilities": {"normal": 0.2, "lesion": 0.8}}


@pytest.mark.browser
def test_the_page_warns_when_the_image_is_out_of_distribution(browser, smear):
    from medlens.deploy import service

    html = Path(service.__file__).with_name("page.html").read_text(encoding="utf-8")
    answers = [{**ANSWER, "ood_score": 116.3, "in_distribution": False},
               {**ANSWER, "label": "normal", "ood_score": 20.0, "in_distribution": True}, ANSWER]
    model = {"task": "binary", "class_names": ["normal", "lesion"], "model_version": "v-test",
             "service": {"options": []}}
    asked = []

    def answer(route):
        path = route.request.url.split("medlens.test", 1)[1].split("?")[0]
        if path == "/":
            return route.fulfill(body=html, content_type="text/html", headers={"Content-Security-Policy": PAGE_CSP})
        if path == "/v1/predict":
            asked.append(path)
            return route.fulfill(json=answers[len(asked) - 1])
        return route.fulfill(json={"/healthz": {"status": "ok", "auth": "none"}, "/v1/model": model}[path])

    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route("http://medlens.test/**", answer)
    page.goto("http://medlens.test/", wait_until="load")
    page.wait_for_selector("#model:has-text('binary')")
    page.set_input_files("#file", str(smear))
    page.wait_for_selector("#ood", state="visible", timeout=20_000)
    assert "unlike the images the model was trained on" in page.text_content("#ood")
    assert "116.30" in page.text_content("#ood")
    for label in ("normal", "lesion"):  # in distribution, then a model without a guard: no warning either time
        page.set_input_files("#file", str(smear))
        page.wait_for_selector(f"#label:has-text('{label}')", timeout=20_000)
        assert page.is_hidden("#ood") and page.text_content("#ood") == ""
    page.close()
    assert errors == []


@pytest.mark.browser
def test_the_served_page_warns_for_a_smear_and_not_for_a_chest_image(open_watched, serve, onnx_bundle, smear, study):
    server = serve(Predictor.from_path(onnx_bundle))
    page, errors = open_watched(server.url + "/", (server.url, "data:", "blob:"))
    page.wait_for_selector("#model:has-text('binary')")
    page.set_input_files("#file", str(smear))
    page.wait_for_selector("#ood", state="visible", timeout=60_000)
    assert page.text_content("#ood").startswith("Warning: this image looks unlike the images the model was trained on")
    page.set_input_files("#file", str(study))
    page.wait_for_selector("#ood", state="hidden", timeout=60_000)
    assert page.is_hidden("#error")
    page.close()
    assert errors == []
