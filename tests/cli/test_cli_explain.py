"""``medlens explain`` on classification runs: 2D overlays, 3D heat maps on the input grid, the sanity check."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medlens.io import read_image, write_image


@pytest.fixture
def run_2d(cls_run) -> Path:
    """The session's demo classifier (read only)."""
    return cls_run.root


def test_explain_writes_overlays_with_the_predictions_of_predict(cli, run_2d, demo_dir, tmp_path):
    studies = demo_dir / "new_studies"
    result = cli("explain", run_2d, studies, "--out", tmp_path / "cams")
    assert result.rc == 0, result.err
    doc = json.loads((tmp_path / "cams" / "explanations.json").read_text())
    predicted = cli("predict", run_2d, studies, "--out", tmp_path / "p.json")
    assert predicted.rc == 0
    for row, pred in zip(doc["inputs"], json.loads((tmp_path / "p.json").read_text()), strict=True):
        assert row["predicted"] == pred["predicted"] and row["probabilities"] == pred["probabilities"]
        assert row["explained_class"] == row["predicted"]
        png = PILImage.open(row["overlay"])
        assert png.format == "PNG" and min(png.size) >= 256 and png.mode == "RGB"
    assert doc["sanity"]["n_images"] == 4 and doc["sanity"]["test"].startswith("model-parameter randomisation")
    assert doc["sanity"]["message"] in result.out


def test_an_untrained_network_is_flagged_by_the_randomisation_test(cli, run_2d, demo_dir, tmp_path):
    from medlens.runs import open_run
    from medlens.tasks import task_for
    from medlens.tasks.base import initial_model

    untrained = Path(shutil.copytree(run_2d, tmp_path / "untrained"))
    config = open_run(untrained).read_config()
    torch.save(initial_model(task_for(config), config).state_dict(), untrained / "weights.pt")
    result = cli("explain", untrained, demo_dir / "new_studies", "--out", tmp_path / "cams")
    assert result.rc == 0
    sanity = json.loads((tmp_path / "cams" / "explanations.json").read_text())["sanity"]
    assert not sanity["passed"] and sanity["spearman_mean"] > 0.99
    assert "WARNING: the explanations barely change when the model's weights are randomised" in result.out


def test_the_class_option_and_bad_input(cli, run_2d, demo_dir, tmp_path):
    study = demo_dir / "new_studies" / "study_01.png"
    chosen = cli("explain", run_2d, study, "--class", "normal", "--method", "gradcam++", "--out", tmp_path / "a")
    assert chosen.rc == 0
    row = json.loads((tmp_path / "a" / "explanations.json").read_text())["inputs"][0]
    assert row["explained_class"] == "normal"
    unknown = cli("explain", run_2d, study, "--class", "tumour", "--out", tmp_path / "b")
    assert unknown.rc == 2 and "--class tumour: the run's classes are normal, lesion" in unknown.err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    mixed = cli("explain", run_2d, broken, study, "--out", tmp_path / "c")
    assert mixed.rc == 1 and "broken.png: error" in mixed.out and "1 of 2 input(s)" in mixed.out
    assert (tmp_path / "c" / "study_01_cam.png").exists()


def test_3d_explain_writes_a_heat_map_on_the_inputs_own_oblique_grid(cli, blob_run_3d, make_blob_volume, tmp_path):
    c, s = np.cos(0.4), np.sin(0.4)
    oblique = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    source = write_image(make_blob_volume(np.random.default_rng(7), True, oblique, (0.9, 0.9, 2.5)),
                         tmp_path / "new.nii.gz")
    result = cli("explain", blob_run_3d, source, "--out", tmp_path / "cams")
    assert result.rc == 0, result.err
    heat, original = read_image(tmp_path / "cams" / "new_cam.nii.gz"), read_image(source)
    assert heat.spatial_shape == original.spatial_shape == (20, 20, 12)
    np.testing.assert_allclose(heat.spacing_mm, original.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(heat.origin_mm, original.origin_mm, atol=1e-4)
    np.testing.assert_allclose(heat.direction, original.direction, atol=1e-6)
    assert np.isfinite(heat.array).all() and 0 <= heat.array.min() and heat.array.max() <= 1
    row = json.loads((tmp_path / "cams" / "explanations.json").read_text())["inputs"][0]
    assert tuple(row["hottest_index"]) == np.unravel_index(np.argmax(heat.array[0]), (20, 20, 12))
    panels = PILImage.open(io.BytesIO((tmp_path / "cams" / "new_cam.png").read_bytes()))
    assert panels.size[0] > 1.5 * panels.size[1]  # axial, coronal, sagittal side by side
