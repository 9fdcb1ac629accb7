"""``medlens pretrain``: an encoder from images without labels, fine-tuned by ``medlens train --init-from``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FAST = ("--time-budget", "10m", "--set", "train.max_epochs=2", "--set", "train.patience=2", "--no-progress")


def write_pngs(folder: Path, n: int, size: int = 16) -> Path:
    """``n`` grey PNGs: even ones hold a bright square, odd ones a bright bar."""
    from tests.tasks.test_tasks_pretraining import write_images

    return write_images(folder, n, size)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A short pretraining run on a flat folder of 24 unlabelled 16x16 images (seedcnn: seconds on CPU)."""
    from medlens.cli import main

    root = tmp_path_factory.mktemp("pretrain")
    images = write_pngs(root / "flat", 24)
    assert main(["pretrain", str(images), "--out", str(root / "run"), "--set", "model.name=seedcnn_2d",
                 "--set", "model.width=0.5", *FAST]) == 0
    return root / "run"


@pytest.mark.e2e
def test_pretraining_a_folder_of_unlabelled_images_writes_an_encoder_run(pretrained):
    from medlens.config import read_plan

    config = read_plan(pretrained / "plan.yaml")[0]
    assert (config.dataset.task, config.dataset.layout, config.dataset.class_names) == ("pretraining",
                                                                                        "image_folder", ())
    summary = json.loads((pretrained / "pretrain.json").read_text())
    assert summary["feature_size"] > 0 and summary["images_seen"] > 0 and summary["epochs"] == 2
    assert np.isfinite(summary["final_train_loss"]) and np.isfinite(summary["best_val_loss"])
    info = json.loads((pretrained / "run.json").read_text())
    assert info["status"] == "finished" and info["monitor"] == "val_loss"
    assert 'id="training"' in (pretrained / "report.html").read_text()  # the loss curves


@pytest.mark.e2e
def test_its_weights_initialise_a_classifier_trained_with_init_from(pretrained, tmp_path, cli):
    for name in ("square", "bar"):
        write_pngs(tmp_path / "labelled" / name, 8)
    result = cli("train", tmp_path / "labelled", "--init-from", pretrained, "--out", tmp_path / "ft",
                 "--set", "model.members=1", *FAST)
    assert result.rc == 0, result.err
    transfer = json.loads((tmp_path / "ft" / "run.json").read_text())["transfer"]
    assert transfer["loaded"] > 0 and sorted(transfer["reinitialised"]) == ["head.fc.bias", "head.fc.weight"]
    from medlens.config import read_plan

    assert read_plan(tmp_path / "ft" / "plan.yaml")[0].model.name == "seedcnn_2d"  # the encoder's network


@pytest.mark.e2e
def test_a_pretraining_run_refuses_to_predict_and_evaluates_to_a_note_without_labels(pretrained, cli):
    image = next((pretrained.parent / "flat").glob("*.png"))
    result = cli("predict", pretrained, image)
    assert result.rc == 2
    assert ("a pretraining run is an encoder, not a predictor; fine-tune it: medlens train DATA --init-from RUN"
            in result.err)
    evaluated = cli("evaluate", pretrained)
    assert evaluated.rc == 0, evaluated.err
    assert "no class labels, so there is nothing to evaluate" in evaluated.out
    report = (pretrained / "report.html").read_text()
    assert 'id="pretrain-summary"' in report and "nothing to evaluate" in report


def test_train_on_unlabelled_images_points_at_medlens_pretrain(tmp_path, cli):
    write_pngs(tmp_path / "flat", 4)
    (tmp_path / "images.csv").write_text("image\n" + "".join(f"flat/{i:03d}.png\n" for i in range(4)))
    for data, said in ((tmp_path / "flat", "medlens pretrain FOLDER"), (tmp_path / "images.csv",
                                                                        "medlens pretrain CSV")):
        result = cli("train", data, "--no-progress")
        assert result.rc == 2 and said in result.err


def test_pretrain_without_data_or_resume_says_what_to_give(cli):
    result = cli("pretrain")
    assert result.rc == 2 and "give the images to pretrain on, or --resume RUN_FOLDER" in result.err


@pytest.mark.e2e
def test_a_labelled_csv_pretrains_ignoring_labels_and_its_probe_has_a_ci(tmp_path, cli):
    write_pngs(tmp_path / "images", 40)
    (tmp_path / "data.csv").write_text("image,label\n" + "".join(
        f"images/{i:03d}.png,{'bar' if i % 2 else 'square'}\n" for i in range(40)))
    result = cli("pretrain", tmp_path / "data.csv", "--out", tmp_path / "run", "--set", "model.name=seedcnn_2d",
                 *FAST)
    assert result.rc == 0, result.err
    evaluated = cli("evaluate", tmp_path / "run")
    assert evaluated.rc == 0, evaluated.err
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    probe = doc["metrics"]["accuracy"]
    assert 0 <= probe["ci_low"] <= probe["value"] <= probe["ci_high"] <= 1 and doc["n_cases"] == 8
    assert "random_init" in doc and 'id="probe-metrics"' in (tmp_path / "run" / "report.html").read_text()


@pytest.mark.e2e
@pytest.mark.slow
def test_resume_after_kill_9_ends_where_an_uninterrupted_run_ends(tmp_path, kill_and_resume):
    images = write_pngs(tmp_path / "flat", 24)
    kill_and_resume(["pretrain", images, "--set", "model.name=seedcnn_2d", "--time-budget", "10m", "--set",
                     "train.max_epochs=4", "--set", "train.patience=4", "--no-progress"], "val_loss", lines=3)
