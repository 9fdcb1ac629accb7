"""``medlens evaluate RUN --data OTHER``: a trained model scored on other data, in an evaluation folder of its own."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest


def rows_of(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_the_runs_own_test_cases_as_other_data_give_the_runs_test_figures(cli, cls_run, demo_dir, tmp_path):
    test_ids = set(json.loads((cls_run.root / "splits.json").read_text())["test"])
    rows = [r for r in rows_of(demo_dir / "classification.csv") if r["image"] in test_ids]
    other = write_rows(tmp_path / "hospital_b.csv", rows)
    before = (cls_run.root / "metrics.json").read_text()

    result = cli("evaluate", cls_run.root, "--data", other, "--image-root", demo_dir, "--out", tmp_path / "ext",
                 "--bootstrap", "50")

    assert result.rc == 0, result.err
    ours, theirs = (json.loads(p.read_text()) for p in (cls_run.root / "metrics.json", tmp_path / "ext/metrics.json"))
    assert theirs["n_cases"] == len(rows) == ours["n_cases"] and "baseline" not in theirs
    assert theirs["metrics"]["auc"]["value"] == pytest.approx(ours["metrics"]["auc"]["value"])
    assert theirs["metrics"]["accuracy"]["value"] == pytest.approx(ours["metrics"]["accuracy"]["value"])
    overlap = theirs["external"]["overlap"]
    assert overlap["checked"] and overlap["training"] == 0 and overlap["test"] == len(rows)
    assert "are images of the run's own test split (not independent of its test figures)" in result.out
    assert (tmp_path / "ext/predictions_test.csv").is_file()
    report = (tmp_path / "ext/report.md").read_text()
    assert "## Other data" in report and "are images of the run's own test split" in report
    assert (cls_run.root / "metrics.json").read_text() == before  # the run itself is untouched
    again = cli("evaluate", cls_run.root, "--data", other, "--image-root", demo_dir, "--out", tmp_path / "ext",
                "--bootstrap", "50")
    assert again.rc == 0 and json.loads((tmp_path / "ext/metrics.json").read_text())["n_cases"] == len(rows)
    refused = cli("export", tmp_path / "ext", "--out", tmp_path / "bundle", "--format", "none")
    assert refused.rc == 2 and f"export the run itself: medlens export {cls_run.root.resolve()}" in refused.err
    assert (tmp_path / "ext/weights.pt").stat().st_ino == (cls_run.root / "weights.pt").stat().st_ino  # linked


def test_other_data_with_a_class_the_model_never_learnt_is_refused_and_nothing_is_left(cli, cls_run, demo_dir,
                                                                                      tmp_path):
    rows = rows_of(demo_dir / "classification.csv")[:12]
    rows[0]["label"] = "cyst"
    other = write_rows(tmp_path / "three.csv", rows)

    result = cli("evaluate", cls_run.root, "--data", other, "--image-root", demo_dir, "--out", tmp_path / "ext")

    assert result.rc == 2 and "it has cyst, which the model never learnt" in result.err
    assert not (tmp_path / "ext").exists()


def test_the_segmenter_scores_every_case_of_other_data_and_names_the_images_it_trained_on(cli, seg_run, demo_dir,
                                                                                         tmp_path):
    result = cli("evaluate", seg_run.root, "--data", demo_dir / "segmentation", "--out", tmp_path / "ext",
                 "--bootstrap", "20")

    assert result.rc == 0, result.err
    doc = json.loads((tmp_path / "ext/metrics.json").read_text())
    splits = json.loads((seg_run.root / "splits.json").read_text())
    assert doc["n_cases"] == 12 and doc["external"]["overlap"]["test"] == len(splits["test"])
    assert doc["external"]["overlap"]["training"] == 12 - len(splits["test"])
    assert "are images seg" not in result.out and "trained or validated on (its figures there are optimistic)" in \
        result.out


def test_the_detector_scores_other_data(cli, det_run, demo_dir, tmp_path):
    result = cli("evaluate", det_run.root, "--data", demo_dir / "detection.csv", "--out", tmp_path / "ext",
                 "--bootstrap", "20")

    assert result.rc == 0, result.err
    doc = json.loads((tmp_path / "ext/metrics.json").read_text())
    assert doc["n_images"] == 80 and doc["metrics"]["map_50"]["value"] > 0
    assert doc["external"]["data"] == str(demo_dir / "detection.csv")


def test_a_fused_model_is_compared_with_its_images_alone_without_a_clinical_model_it_cannot_fit(cli, fused_run,
                                                                                                fused_cases, tmp_path):
    result = cli("evaluate", fused_run, "--data", fused_cases, "--out", tmp_path / "ext", "--bootstrap", "20")

    assert result.rc == 0, result.err
    doc = json.loads((tmp_path / "ext/metrics.json").read_text())
    sources = [row["source"] for row in doc["sources"]["rows"]]
    assert sources[:2] == ["all inputs", "images only"] and "clinical values only" not in sources  # no training split
    assert doc["importance"]["note"] == "no validation cases: importances not measured"


def test_a_pretraining_run_is_refused_and_nothing_is_left(cli, demo_dir, tmp_path):
    run = tmp_path / "encoder"
    assert cli("pretrain", demo_dir / "classification", "--out", run, "--set", "train.max_epochs=1",
               "--no-progress").rc == 0
    result = cli("evaluate", run, "--data", demo_dir / "classification", "--out", tmp_path / "ext")

    assert result.rc == 2 and "a pretraining run is an encoder" in result.err and "--init-from" in result.err
    assert not (tmp_path / "ext").exists()


def test_options_that_choose_within_the_runs_own_data_are_refused_with_data(cli, cls_run, demo_dir, tmp_path):
    result = cli("evaluate", cls_run.root, "--data", demo_dir / "classification.csv", "--split", "val")
    assert result.rc == 2 and "--split and --save-masks choose within the run's own data" in result.err
    result = cli("evaluate", cls_run.root, "--out", tmp_path / "x")
    assert result.rc == 2 and "go with --data" in result.err
    copy = tmp_path / "run"
    shutil.copytree(cls_run.root, copy)
    result = cli("evaluate", copy, "--data", demo_dir / "classification.csv", "--out", copy)
    assert result.rc == 2 and "is the run folder itself" in result.err
    result = cli("evaluate", cls_run.root, "--data", demo_dir / "classification.csv", "--out", copy)
    assert result.rc == 2 and "is not an earlier external evaluation" in result.err  # another run is never replaced
