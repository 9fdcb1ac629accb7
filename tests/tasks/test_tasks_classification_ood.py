"""The out-of-distribution guard: the block distances and their combination, the fit and threshold, the stages
found on every family, the file, and the demo classifier's guard against images of other synthetic modalities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medlens.tasks.classification.ood import (
    GUARD_FILE,
    NO_GUARD,
    Gaussian,
    GuardError,
    OodGuard,
    describe_guard,
    extract_features,
    feature_size,
    feature_sizes,
    fit_guard,
    fit_model_guard,
    input_features,
    read_guard,
    save_guard,
    stage_features,
    stage_modules,
)


def _classifier(name: str = "seedcnn_2d", size=(32, 32), width: float = 0.25, seed: int = 0):
    from medlens.models import build_classifier

    torch.manual_seed(seed)
    return build_classifier(name, in_channels=1, num_classes=2, input_size=size, width=width).eval()


def test_a_block_distance_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    gaussian = Gaussian(np.array([[0.0, 0.0], [10.0, 0.0]]), np.eye(2))
    np.testing.assert_allclose(gaussian.distance(np.array([[3.0, 4.0], [10.0, 2.0], [5.0, 30.0]])),
                               [5.0, 2.0, np.hypot(5, 30)])
    stretched = Gaussian(np.zeros((1, 2)), np.diag([1.0, 0.25]))  # variance 4 along the second axis
    np.testing.assert_allclose(stretched.distance(np.array([[0.0, 4.0]])), [2.0])


def test_the_score_is_the_largest_block_distance_standardised_by_validation():
    blocks = {"input": Gaussian(np.zeros((1, 2)), np.eye(2)), "0:layer1": Gaussian(np.zeros((1, 1)), np.eye(1) / 4)}
    guard = OodGuard(blocks, centre=np.array([1.0, 2.0]), scale=np.array([2.0, 0.5]), threshold=3.0, description={})
    features = {"input": np.array([[3.0, 4.0], [0.0, 1.0]]), "0:layer1": np.array([[1.0], [8.0]])}
    # row 0: input (5 - 1) / 2 = 2, layer1 (0.5 - 2) / 0.5 = -3; row 1: input (1 - 1) / 2 = 0, layer1 (4 - 2) / 0.5 = 4
    np.testing.assert_allclose(guard.standardised(features), [[2.0, -3.0], [0.0, 4.0]])
    scores, inside = guard.check(features)
    np.testing.assert_allclose(scores, [2.0, 4.0])
    assert inside.tolist() == [True, False] and guard.num_features == 3


def _blocks(rng, groups: np.ndarray, shift: float = 0.0) -> dict[str, np.ndarray]:
    centres = np.zeros((2, 32))
    centres[1, 0] = 6.0
    n = len(groups)
    return {"input": rng.normal(0, 1, (n, 8)), "0:layer1": centres[groups] + rng.normal(0, 1, (n, 32)) + shift}


def test_the_threshold_lets_95_percent_of_validation_through_and_a_shift_in_one_block_is_flagged():
    rng = np.random.default_rng(0)
    train_groups = rng.integers(0, 2, 400)
    guard = fit_guard(_blocks(rng, train_groups), train_groups, _blocks(rng, rng.integers(0, 2, 200)))
    assert guard.blocks["0:layer1"].means.shape == (2, 32) and guard.blocks["input"].precision.shape == (8, 8)
    assert guard.description["validation_flagged"] == pytest.approx(0.05, abs=0.011)
    assert guard.description["blocks"] == {"input": 8, "0:layer1": 32} and guard.description["num_features"] == 40
    assert np.mean(~guard.check(_blocks(rng, rng.integers(0, 2, 400)))[1]) < 0.12
    assert np.all(~guard.check(_blocks(rng, rng.integers(0, 2, 50), shift=4.0))[1])  # the input block is as usual
    assert guard.description["fitted_on_images"] == 400 and guard.description["classes"] == 2


def test_multilabel_labels_fit_one_gaussian_per_block():
    rng = np.random.default_rng(1)
    guard = fit_guard({"input": rng.normal(0, 1, (60, 8))}, None, {"input": rng.normal(0, 1, (20, 8))})
    assert guard.blocks["input"].means.shape == (1, 8) and guard.description["classes"] == 1


def test_stage_and_input_features_are_channel_statistics():
    out = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]], [[2.0, 2.0], [2.0, 2.0]]]])  # (1, 2, 2, 2)
    np.testing.assert_allclose(stage_features(out).numpy(), [[2.0, 2.0, np.sqrt(4 / 3), 0.0]], rtol=1e-6)
    assert stage_features(torch.ones((3, 300, 2, 2))).shape == (3, 300)  # wider than 256 channels: means only
    flat = torch.full((2, 1, 8, 8), 0.5)
    features = input_features(flat)
    assert features.shape == (2, 16 + 5 + 2)
    np.testing.assert_allclose(features[0].numpy(), [0.5] * 22 + [0.0])
    assert input_features(torch.zeros((1, 2, 8, 8, 8))).shape == (1, 2 * (64 + 7))


@pytest.mark.parametrize(("name", "size", "expected"), [
    ("resnet18_2d", (28, 28), ["layer1", "layer2", "layer3", "layer4"]),
    ("seedcnn_2d", (32, 32), ["features.0", "features.1", "features.2", "features"]),
    ("mobilenet_2d", (64, 64), [*(f"features.stage{i}" for i in range(4)), "features"]),
])
def test_the_stages_are_the_last_module_at_each_resolution(name, size, expected):
    model = _classifier(name, size)
    assert stage_modules(model) == expected
    sizes = feature_sizes(model)
    assert list(sizes) == ["input", *[f"0:{n}" for n in expected]] and sizes["input"] == 16 + 7
    assert feature_size(model) == sum(sizes.values())


def test_an_ensemble_s_blocks_are_its_members_blocks_side_by_side():
    from medlens.models import Ensemble

    members = [_classifier(seed=s) for s in range(2)]
    images = np.random.default_rng(4).random((3, 1, 32, 32), dtype=np.float32)
    features = extract_features(Ensemble(members), images)
    stages = stage_modules(members[0])
    assert list(features) == ["input", *[f"{i}:{s}" for i in range(2) for s in stages]]
    own = extract_features(members[1], images)
    for stage in stages:
        np.testing.assert_allclose(features[f"1:{stage}"], own[f"0:{stage}"], rtol=1e-5, atol=1e-6)
    chosen = extract_features(Ensemble(members), images, blocks=["input", f"1:{stages[-1]}"])
    assert list(chosen) == ["input", f"1:{stages[-1]}"]


@pytest.fixture(scope="module")
def tiny_guard(tmp_path_factory):
    """A seedcnn_2d at width 0.25 and its guard, fitted on noise images and saved."""
    rng = np.random.default_rng(2)
    model = _classifier()
    guard = fit_model_guard(model, rng.random((40, 1, 32, 32)), rng.integers(0, 2, 40), rng.random((20, 1, 32, 32)))
    return model, guard, save_guard(guard, tmp_path_factory.mktemp("guard") / GUARD_FILE)


def test_the_file_round_trips_and_a_missing_file_means_no_guard(tiny_guard, tmp_path):
    model, guard, path = tiny_guard
    assert path.read_bytes()[8:9] == b"{"  # safetensors: a length, then a JSON header; no pickle
    assert path.stat().st_size < 4 * sum(f * (f + 2) for f in feature_sizes(model).values()) + 4096
    back = read_guard(path, model)
    assert list(back.blocks) == list(guard.blocks) == list(feature_sizes(model))
    for name, gaussian in guard.blocks.items():
        np.testing.assert_allclose(back.blocks[name].means, gaussian.means, rtol=1e-6)
        np.testing.assert_allclose(back.blocks[name].precision, gaussian.precision, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(back.centre, guard.centre, rtol=1e-6)
    assert back.threshold == pytest.approx(guard.threshold, rel=1e-6)
    assert back.description == guard.description == describe_guard(path)
    assert guard.description["features"] == "the input and the network's 4 stages"
    assert read_guard(tmp_path / "none" / GUARD_FILE, model) is None
    assert describe_guard(tmp_path / "none" / GUARD_FILE) == NO_GUARD


def test_a_guard_of_another_model_a_damaged_file_or_the_first_layout_is_refused_naming_the_file(tiny_guard, tmp_path):
    from safetensors.numpy import save_file

    _, _, path = tiny_guard
    with pytest.raises(GuardError, match=rf"{GUARD_FILE}: the guard holds blocks of features .*'0:features.0': 16"
                                         r".* but the model gives .*'0:features.0': 32"):
        read_guard(path, _classifier(width=0.5))
    damaged = tmp_path / "damaged" / GUARD_FILE
    damaged.parent.mkdir()
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(GuardError, match=rf"damaged/{GUARD_FILE}: not a readable out-of-distribution guard"):
        read_guard(damaged, _classifier())
    first = tmp_path / "first" / GUARD_FILE
    first.parent.mkdir()
    save_file({"means": np.zeros((2, 64), np.float32), "precision": np.eye(64, dtype=np.float32),
               "threshold": np.asarray(3.0, np.float32)}, str(first), metadata={"medlens_ood": "{}"})
    with pytest.raises(GuardError, match=rf"first/{GUARD_FILE}: a guard of the first layout .* train the run again"):
        read_guard(first, _classifier())


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

    from medlens.data.prepared import open_config_dataset, prepare_split, split_cases
    from medlens.data.splits import read_splits
    from medlens.runs import open_run
    from medlens.tasks import load_model

    run = open_run(cls_run.root)
    config = run.read_config()
    model = load_model(run, config)
    guard = read_guard(run.ood_guard, model)
    assert guard.description["validation_flagged"] <= 0.1 and guard.description["recall_target"] == 0.95
    dataset = open_config_dataset(config)
    test = prepare_split(dataset, "test", split_cases(dataset, read_splits(run.splits, dataset), 0)["test"], config)
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
    assert card["fitted"] and card["method"] == "mahalanobis-stages" and card["num_features"] > 0
    members = run.read_config().model.members  # the plan's ensemble size depends on the timed budget
    assert f"stages over {members} ensemble members" in card["features"] and card["blocks"]["input"] == 16 + 7
    assert card["num_features"] == sum(card["blocks"].values())
    assert card == json.loads(json.dumps(describe_guard(run.ood_guard)))
    markdown = (run.root / "report.md").read_text()
    assert "## Out-of-distribution guard" in markdown and f"{card['threshold']:.4g}" in markdown
