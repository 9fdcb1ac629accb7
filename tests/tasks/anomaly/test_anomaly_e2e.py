"""Anomaly runs end to end through the CLI: train on the synthetic blob set, evaluate, export, predict (resume:
``tests/cli/test_cli_anomaly.py``)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from anomaly_blobs import write_blob_set

pytestmark = pytest.mark.e2e
FAST = ("--set", "train.max_epochs=2", "--set", "train.patience=50", "--set", "anomaly.memory_size=400",
        "--no-progress")


def medlens(*argv) -> str:
    """``medlens ARGV`` in this process; what it printed (fails on a non-zero exit)."""
    from medlens.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main([str(a) for a in argv]) == 0, printed.getvalue()[-2000:]
    return printed.getvalue()


@pytest.fixture(scope="module")
def blob_run(tmp_path_factory, blob_csv) -> Path:
    """PatchCore on the 2D blob set (2 epochs of SimCLR), evaluated on its test split."""
    out = tmp_path_factory.mktemp("anomaly") / "run"
    medlens("train", blob_csv, "--task", "anomaly", "--normal", "normal", "--out", out, *FAST,
            "--set", "anomaly.method=patchcore")
    medlens("evaluate", out, "--bootstrap", "200")
    return out


def test_patchcore_finds_planted_blobs(blob_run):
    doc = json.loads((blob_run / "metrics.json").read_text())
    m = doc["metrics"]
    assert m["n_abnormal"] > 0 and m["auroc"]["value"] >= 0.9, m
    assert m["specificity"]["value"] >= 0.7
    calibration = json.loads((blob_run / "calibration.json").read_text())
    assert calibration["normal_above"] <= 0.05 + 1e-9 and calibration["fitted_on"].endswith("normal validation cases")
    rows = (blob_run / "scores_test.csv").read_text().splitlines()
    assert rows[0] == "case_id,patient_id,class,abnormal,anomaly_score,decision" and len(rows) == doc["n_cases"] + 1
    assert "Evaluation (test split" in (blob_run / "report.html").read_text()


def test_weights_carry_the_memory_bank(blob_run):
    import torch

    state = torch.load(blob_run / "weights.pt", weights_only=True)
    assert state["memory"].shape[0] == 400 and state["memory"].abs().sum() > 0


def test_bundle_predicts_as_the_run(blob_run, blob_csv, tmp_path):
    from medlens.deploy import Predictor

    medlens("export", blob_run, "--out", tmp_path / "bundle", "--format", "both")
    image = blob_csv.parent / "blob" / "case070.png"
    expected = Predictor.from_path(blob_run).predict(image, heatmap=True)
    assert expected["decision"] in ("normal", "anomalous") and expected["heatmap_png"][:4] == b"\x89PNG"
    for backend in ("torch", "torchscript", "onnx"):
        got = Predictor.from_path(tmp_path / "bundle", backend=backend).predict(image)
        assert got["decision"] == expected["decision"], backend
        assert got["anomaly_score"] == pytest.approx(expected["anomaly_score"], rel=1e-4), backend
        assert np.allclose(got["anomaly_map"].array, expected["anomaly_map"].array, atol=1e-4)
    printed = medlens("predict", tmp_path / "bundle", image, "--out", tmp_path / "scores.csv")
    assert "anomaly_score=" in printed
    assert (tmp_path / "scores.csv").read_text().startswith("path,anomaly_score,decision")


def test_a_split_without_abnormal_cases_says_so(blob_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(blob_run, run)
    splits = json.loads((run / "splits.json").read_text())
    splits["test"] = [i for i in splits["test"] if i.startswith("normal/")]
    (run / "splits.json").write_text(json.dumps(splits))
    printed = medlens("evaluate", run, "--bootstrap", "50")
    assert "no abnormal case in this split" in printed and "AUROC" not in printed.split("no abnormal")[0]
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    assert m["auroc"] is None and m["specificity"]["value"] is not None


def test_normal_naming_no_class_is_refused(blob_csv, cli, tmp_path):
    result = cli("train", blob_csv, "--task", "anomaly", "--normal", "healthy", "--out", tmp_path / "r")
    assert result.rc != 0 and "no such class" in result.err + result.out and "normal, blob" in result.err + result.out


def test_autoencoder_run(blob_csv, tmp_path):
    out = tmp_path / "ae"
    medlens("train", blob_csv, "--task", "anomaly", "--normal", "normal", "--out", out, "--set",
            "anomaly.method=autoencoder", "--set", "model.name=autoencoder_2d", "--set", "train.max_epochs=5",
            "--no-progress")
    medlens("evaluate", out, "--bootstrap", "50")
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["auroc"]["value"] >= 0.75, m  # 0.92 measured at 5 epochs; reconstruction is the weaker method here


def test_default_gaussian_knn_run_evaluates_and_exports(blob_csv, tmp_path):
    from medlens.deploy import Predictor

    out = tmp_path / "gaussian_knn"
    printed = medlens("train", blob_csv, "--task", "anomaly", "--normal", "normal", "--out", out, *FAST)
    assert "nearest normal image: " in printed and "normal validation cases" in printed
    medlens("evaluate", out, "--bootstrap", "50")
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["method"] == "gaussian_knn" and doc["metrics"]["auroc"]["value"] >= 0.75, doc["metrics"]
    medlens("export", out, "--out", tmp_path / "bundle", "--format", "onnx")
    image = blob_csv.parent / "blob" / "case070.png"
    expected = Predictor.from_path(out).predict(image)
    got = Predictor.from_path(tmp_path / "bundle", backend="onnx").predict(image)
    assert got["anomaly_score"] == pytest.approx(expected["anomaly_score"], rel=1e-4)


def test_3d_smoke(tmp_path):
    data = write_blob_set(tmp_path / "vol", normal=24, abnormal=8, shape=(16, 16, 16), seed=3)
    out = tmp_path / "run3d"
    medlens("train", data, "--task", "anomaly", "--normal", "normal", "--out", out, "--set", "train.max_epochs=1",
            "--set", "anomaly.memory_size=200", "--no-progress")
    medlens("evaluate", out, "--bootstrap", "20")
    printed = medlens("predict", out, data.parent / "blob" / "case030.nii.gz", "--out", tmp_path / "maps")
    assert (tmp_path / "maps" / "case030_anomaly.nii.gz").is_file() and "anomaly_score=" in printed
    from medlens.io import read_image

    assert read_image(tmp_path / "maps" / "case030_anomaly.nii.gz").array.shape[1:] == (16, 16, 16)


def test_explain_shows_the_anomaly_map(blob_run, blob_csv, tmp_path):
    printed = medlens("explain", blob_run, blob_csv.parent / "blob" / "case070.png", "--out", tmp_path / "ex")
    doc = json.loads((tmp_path / "ex" / "explanations.json").read_text())
    row = doc["inputs"][0]
    assert row["predicted"] in ("normal", "anomalous") and row["anomaly_score"] > 0 and doc["sanity"] is None
    assert (tmp_path / "ex" / "case070_cam.png").is_file() and "map of anomaly" in printed


def test_service_body(blob_run, blob_csv, tmp_path):
    import base64

    from medlens.deploy import Predictor

    predictor = Predictor.from_path(blob_run)
    result = predictor.predict(blob_csv.parent / "blob" / "case070.png", heatmap=True)
    body = predictor.task.to_json(result, {"heatmap": True, "map": True}, tmp_path)
    assert set(body) >= {"task", "anomaly_score", "decision", "threshold", "model_version", "heatmap_png", "map_nifti"}
    assert base64.b64decode(body["heatmap_png"])[:4] == b"\x89PNG"
    json.dumps(body)  # JSON-ready


def test_init_from_loads_the_encoder(blob_run, blob_csv, tmp_path):
    out = tmp_path / "warm"
    medlens("train", blob_csv, "--task", "anomaly", "--normal", "normal", "--out", out, "--init-from", blob_run,
            "--set", "train.max_epochs=1", "--set", "anomaly.memory_size=100", "--no-progress",
            "--set", "anomaly.method=patchcore")
    transfer = json.loads((out / "run.json").read_text())["transfer"]
    # every encoder tensor matched by key and shape; the memory (another size here) is rebuilt after training
    assert transfer["reinitialised"] == ["memory"] and transfer["loaded"] > 20


def test_a_folder_of_normal_images_alone_trains_an_anomaly_model_that_flags_blobs(blob_csv, cli, tmp_path):
    """The one-class case the task exists for: no abnormal example at all, one class folder."""
    from medlens.deploy import Predictor

    shutil.copytree(blob_csv.parent / "normal", tmp_path / "data" / "normal")
    refused = cli("train", tmp_path / "data", "--out", tmp_path / "classifier")
    assert refused.rc != 0 and "--task anomaly --normal normal" in refused.err + refused.out

    out = tmp_path / "run"
    medlens("train", tmp_path / "data", "--task", "anomaly", "--normal", "normal", "--out", out, *FAST)
    printed = medlens("evaluate", out, "--bootstrap", "50")

    assert "no abnormal case in this split" in printed
    test = json.loads((out / "splits.json").read_text())["test"]
    predictor = Predictor.from_path(out)
    normal = [predictor.predict(tmp_path / "data" / case)["anomaly_score"] for case in test]
    blobs = [predictor.predict(p)["anomaly_score"] for p in sorted((blob_csv.parent / "blob").glob("*.png"))[:12]]
    assert np.median(blobs) > np.median(normal), (blobs, normal)

    # scored on data that has abnormal images (other data: every class but the normal one is abnormal)
    printed = medlens("evaluate", out, "--data", blob_csv, "--out", tmp_path / "ext", "--bootstrap", "50")
    doc = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    assert doc["n_cases"] == 60 + 24  # every case of the blob set
    assert doc["metrics"]["auroc"]["value"] > 0.5 and doc["external"]["overlap"]["training"] > 0
    assert "trained or validated on" in printed
