"""Ensemble: several classifiers behind the Classifier interface, logits averaged; trained with one
loss per member; Grad-CAM averaged over the members; weights transferred into every member."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medlens.config import Config, DataSection, DatasetSection, ModelSection
from medlens.errors import ConfigError
from medlens.explain import compute_cams
from medlens.models import Ensemble, build_classifier
from medlens.models.weights import save_atomic, transfer_weights
from medlens.tasks import task_for
from medlens.tasks.classification.module import ClassificationModule


def member(seed: int, num_classes: int = 3, name: str = "seedcnn_2d") -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_classifier(name, in_channels=1, num_classes=num_classes, input_size=(28, 28), width=0.25).eval()


def test_forward_is_the_mean_of_the_members_logits():
    members = [member(0), member(1), member(2)]
    ensemble = Ensemble(members).eval()
    x = torch.randn(4, 1, 28, 28)

    each = ensemble.member_logits(x)

    assert each.shape == (3, 4, 3)
    torch.testing.assert_close(each[1], members[1](x))
    torch.testing.assert_close(ensemble(x), (members[0](x) + members[1](x) + members[2](x)) / 3)
    assert not torch.allclose(each[0], each[1])  # different initialisations, different networks


def test_a_single_classifier_is_an_ensemble_of_one():
    single = member(0)
    x = torch.randn(2, 1, 28, 28)

    torch.testing.assert_close(single.member_logits(x), single(x)[None])


def test_the_interface_is_the_members():
    ensemble = Ensemble([member(0), member(1)])

    assert (ensemble.name, ensemble.in_channels, ensemble.num_classes, ensemble.input_size) == \
        ("seedcnn_2d", 1, 3, (28, 28))
    assert ensemble.cam_layer in dict(ensemble.named_modules())
    heads = list(ensemble.head_parameters())
    assert [id(p) for p in heads] == [id(p) for m in ensemble.members for p in m.head.parameters()]
    assert len(heads) == 4  # each member's head weight and bias
    assert len(list(ensemble.backbone_parameters())) + len(heads) == len(list(ensemble.parameters()))


@pytest.mark.parametrize("members", [[0], [0, "other classes"], [0, "other net"]])
def test_members_of_different_kinds_are_refused(members):
    built = [member(0)] + [member(1, num_classes=2) if m == "other classes" else member(1, name="mobilenet_2d")
                           for m in members[1:]]
    with pytest.raises(ValueError, match="two or more classifiers of one architecture"):
        Ensemble(built)


def config(members: int) -> Config:
    return Config(dataset=DatasetSection(class_names=("a", "b"), spatial_dims=2),
                  data=DataSection(input_size=(28, 28), channels=1),
                  model=ModelSection(name="seedcnn_2d", width=0.25, members=members))


def build_model(config: Config):
    return task_for(config).build_model(config)


def test_build_model_makes_an_ensemble_from_model_members():
    assert not isinstance(build_model(config(1)), Ensemble)
    ensemble = build_model(config(3))
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    with pytest.raises(ConfigError, match=r"model.members=0: give 1 \(one network\) or more \(an ensemble\)"):
        build_model(config(0))


def test_each_member_learns_from_its_own_loss():
    torch.manual_seed(0)
    module = ClassificationModule(build_model(config(2)), config(2))
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 0, 1, 1, 0])
    module.generator = torch.Generator().manual_seed(0)
    module.log = lambda *a, **k: None  # no trainer attached; augmentation is off in this config

    loss = module.training_step((x, y), 0)

    alone = [torch.nn.functional.cross_entropy(m(x), y) for m in module.model.members]
    torch.testing.assert_close(loss, alone[0] + alone[1])
    loss.backward()
    grads = [m.head.fc.weight.grad.clone() for m in module.model.members]
    module.model.zero_grad()
    alone[0].backward(retain_graph=True)
    torch.testing.assert_close(module.model.members[0].head.fc.weight.grad, grads[0])  # untouched by member 1


def test_gradcam_of_an_ensemble_averages_its_members():
    single = member(0, num_classes=2)
    twin = Ensemble([single, copy.deepcopy(single)]).eval()
    images = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)

    np.testing.assert_allclose(compute_cams(twin, images, class_indices=[0, 1, 1]),
                               compute_cams(single, images, class_indices=[0, 1, 1]), atol=1e-5)
    mixed = Ensemble([single, member(5, num_classes=2)]).eval()
    maps = compute_cams(mixed, images, class_indices=[0, 1, 1])
    assert maps.shape == (3, 28, 28) and maps.max() <= 1.0
    assert not np.allclose(maps, compute_cams(single, images, class_indices=[0, 1, 1]))


def test_a_single_networks_weights_seed_every_member(tmp_path):
    source = member(7, num_classes=2)
    save_atomic(source.state_dict(), tmp_path / "weights.pt")
    target = Ensemble([member(0, num_classes=2), member(1, num_classes=2)]).eval()

    report = transfer_weights(target, tmp_path / "weights.pt")

    assert report["loaded"] == len(target.state_dict()) and report["reinitialised"] == []
    x = torch.randn(2, 1, 28, 28)
    for m in target.members:
        torch.testing.assert_close(m(x), source(x))


@pytest.mark.parametrize(("fraction", "epochs", "steps", "decay"), [(0.05, 100, 17, 1 - 1 / 85), (0.05, 3, 4, 0.0),
                                                                     (0.1, 20, 50, 0.99)])
def test_the_weight_average_spans_a_share_of_the_steps(fraction, epochs, steps, decay):
    from dataclasses import replace

    from medlens.engine.lightning import weight_averaging

    c = config(1)
    c = replace(c, train=replace(c.train, ema_fraction=fraction, max_epochs=epochs))
    (callback,) = weight_averaging(c, steps)
    average = callback._kwargs["avg_fn"]
    ema, param = torch.tensor([1.0]), torch.tensor([0.0])
    torch.testing.assert_close(average(ema, param, 1), torch.tensor([decay]))  # decay * ema + (1 - decay) * param
    assert weight_averaging(replace(c, train=replace(c.train, ema_fraction=0.0)), steps) == []
