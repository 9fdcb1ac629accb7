"""Segmentation through the CLI on the demo lesions: plan -> train -> evaluate -> predict; geometry; resume;
bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlens.data.synthetic import lesion_volume
from medlens.io import Image, read_image, write_image

FAST = ["--set", "train.max_epochs=2", "--set", "segment.iterations_per_epoch=60", "--set", "train.patience=50",
        "--no-progress"]


@pytest.fixture
def seg_root(seg_run) -> Path:
    """The session's demo segmenter (read only)."""
    return seg_run.root


def oblique_lesion(seed: int = 7) -> tuple[Image, np.ndarray]:
    """A lesion volume on another grid than the training data: oblique direction, own origin and spacing."""
    spacing = (0.7, 0.7, 1.9)
    volume, mask = lesion_volume(np.random.default_rng(seed), shape=(54, 54, 26), spacing=spacing)
    angle = np.radians(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Image(volume[None], spacing, (12.5, -40.25, 7.0), tuple(direction.ravel())), mask


def test_train_leaves_a_segmentation_run_folder(seg_root):
    plan = (seg_root / "plan.yaml").read_text()
    assert "task: segmentation" in plan and "dynunet_3d" in plan and "target_spacing" in plan
    info = json.loads((seg_root / "run.json").read_text())
    assert info["status"] == "finished" and info["monitor"] == "val_dice"
    rows = list(csv.DictReader(open(seg_root / "metrics.csv")))
    assert len(rows) == 2 and float(rows[-1]["val_dice_lesion"]) > 0
    post = json.loads((seg_root / "postprocess.json").read_text())
    assert set(post["keep_largest"]) == {"lesion"} and "validation_dice" in post


def test_evaluate_reaches_dice_08_on_the_easy_synthetic_lesions(seg_run):
    """The session's run was evaluated with `medlens evaluate RUN --bootstrap 200 --save-masks`."""
    root = seg_run.root
    doc = json.loads((root / "metrics.json").read_text())  # strict JSON: no NaN
    dice = doc["metrics"]["per_class"]["lesion"]["dice"]
    assert doc["task"] == "segmentation" and doc["n_cases"] == 3 and doc["distances_in"] == "mm"
    assert dice["value"] >= 0.8 and dice["ci_low"] <= dice["value"] <= dice["ci_high"]
    assert doc["metrics"]["per_class"]["lesion"]["hd95_mm"]["value"] is not None
    assert "lesion" in seg_run.eval_out and "HD95" in seg_run.eval_out
    assert len(list((root / "masks_test").glob("*.nii.gz"))) == 3
    assert (root / "segmentation_test.csv").read_text().startswith("case_id,lesion_dice")


def test_predicted_mask_has_exactly_the_inputs_geometry_on_an_oblique_volume(cli, seg_root, tmp_path):
    image, truth = oblique_lesion()
    source = write_image(image, tmp_path / "oblique.nrrd")
    result = cli("predict", seg_root, source, "--out", tmp_path / "out", "--probabilities")
    assert result.rc == 0, result.out
    mask = read_image(tmp_path / "out" / "oblique_seg.nrrd")
    original = read_image(source)
    assert mask.spatial_shape == original.spatial_shape
    for ours, theirs in ((mask.spacing_mm, original.spacing_mm), (mask.origin_mm, original.origin_mm),
                         (mask.direction, original.direction)):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)  # NRRD: spacing x direction, float rounding
    found = mask.array[0] == 1
    assert 2 * (found & (truth == 1)).sum() / (found.sum() + truth.sum()) > 0.6  # resampled both ways, still found
    probs = read_image(tmp_path / "out" / "oblique_probs.nii.gz")
    assert probs.channels == 2 and np.allclose(probs.array.sum(0), 1, atol=1e-4)


