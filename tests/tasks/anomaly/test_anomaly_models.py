"""PatchCore and the autoencoder: shapes, the memory in the state dict, --init-from key names, tracing."""

from __future__ import annotations

import pytest
import torch

from medlens.models import build_classifier
from medlens.models.weights import save_atomic, transfer_weights
from medlens.tasks.anomaly.models import AutoencoderModel, PatchCoreModel, autoencoder_levels, image_scores


def patchcore(name="resnet18_2d", size=(32, 32), memory=50):
    torch.manual_seed(0)
    classifier = build_classifier(name, in_channels=1, num_classes=2, input_size=size, width=0.25)
    return PatchCoreModel(classifier, memory_size=memory).eval()


@pytest.mark.parametrize("name,size", [("resnet18_2d", (32, 32)), ("seedcnn_2d", (24, 24)),
                                       ("seedcnn_3d", (16, 16, 16)), ("resnet18_3d", (16, 16, 16))])
def test_maps_have_the_input_grid(name, size):
    model = patchcore(name, size)
    with torch.no_grad():
        maps = model(torch.randn(2, 1, *size))
    assert maps.shape == (2, 1, *size)
    assert model.memory.shape == (50, model.feature_dim)
    assert image_scores(maps).shape == (2,)


def test_state_dict_is_the_classifier_backbone_plus_memory(tmp_path):
    model = patchcore()
    classifier = build_classifier("resnet18_2d", in_channels=1, num_classes=5, input_size=(32, 32), width=0.25)
    keys = set(model.state_dict())
    assert keys - {"memory"} == {k for k in classifier.state_dict() if k.startswith("backbone.")}
    # --init-from a classification (or pretraining) run: the engine's transfer loads the encoder by key name
    save_atomic(classifier.state_dict(), tmp_path / "weights.pt")
    report = transfer_weights(model, tmp_path)
    assert report["loaded"] == len(keys) - 1 and report["missing"] == ["memory"]
    assert torch.equal(model.backbone.conv1.weight, classifier.backbone.conv1.weight)


def test_memory_filled_from_normal_patches_scores_them_near_zero():
    model = patchcore(memory=4000)
    normal = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        features = model.patch_features(normal)
        kept = model.fill_memory(features.flatten(2).transpose(1, 2).reshape(-1, features.shape[1]))
        assert kept == 3 * 16 * 16  # fewer features than slots: all kept
        seen, unseen = model(normal), model(normal + torch.rand(3, 1, 32, 32))
    assert image_scores(seen).max() < 1e-2 < image_scores(unseen).min()


def test_patchcore_traces_with_any_batch():
    model = patchcore()
    with torch.no_grad():
        model.memory.normal_()
        traced = torch.jit.trace(model, torch.zeros(1, 1, 32, 32))
        x = torch.randn(3, 1, 32, 32)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


@pytest.mark.parametrize("size", [(32, 32), (16, 16, 16)])
def test_autoencoder_map_shape(size):
    levels = autoencoder_levels(size)
    model = AutoencoderModel(name=f"autoencoder_{len(size)}d", in_channels=1, input_size=size,
                             channels=(8, 16, 32)[:levels]).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        assert model.reconstruct(x).shape == x.shape and model(x).shape == (2, 1, *size)


def test_autoencoder_levels():
    assert autoencoder_levels((32, 32)) == 3 and autoencoder_levels((28, 28)) == 2 and autoencoder_levels((27,)) == 0


def test_patch_features_bounded_per_image():
    from medlens.tasks.anomaly.infer import patch_features

    model = patchcore()
    images = torch.rand(5, 1, 32, 32).numpy()
    every = patch_features(model, images)
    some = patch_features(model, images, per_image=10, seed=2)
    assert every.shape == (5 * 16 * 16, model.feature_dim) and some.shape == (50, model.feature_dim)
    # the kept rows are patches of the images, not new vectors
    assert torch.isclose(some[:, None], every[None], atol=1e-5).all(-1).any(1).all()
    assert torch.equal(some, patch_features(model, images, per_image=10, seed=2))
