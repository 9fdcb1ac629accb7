"""The out-of-distribution guard: the distance, the fit and threshold, the file, and the demo classifier's guard
against images of other synthetic modalities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medlens.tasks.classification.ood import (
    GUARD_FILE,
    NO_GUARD,
    GuardError,
    OodGuard,
    describe_guard,
    extract_features,
    feature_size,
    fit_guard,
    read_guard,
    save_guard,
)


def test_the_score_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    guard = OodGuard(means, np.eye(2), 6.0, {})
    scores, inside = guard.check(np.array([[3.0, 4.0], [10.0, 2.0], [5.0, 30.0]]))
    np.testing.assert_allclose(scores, [5.0, 2.0, np.hypot(5, 30)])
    assert inside.tolist() == [True, True, False]
    stretched = OodGuard(means, np.diag([1.0, 0.25]), 6.0, {})  # variance 4 along the second axis
    np.testing.assert_allclose(stretched.score(np.array([[0.0, 4.0]])), [2.0])


def test_the_threshold_lets_95_percent_of_validation_through_and_flags_far_images():
    rng = np.random.default_rng(0)
    centres = np.zeros((2, 32))
    centres[1, 0] = 6.0
    train_groups = rng.integers(0, 2, 400)
    train = centres[train_groups] + rng.normal(0, 1, (400, 32))
    val = centres[rng.integers(0, 2, 200)] + rng.normal(0, 1, (200, 32))
    guard = fit_guard(train, train_groups, val)
    assert guard.means.shape == (2, 32) and guard.precision.shape == (32, 32)
    assert guard.description["validation_flagged"] == pytest.approx(0.05, abs=0.011)
    fresh = centres[rng.integers(0, 2, 400)] + rng.normal(0, 1, (400, 32))
    assert np.mean(~guard.check(fresh)[1]) < 0.12
    far = rng.normal(0, 1, (50, 32)) + 4.0  # shifted along every feature
    assert np.all(~guard.check(far)[1])
    assert guard.description["fitted_on_images"] == 400 and guard.description["classes"] == 2


def test_multilabel_labels_fit_one_gaussian():
    rng = np.random.default_rng(1)
    guard = fit_guard(rng.normal(0, 1, (60, 8)), None, rng.normal(0, 1, (20, 8)))
    assert guard.means.shape == (1, 8) and guard.description["classes"] == 1


def test_the_file_round_trips_and_a_missing_file_means_no_guard(tmp_path):
    rng = np.random.default_rng(2)
    guard = fit_guard(rng.normal(0, 1, (50, 6)), rng.integers(0, 3, 50), rng.normal(0, 1, (20, 6)))
    path = save_guard(guard, tmp_path / GUARD_FILE)
    assert path.read_bytes()[8:9] == b"{"  # safetensors: a length, then a JSON header; no pickle
    back = read_guard(path, 6)
    np.testing.assert_allclose(back.means, guard.means, rtol=1e-6)
    np.testing.assert_allclose(back.precision, guard.precision, rtol=1e-5)
    assert back.threshold == pytest.approx(guard.threshold, rel=1e-6)
    assert back.description == guard.description == describe_guard(path)
    assert read_guard(tmp_path / "none" / GUARD_FILE, 6) is None
    assert describe_guard(tmp_path / "none" / GUARD_FILE) == NO_GUARD


def test_a_guard_of_another_feature_size_or_a_damaged_file_is_refused_naming_the_file(tmp_path):
    rng = np.random.default_rng(3)
    path = save_guard(fit_guard(rng.normal(0, 1, (30, 4)), None, rng.normal(0, 1, (10, 4))), tmp_path / GUARD_FILE)
    with pytest.raises(GuardError, match=rf"{GUARD_FILE}: the guard holds features of size 4 .* model gives 16"):
        read_guard(path, 16)
    damaged = tmp_path / "damaged" / GUARD_FILE
    damaged.parent.mkdir()
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(GuardError, match=rf"damaged/{GUARD_FILE}: not a readable out-of-distribution guard"):
        read_guard(damaged, 4)


def test_an_ensemble_s_features_are_its_members_features_side_by_side():
    from medlens.models import Ensemble, build_classifier

    torch.manual_seed(0)
    members = [build_classifier("seedcnn_2d", in_channels=1, num_classes=2, input_size=(32, 32)) for _ in range(2)]
    ensemble = Ensemble(members).eval()
    images = np.random.default_rng(4).random((3, 1, 32, 32), dtype=np.float32)
    features = extract_features(ensemble, images)
    f = members[0].num_features
    assert features.shape == (3, 2 * f) == (3, feature_size(ensemble))
    with torch.no_grad():
        np.testing.assert_allclose(features[:, f:], members[1].forward_features(torch.from_numpy(images)).numpy(),
                                   rtol=1e-5, atol=1e-6)


# ---- the demo classifier's guard (the session's trained run) ---------------------------------------------------


def _other_modalities(config, n: int = 12) -> dict[str, np.ndarray]:
    """Images the chest classifier never saw, preprocessed as it preprocesses: ``name -> (n, C, *input_size)``."""
    from medlens.data.synthetic import lesion_volume, smear_image
    from medlens.io import Image, identity_direction
    from medlens.transforms import Preprocessor

    rng, prepare = np.random.default_rng(7), Preprocessor(config.data)

    def prep(pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels, dtype=np.float32)
        scaled = (pixels - pixels.min()) / (np.ptp(pixels) + 1e-6) * 255
        return prepare(Image(scaled[None], (1.0, 1.0), (0.0, 0.0), identity_direction(2), spacing_known=False))

    slices = [lesion_volume(rng)[0][..., 8 + (k % 4) * 5] for k in range(n)]
    y, x = np.mgrid[0:64, 0:64]
    waves = [np.sin(rng.uniform(0.1, 0.6) * (np.cos(a) * x + np.sin(a) * y)) for a in rng.uniform(0, np.pi, n)]
    return {"smears": np.stack([prep(smear_image(rng)[0]) for _ in range(n)]),
            "lesion-volume slices": np.stack([prep(s) for s in slices]),
            "sinusoid textures": np.stack([prep(w) for w in waves])}


def test_the_demo_classifier_flags_other_modalities_and_lets_its_own_test_images_through(cls_run):
    from sklearn.metrics import roc_auc_score

    from medlens.data.prepared import open_config_dataset, prepare_split, resolve_splits, split_cases
    from medlens.runs import open_run
    from medlens.tasks import load_model

    run = open_run(cls_run.root)
    config = run.read_config()
    model = load_model(run, config)
    guard = read_guard(run.ood_guard, feature_size(model))
    assert guard.description["validation_flagged"] <= 0.1 and guard.description["recall_target"] == 0.95
    dataset = open_config_dataset(config)
    test = prepare_split(dataset, "test", split_cases(dataset, resolve_splits(dataset, config), 0)["test"], config)
    test_scores, test_inside = guard.check(extract_features(model, test.images))
    assert np.mean(~test_inside) <= 0.25, test_scores  # about 5% expected; 32 images
    for name, images in _other_modalities(config).items():
        scores, inside = guard.check(extract_features(model, images))
        auroc = roc_auc_score(np.r_[np.zeros(len(test_scores)), np.ones(len(scores))], np.r_[test_scores, scores])
        assert auroc >= 0.95 and np.mean(~inside) >= 0.9, (name, auroc)


def test_the_run_s_card_and_report_say_how_the_guard_was_fitted(cls_run):
    from medlens.deploy.card import model_card
    from medlens.runs import open_run

    run = open_run(cls_run.root)
    whole = model_card(run, run.read_config(), "0" * 64)
    card = whole["ood_guard"]
    assert "Each prediction carries in_distribution" in whole["intended_use"]
    assert card["fitted"] and card["method"] == "mahalanobis" and card["num_features"] > 0
    assert "ensemble members' features concatenated" in card["features"]
    assert card == json.loads(json.dumps(describe_guard(run.ood_guard)))
    markdown = (run.root / "report.md").read_text()
    assert "## Out-of-distribution guard" in markdown and f"{card['threshold']:.4g}" in markdown
