"""Grad-CAM of networks of several inputs: one map per view, none for a missing view, the randomisation test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.config import config_from_dict
from medlens.errors import ConfigError
from medlens.explain.cam import compute_cams, compute_view_cams
from medlens.explain.sanity import randomised_copy
from medlens.models import Ensemble
from medlens.models.fusion import build_fusion_classifier
from medlens.tasks.classification.explain import explain_case, randomisation_test

SIZE = (16, 16)
ABSENT = (0.0, 1.0, 0.0, 0.0, 1.0)  # one numeric column (z, flag), one categorical of two (one-hot, flag)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fused(views: int, encoder: str = "shared", seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return build_fusion_classifier("seedcnn_2d", in_channels=views, views=views, num_classes=2, input_size=SIZE,
                                   width=0.5, encoder=encoder, clinical_absent=ABSENT, **kwargs).eval()


def cases(n: int, views: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, views, *SIZE)).astype(np.float32)
    clinical = np.tile(np.asarray([0.3, 0.0, 1.0, 0.0, 0.0], np.float32), (n, 1))
    return images, clinical


@pytest.mark.parametrize("encoder", ["shared", "separate"])
@pytest.mark.parametrize("views", [2, 3])
def test_one_map_per_view_and_none_for_a_missing_view(views, encoder):
    model = fused(views, encoder)
    images, clinical = cases(3, views)
    images[1, views - 1] = np.nan  # case 1 lacks its last view

    maps = compute_view_cams(model, images, clinical=clinical, class_indices=[0, 1, 1])

    assert maps.shape == (3, views, *SIZE) and maps.dtype == np.float32
    missing = np.isnan(maps).reshape(3, views, -1)
    assert missing[1, views - 1].all()  # no map at all for the missing view
    assert not missing[[0, 2]].any() and not missing[1, : views - 1].any()
    present = maps[~missing.all(axis=2)]
    assert present.min() >= 0 and present.max() <= 1
    assert {float(m.max()) for m in present} <= {0.0, 1.0}  # each view's map scaled by its own peak


def test_gradcam_plus_plus_gives_a_map_per_view():
    maps = compute_view_cams(fused(2), *cases(2, 2)[:1], method="gradcam++")
    assert maps.shape == (2, 2, *SIZE) and np.isfinite(maps).all()


def test_the_shared_encoders_views_come_out_in_view_order():
    """A shared encoder runs the B * V views as one batch; its maps must match separate encoders holding the same
    weights, where each view is run on its own (so a mix-up of rows b * V + v would show)."""
    shared, separate = fused(3, "shared"), fused(3, "separate", seed=1)
    state = shared.state_dict()
    state.update({key.replace("encoders.0.", f"encoders.{v}.", 1): value for key, value in shared.state_dict().items()
                  if key.startswith("encoders.0.") for v in range(3)})
    separate.load_state_dict(state)
    images, clinical = cases(4, 3, seed=2)
    images[:, 1] *= 3.0  # views that differ, so a swap changes the maps
    images[2, 0] = np.nan

    a = compute_view_cams(shared, images, clinical=clinical, class_indices=[1, 1, 0, 1])
    b = compute_view_cams(separate, images, clinical=clinical, class_indices=[1, 1, 0, 1])

    np.testing.assert_allclose(np.nan_to_num(a, nan=-1), np.nan_to_num(b, nan=-1), atol=1e-4)


def test_the_clinical_values_reach_the_network_and_single_maps_are_refused_for_several_views():
    model = fused(2)
    images, _ = cases(2, 2)
    with pytest.raises(ConfigError, match=r"takes clinical values \(B, 5\)"):
        compute_view_cams(model, images, clinical=np.zeros((2, 3), np.float32))
    with pytest.raises(ConfigError, match="takes 2 views in one input.*compute_view_cams"):
        compute_cams(model, images)


def test_one_image_with_clinical_values_keeps_the_single_map_interface():
    model = fused(1)
    images, clinical = cases(2, 1)
    maps = compute_cams(model, images, clinical=clinical)
    assert maps.shape == (2, *SIZE)
    np.testing.assert_allclose(compute_view_cams(model, images, clinical=clinical)[:, 0], maps, atol=1e-6)


def test_an_ensemble_of_fused_networks_averages_each_views_map():
    ensemble = Ensemble([fused(2, seed=0), fused(2, seed=1)]).eval()
    images, clinical = cases(2, 2)
    images[0, 1] = np.nan
    maps = compute_view_cams(ensemble, images, clinical=clinical)
    assert maps.shape == (2, 2, *SIZE) and np.isnan(maps[0, 1]).all() and np.isfinite(maps[1]).all()


def config(views=("front", "side")):
    return config_from_dict({"dataset": {"task": "binary", "class_names": ["negative", "positive"]},
                             "data": {"views": list(views), "fusion": "views", "input_size": list(SIZE)},
                             "clinical": {"numeric": ["marker"], "categorical": ["site=A|B"]}})


def test_explain_case_says_which_view_is_missing_and_the_randomisation_test_runs_per_view():
    model = fused(2)
    images, clinical = cases(3, 2)
    images[0, 1] = np.nan
    calibration = {"temperature": 1.0, "threshold": 0.5}

    explained = [explain_case(model, config(), calibration, images[i], clinical[i], method="gradcam", class_name=None)
                 for i in range(3)]
    assert explained[0].row["missing_views"] == ["side"] and explained[1].row["missing_views"] == []
    assert np.isnan(explained[0].cam[1]).all() and np.isfinite(explained[0].cam[0]).all()
    assert explained[2].row["explained_class"] in ("negative", "positive")
    assert set(explained[1].row["probabilities"]) == {"negative", "positive"}

    check = randomisation_test(model, randomised_copy(model, seed=3), [e.sanity_item for e in explained], "gradcam")
    assert check["n_images"] == 3 and np.isfinite(check["spearman_mean"]) and "view" in check["message"]
    same = randomisation_test(model, model, [e.sanity_item for e in explained], "gradcam")
    # identical weights: every view map with a ranking correlates perfectly (a constant map counts 0), flagged
    assert set(same["spearman_per_image"]) <= {0.0, 0.5, 1.0} and same["spearman_mean"] > 0.5 and not same["passed"]


def fused_run(tmp_path, views=("front", "side")):
    """A run folder of a fused network (untrained: the explanation path is what is tested) on the synthetic set of
    two views and three clinical columns."""
    import json

    from medlens.config import render_plan
    from medlens.data.clinical import ClinicalEncoder
    from medlens.data.manifest import open_manifest
    from medlens.data.synthetic_views import write_interaction_set
    from medlens.runs import new_run
    from medlens.tasks import task_for

    manifest = write_interaction_set(tmp_path / "data", cases=6, size=16)
    plan = config_from_dict({
        "dataset": {"task": "binary", "class_names": ["negative", "positive"], "source": str(manifest)},
        "data": {"views": list(views), "fusion": "views", "input_size": list(SIZE), "channels": 1},
        "model": {"name": "seedcnn_2d", "width": 0.5},
        "clinical": {"numeric": ["marker", "age"], "categorical": ["site=A|B"]}})
    run = new_run(tmp_path / "run", "fused")
    run.plan.write_text(render_plan(plan, {}))
    torch.manual_seed(0)
    torch.save(task_for(plan).build_model(plan).state_dict(), run.weights)
    encoder = ClinicalEncoder.fit(plan.clinical, open_manifest(manifest).cases)
    run.clinical.write_text(json.dumps(encoder.to_dict()))
    return run, manifest


def test_medlens_explain_on_a_fused_run_writes_a_map_per_view_from_a_csv_and_refuses_a_lone_image(tmp_path):
    from medlens.engine.explain import explain_paths

    run, manifest = fused_run(tmp_path)
    cases_csv = manifest.parent / "new.csv"
    cases_csv.write_text("image:front,image:side,marker,age,site\n"
                         "front/case0000.png,side/case0000.png,0.5,43,A\nfront/case0001.png,,1.9,,B\n")
    lines = []
    doc = explain_paths(run.root, [cases_csv, manifest.parent / "front" / "case0002.png"], tmp_path / "cams",
                        log=lines.append)

    first, second, lone = doc["inputs"]
    assert set(first["views"]) == {"front", "side"} and first["missing_views"] == []
    assert all((tmp_path / "cams" / f"front_case0000_{v}_cam.png").exists() for v in ("front", "side"))
    assert second["views"]["side"] == {"missing": True} and second["missing_views"] == ["side"]
    assert second["missing_clinical"] == ["age"] and not (tmp_path / "cams" / "front_case0001_side_cam.png").exists()
    assert "side: missing, no map" in "\n".join(lines)
    assert "takes 2 views (front, side)" in lone["error"]
    assert "columns image:front, image:side, marker, age, site" in lone["error"]
    assert doc["sanity"]["n_images"] == 2 and "over every view a case has" in doc["sanity"]["message"]
