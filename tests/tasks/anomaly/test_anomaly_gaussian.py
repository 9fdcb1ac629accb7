"""The ``gaussian`` method: per-stage statistics, buffers in the state dict, fitting, scoring, tracing, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.errors import ConfigError
from medlens.models import build_classifier
from medlens.tasks.anomaly.gaussian import GaussianModel, fit_normal_gaussians, stages_of
from medlens.tasks.anomaly.models import image_scores


def gaussian(name="resnet18_2d", size=(32, 32)):
    torch.manual_seed(0)
    classifier = build_classifier(name, in_channels=1, num_classes=2, input_size=size, width=0.25)
    return GaussianModel(classifier).eval()


@pytest.mark.parametrize("name,size", [("resnet18_2d", (32, 32)), ("seedcnn_2d", (24, 24)),
                                       ("resnet18_3d", (16, 16, 16))])
def test_map_is_the_image_score_on_the_input_grid(name, size):
    model = gaussian(name, size)
    with torch.no_grad():
        x = torch.randn(2, 1, *size)
        maps, scores = model(x), model.image_scores(x)
    assert maps.shape == (2, 1, *size)
    assert torch.equal(image_scores(maps), scores)
    assert len(model.stage_statistics(x)) == 1  # the deepest stage


def test_state_dict_is_the_classifier_backbone_plus_the_gaussian():
    model = gaussian()
    classifier = build_classifier("resnet18_2d", in_channels=1, num_classes=5, input_size=(32, 32), width=0.25)
    backbone = {k for k in classifier.state_dict() if k.startswith("backbone.")}
    extra = set(model.state_dict()) - backbone
    assert extra == {"mean_0", "precision_0"}
    # ResNet-18 at width 0.25: the means and sds of layer4's 128 channels
    assert model.state_dict()["mean_0"].shape == (256,) and model.state_dict()["precision_0"].shape == (256, 256)


def test_fitted_normals_score_low_and_changed_images_high():
    model = gaussian()
    generator = np.random.default_rng(0)
    normal = (0.5 + 0.05 * generator.standard_normal((40, 1, 32, 32))).astype(np.float32)
    assert fit_normal_gaussians(model, normal) == 40
    with torch.no_grad():
        seen = model.image_scores(torch.from_numpy(normal[:8]))
        changed = model.image_scores(torch.from_numpy(normal[:8]) * 1.5)  # brighter and more contrasted
    assert seen.max() < 2 < changed.min()  # about 1 for a normal image


def test_gaussian_traces_with_any_batch():
    model = gaussian()
    fit_normal_gaussians(model, np.random.default_rng(1).random((12, 1, 32, 32), dtype=np.float32))
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(1, 1, 32, 32))
        x = torch.randn(3, 1, 32, 32)
        assert torch.allclose(traced(x), model(x), rtol=1e-4)


def test_refusals_say_what_to_do():
    with pytest.raises(ValueError, match="found 1; add normal training cases"):
        fit_normal_gaussians(gaussian(), np.zeros((1, 1, 32, 32), dtype=np.float32))
    with pytest.raises(ConfigError, match="use one of resnet18/34/50 or seedcnn"):
        stages_of("densenet121_2d")


def with_memory(size=16):
    torch.manual_seed(0)
    classifier = build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(32, 32), width=0.25)
    return GaussianModel(classifier, memory_size=size).eval()


def test_gaussian_knn_keeps_every_normal_image_and_scales_its_terms():
    from medlens.tasks.anomaly.gaussian import scale_terms

    model = with_memory(size=16)
    assert set(model.state_dict()) - set(gaussian().state_dict()) == {"memory", "term_scales"}
    generator = np.random.default_rng(0)
    normal = (0.5 + 0.05 * generator.standard_normal((12, 1, 32, 32))).astype(np.float32)
    fit_normal_gaussians(model, normal)
    assert torch.allclose(model.memory.norm(dim=1), torch.ones(16))  # normalised pooled features
    assert len(torch.unique(model.memory, dim=0)) == 12  # 12 images in 16 rows: all kept, 4 repeated
    with torch.no_grad():
        seen = model.terms(torch.from_numpy(normal))
    assert seen.shape == (12, 2) and torch.allclose(seen[:, 1], torch.zeros(12), atol=1e-3)  # each its own nearest
    validation = (0.5 + 0.05 * generator.standard_normal((10, 1, 32, 32))).astype(np.float32)
    with torch.no_grad():
        raw = model.terms(torch.from_numpy(validation)).numpy()
    scales = scale_terms(model, validation)
    assert np.allclose(scales, np.median(raw, axis=0), rtol=1e-5)
    with torch.no_grad():
        scores = model.image_scores(torch.from_numpy(validation)).numpy()
        changed = model.image_scores(torch.from_numpy(validation) * 1.5).numpy()
    assert np.allclose(scores, (raw / np.array(scales)).sum(1), rtol=1e-4)
    assert abs(np.median(scores) - 2) < 0.5 and changed.min() > np.median(scores)  # a typical normal image: ~2


def test_the_memory_is_a_coreset_when_normal_images_outnumber_it():
    model = with_memory(size=5)
    fit_normal_gaussians(model, np.random.default_rng(2).random((20, 1, 32, 32), dtype=np.float32))
    assert len(torch.unique(model.memory, dim=0)) == 5


def test_gaussian_knn_traces_with_any_batch():
    model = with_memory(size=8)
    fit_normal_gaussians(model, np.random.default_rng(1).random((12, 1, 32, 32), dtype=np.float32))
    model.set_scales(np.array([[1.5, 0.2], [2.5, 0.4]]))
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(1, 1, 32, 32))
        x = torch.randn(3, 1, 32, 32)
        assert torch.allclose(traced(x), model(x), rtol=1e-4)
    assert torch.allclose(model.term_scales, torch.tensor([2.0, 0.3]))
