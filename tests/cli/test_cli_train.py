"""plan -> train -> evaluate -> predict through the CLI on the demo data; resume after kill -9; DDP; bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

FAST = ["--set", "train.max_epochs=3", "--set", "train.patience=50", "--no-progress"]


@pytest.fixture
def trained(cls_run) -> Path:
    """The session's demo classifier (read only)."""
    return cls_run.root


def test_plan_writes_an_editable_plan_with_reasons(cli, demo_dir, tmp_path):
    result = cli("plan", demo_dir / "classification.csv", "--out", tmp_path / "plan.yaml", "--time-budget", "30s",
                 "--set", "model.width=0.5")
    assert result.rc == 0, result.err
    from medlens.config import read_plan

    config, reasons = read_plan(tmp_path / "plan.yaml")
    assert config.dataset.task == "binary" and config.dataset.class_names == ("normal", "lesion")
    assert config.data.input_size == (64, 64) and config.data.normalization == "scale01"
    assert config.model.width == 0.5 and reasons["model.width"] == "set on the command line"
    assert "s per epoch measured here" in reasons["train.max_epochs"]
    assert 3 <= config.train.max_epochs <= 100 and config.train.time_budget_s == 30.0


def test_train_leaves_a_complete_run_folder(trained):
    info = json.loads((trained / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_run"] == 3
    for name in ("plan.yaml", "card.json", "splits.json", "weights.pt", "calibration.json", "metrics.csv",
                 "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (trained / name).is_file(), name
    rows = list(csv.DictReader(open(trained / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(float(r["train_loss"]) > 0 and 0 <= float(r["val_auc"]) <= 1 for r in rows)
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(trained.rglob("*.tmp"))
    calibration = json.loads((trained / "calibration.json").read_text())
    assert calibration["temperature"] > 0 and 0 <= calibration["threshold"] <= 1


def test_evaluate_writes_strict_json_with_cis_calibration_and_baseline(cls_run, trained):
    """The session's run was evaluated with `medlens evaluate RUN --bootstrap 50`."""
    doc = json.loads((trained / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    auc = doc["metrics"]["auc"]
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    assert doc["n_cases"] == 32 and doc["grouped_by"] == "patient" and doc["metrics"]["n_groups"] == 16
    assert {"ece_before", "ece_after", "temperature"} <= set(doc["calibration"])
    assert {"auc", "acc"} <= set(doc["medmnist_protocol"]) and "k" in doc["baseline"]
    assert "metrics_youden" in doc
    assert doc["ood_guard"]["n"] == 32 and doc["ood_guard"]["flagged"] <= 0.25  # test images like the training ones
    assert "accuracy" in cls_run.eval_out and "baseline k-NN" in cls_run.eval_out
    predictions = list(csv.DictReader(open(trained / "predictions_test.csv")))
    assert len(predictions) == 32 and {"p_normal", "p_lesion"} <= set(predictions[0])


def test_predict_new_files_uses_the_runs_preprocessing(cli, trained, demo_dir, tmp_path):
    out = tmp_path / "new.csv"
    result = cli("predict", trained, demo_dir / "new_studies", "--out", out)
    assert result.rc == 0, result.out
    rows = list(csv.DictReader(open(out)))
    assert [Path(r["path"]).name for r in rows] == [f"study_{k:02d}.png" for k in range(1, 5)]
    for row in rows:
        assert row["predicted"] in ("normal", "lesion")
        assert abs(float(row["p_normal"]) + float(row["p_lesion"]) - 1) < 1e-4


def test_predict_reports_an_unreadable_file_and_goes_on(cli, trained, demo_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = cli("predict", trained, bad, demo_dir / "new_studies" / "study_01.png")
    assert result.rc == 1
    assert "broken.png: error" in result.out and "study_01.png: " in result.out


def test_an_existing_run_folder_is_never_overwritten(cli, trained, demo_dir):
    before = (trained / "weights.pt").stat().st_mtime_ns
    result = cli("train", demo_dir / "classification.csv", "--out", trained, *FAST)
    assert result.rc == 2 and "already holds a run" in result.err and "--resume" in result.err
    assert (trained / "weights.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize("override, message", [
    ("train.max_epoch=3", "did you mean `max_epochs`"),
    ("model.name=resnet18_3d", "does not take 2D data"),
    ("train.loss=bce", "does not fit a single-label classification task"),
    ("model.name=resnet19_2d", "did you mean"),
])
def test_bad_plan_values_fail_before_training(cli, demo_dir, trained, tmp_path, override, message):
    result = cli("train", demo_dir / "classification.csv", "--plan", trained / "plan.yaml", "--out", tmp_path / "run",
                 "--set", override, *FAST)
    assert result.rc == 2 and message in result.err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_class_without_training_examples_is_refused(cli, demo_dir, tmp_path):
    rows = list(csv.DictReader(open(demo_dir / "classification.csv")))
    for row in rows:
        row["image"] = str(demo_dir / row["image"])
        row["split"] = "test" if row["label"] == "lesion" else ""
    manifest = tmp_path / "skewed.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = cli("train", manifest, "--out", tmp_path / "run", "--allow-outside-root", *FAST)  # paths to demo_dir
    assert result.rc == 2 and "no training" in result.err


def test_init_from_reinitialises_the_head_and_refuses_another_network(cli, trained, demo_dir, tmp_path):
    result = cli("train", demo_dir / "classification.csv", "--plan", trained / "plan.yaml", "--out", tmp_path / "tl",
                 "--init-from", trained, "--set", "train.freeze_epochs=1", "--set", "train.max_epochs=2",
                 "--no-progress")
    assert result.rc == 0, result.err
    assert json.loads((tmp_path / "tl" / "run.json").read_text())["transfer"]["loaded"] > 0
    other = cli("train", demo_dir / "classification.csv", "--plan", trained / "plan.yaml", "--out",
                tmp_path / "other", "--init-from", trained, "--set", "model.name=seedcnn_2d", *FAST)
    assert other.rc == 2 and "another network or task" in other.err


def test_resume_after_kill_9_ends_where_an_uninterrupted_run_ends(demo_dir, trained, kill_and_resume):
    # the session run's plan (weights averaged over the last 5% of steps), as a 2-member ensemble
    kill_and_resume(["train", demo_dir / "classification.csv", "--plan", trained / "plan.yaml", "--set",
                     "train.max_epochs=4", "--set", "train.patience=50", "--set", "data.input_size=[96,96]", "--set",
                     "model.members=2", "--no-progress"], "val_loss", lines=3)


@pytest.mark.e2e
def test_multilabel_manifest_trains_with_bce_and_evaluates_per_label(cli, demo_dir, tmp_path):
    rows = list(csv.DictReader(open(demo_dir / "classification.csv")))
    manifest = tmp_path / "multilabel.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "patient_id"])
        writer.writeheader()
        for row in rows:
            extra = ";marker" if int(row["patient_id"][1:]) % 3 == 0 else ""
            writer.writerow({"image": demo_dir / row["image"], "label": row["label"] + extra,
                             "patient_id": row["patient_id"]})
    # the rows name demo_dir's files from another folder: the flag is recorded in the plan, so evaluate follows them
    assert cli("train", manifest, "--out", tmp_path / "ml", "--set", "train.max_epochs=2", "--no-progress",
               "--allow-outside-root").rc == 0
    from medlens.config import read_plan

    assert read_plan(tmp_path / "ml" / "plan.yaml")[0].train.loss == "bce"
    assert cli("evaluate", tmp_path / "ml", "--bootstrap", "30").rc == 0
    doc = json.loads((tmp_path / "ml" / "metrics.json").read_text())
    assert set(doc["metrics"]["per_class"]) == {"lesion", "marker", "normal"}
    result = cli("predict", tmp_path / "ml", demo_dir / "new_studies" / "study_01.png")
    assert result.rc == 0 and "marker=" in result.out
