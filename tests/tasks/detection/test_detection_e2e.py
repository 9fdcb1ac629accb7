"""Detection end to end on the demo smears: plan, train, evaluate, predict, explain, report (``det_run``)."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import medlens_in_process


def test_the_demo_detector_finds_the_objects_on_its_test_split(det_run):
    doc = json.loads((det_run.root / "metrics.json").read_text())
    metrics = doc["metrics"]
    assert doc["task"] == "detection" and doc["split"] == "test" and doc["n_images"] >= 10
    assert metrics["map_50"]["value"] >= 0.8, metrics["map_50"]
    for name in ("cell", "spot"):
        entry = metrics["ap_per_class"]["iou_50"][name]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    assert len(metrics["froc"]["sensitivity"]) == 7 and metrics["froc"]["cpm"]["value"] > 0.7
    assert "mAP@0.5" in det_run.eval_out and "FROC" in det_run.eval_out


def test_the_plan_says_why_of_anchors_and_grid(det_run):
    plan = (det_run.root / "plan.yaml").read_text()
    assert "task: detection" in plan and "retinanet_2d" in plan
    assert "anchors:" in plan and "smallest objects" in plan
    assert "segment:" not in plan and "loss:" not in plan  # what detection ignores stays out of its plan


def test_per_image_table_and_report_sections(det_run):
    rows = list(csv.DictReader((det_run.root / "detection_test.csv").open()))
    assert {"case_id", "truth_boxes", "detections_shown", "truth_cell", "shown_spot"} <= set(rows[0])
    assert sum(int(r["truth_boxes"]) for r in rows) > 0
    html = (det_run.root / "report.html").read_text()
    for heading in ("mAP", "FROC", "precision"):
        assert heading in html
    assert "segment.iterations_per_epoch" not in html  # keys detection ignores are left out of the plan section
    post = json.loads((det_run.root / "postprocess.json").read_text())
    assert 0 < post["display_threshold"] < 1 and post["f1"] > 0.5


def test_predict_writes_boxes_tables_and_overlays(det_run, demo_dir, tmp_path):
    images = sorted((demo_dir / "detection").glob("*.png"))[:3]
    printed = medlens_in_process("predict", det_run.root, *images, "--out", tmp_path)
    assert printed.count("shown:") == 3
    doc = json.loads((tmp_path / f"{images[0].stem}_boxes.json").read_text())
    assert "continuous voxel coordinates" in doc["convention"]
    for box in doc["boxes"]:
        assert box["label"] in ("cell", "spot") and 0 <= box["score"] <= 1 and len(box["box"]) == 4
        assert 0 <= box["box"][0] < box["box"][2] <= 96
    assert (tmp_path / f"{images[0].stem}_boxes.png").read_bytes()[:4] == b"\x89PNG"
    header = (tmp_path / f"{images[0].stem}_boxes.csv").read_text().splitlines()[0]
    assert header.startswith("image,label,score,x_min,y_min,x_max,y_max")


def test_predicted_cells_overlap_the_true_ones(det_run, demo_dir):
    """The boxes found on an image with a known cell lie on it (IoU >= 0.5), on the input's own grid."""
    from medlens.data import open_dataset
    from medlens.deploy import Predictor
    from medlens.tasks.detection.matching import iou

    dataset = open_dataset(demo_dir / "detection.csv")
    predictor = Predictor.from_run(det_run.root)
    hits = total = 0
    for case in [c for c in dataset.cases if len(c.boxes)][:6]:
        image = dataset.load_image(case)
        truth, _ = dataset.load_boxes(case, image)
        result = predictor.predict(case.image)
        shown = [r["box"] for r in result["boxes"] if r["score"] >= result["display_threshold"]]
        if shown:
            hits += int((iou(truth, shown).max(axis=1) >= 0.5).sum())
        total += len(truth)
    assert hits / total >= 0.6  # 9 of 13 measured in one `make test` (the display threshold is F1's best)


def test_explain_draws_the_class_score_map(det_run, demo_dir, tmp_path):
    image = sorted((demo_dir / "detection").glob("*.png"))[0]
    printed = medlens_in_process("explain", det_run.root, image, "--class", "cell", "--out", tmp_path)
    assert "map of cell" in printed
    row = json.loads((tmp_path / "explanations.json").read_text())["inputs"][0]
    assert row["explained_class"] == "cell" and "class scores" in row["map"]
    assert (tmp_path / f"{image.stem}_cam.png").exists()


@pytest.mark.parametrize("bad", ["train.loss=focal", "detect.nms_iou=0", "data.input_size=[90,96]"])
def test_a_plan_detection_cannot_train_is_refused(det_run, bad):
    from medlens.config import apply_overrides
    from medlens.errors import ConfigError
    from medlens.runs import open_run
    from medlens.tasks import task_for

    config = apply_overrides(open_run(det_run.root).read_config(), [bad])
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        task_for(config).check(config)


def test_boxes_from_masks_train_a_3d_detector_that_writes_world_boxes_and_slicer_markups(demo_dir, tmp_path):
    """The demo lesion volumes as a 3D detection set: plan, a short training, evaluation, and predictions on an
    oblique volume in world millimetres with a 3D Slicer markups file."""
    run = tmp_path / "run"
    printed = medlens_in_process("train", demo_dir / "segmentation", "--boxes-from-masks", "--out", run, "--set",
                                 "train.max_epochs=1", "--set", "detect.iterations_per_epoch=4", "--set",
                                 "data.target_spacing=[0.8,0.8,1.5]", "--set", "data.input_size=[48,48,32]",
                                 "--no-progress")  # the native grid: the plan's 2x finer grid costs 8x the time
    assert "detection:" in printed
    plan = (run / "plan.yaml").read_text()
    assert "boxes_from_masks: true" in plan and "retinanet_3d" in plan
    medlens_in_process("evaluate", run, "--bootstrap", "20")
    assert json.loads((run / "metrics.json").read_text())["metrics"]["froc"]["fp_rates"][0] == 0.125
    volume = next((demo_dir / "new_volumes").glob("*.nii.gz"))
    medlens_in_process("predict", run, volume, "--out", tmp_path / "out")
    stem = volume.name.removesuffix(".nii.gz")
    header = (tmp_path / "out" / f"{stem}_boxes.csv").read_text().splitlines()[0]
    assert "z_max" in header and "center_z_mm" in header and "size_z_mm" in header
    markups = json.loads((tmp_path / "out" / f"{stem}_boxes.mrk.json").read_text())
    assert markups["@schema"].startswith("https://raw.githubusercontent.com/slicer/slicer/")
    for roi in markups["markups"]:
        assert roi["type"] == "ROI" and roi["coordinateSystem"] == "LPS" and len(roi["orientation"]) == 9