def test_predict_reports_an_unreadable_file_and_goes_on(cli, seg_root, demo_dir, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    good = demo_dir / "segmentation" / "imagesTr" / "lesion_000.nii.gz"
    result = cli("predict", seg_root, broken, good, "--out", tmp_path / "out")
    assert result.rc == 1 and "broken.nii.gz: error" in result.out
    assert (tmp_path / "out" / "lesion_000_seg.nii.gz").exists()


def test_explain_maps_the_predicted_lesion_on_the_inputs_own_grid(cli, seg_root, tmp_path):
    image, truth = oblique_lesion()
    source = write_image(image, tmp_path / "oblique.nii.gz")
    result = cli("explain", seg_root, source, "--out", tmp_path / "cams")
    assert result.rc == 0, result.out + result.err
    heat = read_image(tmp_path / "cams" / "oblique_cam.nii.gz")
    assert heat.spatial_shape == image.spatial_shape
    np.testing.assert_allclose(heat.direction, image.direction, atol=1e-6)
    np.testing.assert_allclose(heat.origin_mm, image.origin_mm, atol=1e-4)
    assert np.isfinite(heat.array).all() and 0.9 <= heat.array.max() <= 1.0  # peak 1 before resampling
    row = json.loads((tmp_path / "cams" / "explanations.json").read_text())["inputs"][0]
    assert row["explained_class"] == "lesion" and row["predicted_voxels"]["lesion"] > 0
    assert (tmp_path / "cams" / "oblique_cam.png").stat().st_size > 0


def test_resume_after_kill_9_ends_where_an_uninterrupted_run_ends(demo_dir, seg_root, kill_and_resume):
    kill_and_resume(["train", demo_dir / "segmentation", "--plan", seg_root / "plan.yaml", "--set",
                     "train.max_epochs=3", "--set", "segment.iterations_per_epoch=8", "--set", "train.patience=50",
                     "--set", "data.input_size=[32,32,32]", "--set", "segment.keep_largest=never", "--no-progress"],
                    "val_dice", lines=2)


@pytest.fixture
def seg_copy(demo_dir, tmp_path) -> Path:
    """A private copy of the demo segmentation folder that a test may break."""
    return Path(shutil.copytree(demo_dir / "segmentation", tmp_path / "segmentation"))


def _rewrite_mask(folder: Path, name: str, make) -> None:
    path = folder / "labelsTr" / name
    write_image(make(read_image(path)), path)


def test_a_mask_on_another_grid_is_refused_before_training_naming_the_file(cli, seg_copy, tmp_path):
    _rewrite_mask(seg_copy, "lesion_003.nii.gz", lambda m: Image(m.array[:, :40], m.spacing_mm, m.origin_mm,
                                                                 m.direction))
    result = cli("train", seg_copy, "--out", tmp_path / "run", *FAST)
    assert result.rc == 2 and re.search(r"(?s)mask\.geometry.*lesion_003", result.err), result.err
    assert not (tmp_path / "run").exists()


def test_a_2d_mask_for_a_3d_image_is_refused(cli, seg_copy, tmp_path):
    path = seg_copy / "labelsTr" / "lesion_004.nii.gz"
    mask = read_image(path)
    path.unlink()
    write_image(Image(mask.array[..., 10], mask.spacing_mm[:2], mask.origin_mm[:2], (1.0, 0.0, 0.0, 1.0)), path)
    result = cli("train", seg_copy, "--out", tmp_path / "run", *FAST)
    assert result.rc == 2 and re.search(r"(?s)mask\.dims.*lesion_004", result.err), result.err


def test_unexpected_label_values_are_refused(cli, seg_copy, tmp_path):
    _rewrite_mask(seg_copy, "lesion_005.nii.gz", lambda m: m.with_array(m.array * 3))
    result = cli("train", seg_copy, "--out", tmp_path / "run", *FAST)
    assert result.rc == 2 and re.search(r"(?s)mask\.labels.*lesion_005", result.err), result.err


def test_an_all_background_training_set_is_refused(cli, seg_copy, tmp_path):
    for path in (seg_copy / "labelsTr").iterdir():
        _rewrite_mask(seg_copy, path.name, lambda m: m.with_array(np.zeros_like(m.array)))
    result = cli("train", seg_copy, "--out", tmp_path / "run", *FAST)
    assert result.rc == 2 and "mask.all_background" in result.err and "nothing to learn" in result.err, result.err


def write_2d_pairs(root: Path, count: int = 14) -> Path:
    """``images/`` + ``labels/`` PNG pairs: a bright disc (label 255) on noise, 48 x 48."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :48]
    for i in range(count):
        cy, cx, r = rng.uniform(14, 34), rng.uniform(14, 34), rng.uniform(5, 9)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        image = np.clip(60 + 120 * disc + rng.normal(0, 15, disc.shape), 0, 255).astype(np.uint8)
        for folder, array in (("images", image), ("labels", (disc * 255).astype(np.uint8))):
            write_image(Image(array.T[None], (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)),
                        root / folder / f"disc_{i:02d}.png")
    return root


@pytest.mark.e2e
def test_2d_image_mask_pairs_plan_train_and_evaluate_in_square_millimetres(cli, tmp_path):
    data = write_2d_pairs(tmp_path / "discs")
    plan = cli("plan", data, "--out", tmp_path / "plan.yaml")
    assert plan.rc == 0 and "dynunet_2d" in plan.out and "label_255" in plan.out
    result = cli("train", data, "--plan", tmp_path / "plan.yaml", "--out", tmp_path / "run", "--set",
                 "train.max_epochs=2", "--set", "segment.iterations_per_epoch=25", "--no-progress")
    assert result.rc == 0, result.err
    assert cli("evaluate", tmp_path / "run", "--bootstrap", "50").rc == 0
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert doc["metrics"]["size_unit"] == "mm2" and doc["metrics"]["per_class"]["label_255"]["dice"]["value"] > 0.5
    assert doc["distances_in"] == "mm"  # medlens writes the 1 mm spacing into the PNG (pHYs)
