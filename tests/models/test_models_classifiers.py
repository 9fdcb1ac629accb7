"""Classifier registry: every model's forward/backward, Grad-CAM layer, head, width, and errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from monai.visualize import GradCAM
from torch import nn

from medlens.errors import ConfigError
from medlens.models import CLASSIFIERS, Classifier, build_classifier
from medlens.registry import Registry

NUM_CLASSES = 3

# name -> (in_channels, input_size). 3D MONAI nets run at 16^3 here to stay fast; 28^3 has its own test.
CASES = {
    "seedcnn_2d": (1, (28, 28)),
    "seedcnn_3d": (1, (28, 28, 28)),
    "resnet18_2d": (3, (28, 28)),
    "resnet18_3d": (1, (16, 16, 16)),
    "resnet34_2d": (1, (28, 28)),
    "resnet34_3d": (1, (16, 16, 16)),
    "resnet50_2d": (1, (28, 28)),
    "resnet50_3d": (1, (16, 16, 16)),
    "densenet121_2d": (1, (28, 28)),
    "densenet121_3d": (2, (16, 16, 16)),
    "efficientnetb0_2d": (3, (28, 28)),
    "mobilenet_2d": (1, (28, 28)),
    "mobilenet_3d": (3, (28, 28, 28)),
    "contextnet_2d": (3, (28, 28)),
    "contextnet_3d": (1, (28, 28, 28)),
    "acsresnet18_3d": (1, (16, 16, 16)),
    "r21dresnet18_3d": (2, (16, 16, 16)),
    "slices25d_3d": (1, (16, 20, 16)),
    "vit_2d": (3, (28, 28)),
    "vit_3d": (1, (28, 28, 28)),
}
NAMES = sorted(CASES)



@functools.cache
def cached_model(name: str) -> Classifier:
    """One model per name for the tests that do not train it."""
    in_channels, input_size = CASES[name]
    torch.manual_seed(0)
    return build_classifier(name, in_channels=in_channels, num_classes=NUM_CLASSES, input_size=input_size)


def batch(name: str, size: int = 2) -> torch.Tensor:
    in_channels, input_size = CASES[name]
    return torch.randn(size, in_channels, *input_size, generator=torch.Generator().manual_seed(1))


def build(name: str = "resnet18_2d", **overrides) -> Classifier:
    """A model with small defaults; keyword arguments override them."""
    options = dict(in_channels=1, num_classes=2, input_size=(28, 28)) | overrides
    return build_classifier(name, **options)


def test_registry_holds_exactly_the_documented_models():
    assert set(CLASSIFIERS.names()) == set(CASES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_gives_logits_and_gradients_at_the_input(name):
    in_channels, input_size = CASES[name]
    torch.manual_seed(0)
    model = build_classifier(name, in_channels=in_channels, num_classes=NUM_CLASSES, input_size=input_size)
    x = batch(name).requires_grad_()

    logits = model.train()(x)
    nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()

    assert logits.shape == (2, NUM_CLASSES)
    first_conv = next(p for p in model.parameters() if p.dim() == 2 + len(input_size))
    assert first_conv.shape[1] == in_channels
    for grad in (first_conv.grad, x.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (model.name, model.spatial_dims, model.in_channels) == (name, len(input_size), in_channels)
    assert (model.num_classes, model.input_size) == (NUM_CLASSES, input_size)


@pytest.mark.parametrize("name", NAMES)
def test_cam_layer_outputs_a_spatial_feature_map(name):
    model = cached_model(name).eval()
    seen = []
    layer = dict(model.named_modules())[model.cam_layer]
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    try:
        with torch.no_grad():
            model(batch(name))
    finally:
        handle.remove()

    shape = seen[-1]
    assert len(shape) == 2 + model.spatial_dims and shape[0] == 2
    # small inputs keep some resolution thanks to the small stem / late pooling
    assert min(shape[2:]) >= 2, f"{name}: cam layer output {tuple(shape)} is (almost) a single voxel"


@pytest.mark.parametrize("name", NAMES)
def test_head_prefix_names_the_final_linear_layer(name):
    model = cached_model(name)
    head = {n: p for n, p in model.named_parameters() if n.startswith(model.head_prefix + ".")}
    linears = [m for n, m in model.named_modules() if n.startswith(model.head_prefix) and isinstance(m, nn.Linear)]

    assert head and linears[-1].out_features == NUM_CLASSES
    assert linears[-1].in_features == model.num_features
    head_ids = {id(p) for p in model.head_parameters()}
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    assert head_ids == {id(p) for p in head.values()}
    assert head_ids.isdisjoint(backbone_ids)
    assert head_ids | backbone_ids == {id(p) for p in model.parameters()}


# resnet34/50 share resnet18's cam layer; the others each pick a different kind of layer
@pytest.mark.parametrize(
    "name", ["seedcnn_2d", "resnet18_2d", "resnet18_3d", "densenet121_2d", "efficientnetb0_2d", "mobilenet_2d",
             "contextnet_2d", "slices25d_3d"],
)
def test_monai_gradcam_runs_on_cam_layer(name):
    in_channels, input_size = CASES[name]
    model = build_classifier(name, in_channels=in_channels, num_classes=NUM_CLASSES, input_size=input_size)
    images = batch(name)

    cam = GradCAM(nn_module=model, target_layers=model.cam_layer)(images)

    assert cam.shape == (2, 1, *CASES[name][1])
    assert torch.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1


@pytest.mark.parametrize("family", ["seedcnn", "resnet18", "resnet50", "mobilenet", "contextnet"])
def test_width_scales_the_parameter_count(family):
    def count(width: float) -> int:
        model = build_classifier(f"{family}_2d", in_channels=1, num_classes=2, input_size=(28, 28), width=width)
        return sum(p.numel() for p in model.parameters())

    assert count(0.25) < count(0.5) < count(1.0) < count(1.5)


@pytest.mark.parametrize("name", ["seedcnn_2d", "mobilenet_2d", "contextnet_2d", "resnet18_2d"])
def test_narrow_models_still_run(name):
    model = build_classifier(name, in_channels=1, num_classes=2, input_size=(28, 28), width=0.25)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 2)


def test_sizes_from_numpy_shapes_are_accepted():
    model = build("seedcnn_2d", input_size=np.array([28, 28]), num_classes=np.int64(2))
    assert model.input_size == (28, 28) and type(model.input_size[0]) is int and type(model.num_classes) is int


def test_dropout_sits_before_the_final_linear():
    model = build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(28, 28), dropout=0.3)
    assert isinstance(model.head[0], nn.Dropout) and model.head[0].p == 0.3
    assert isinstance(model.head[-1], nn.Linear)


@pytest.mark.parametrize(("input_size", "stride"), [((28, 28), (1, 1)), ((64, 64), (2, 2)), ((224, 48), (1, 1))])
def test_resnet_uses_the_small_stem_only_for_small_inputs(input_size, stride):
    model = build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=input_size)
    assert model.backbone.conv1.stride == stride
    assert model.backbone.no_max_pool == (stride == (1, 1))


def test_small_stem_for_densenet_and_efficientnet():
    densenet = build_classifier("densenet121_2d", in_channels=1, num_classes=2, input_size=(28, 28))
    efficientnet = build_classifier("efficientnetb0_2d", in_channels=1, num_classes=2, input_size=(28, 28))
    assert densenet.backbone.features.conv0.stride == (1, 1)
    assert isinstance(densenet.backbone.features.pool0, nn.Identity)
    assert efficientnet.backbone._conv_stem.stride == (1, 1)


@pytest.mark.parametrize("name", ["resnet18_3d", "resnet34_3d", "resnet50_3d", "densenet121_3d"])
def test_heavy_3d_models_accept_28_cubed_input(name):
    model = build_classifier(name, in_channels=1, num_classes=2, input_size=(28, 28, 28)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28, 28)).shape == (1, 2)


# --- errors ----------------------------------------------------------------------------------------


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown classifier `resnet19_2d`; did you mean `resnet18_2d`"):
        build("resnet19_2d")
    with pytest.raises(ConfigError, match=r"did you mean `resnet18_.d` or `resnet18_.d`.*Known classifiers: .*seedcnn"):
        build("resnet18")


def test_2d_model_with_3d_input_names_the_3d_model():
    expected = r"resnet18_2d is a 2D model but the input is 3D \(28, 28, 28\); use resnet18_3d"
    with pytest.raises(ConfigError, match=expected):
        build("resnet18_2d", input_size=(28, 28, 28))
    with pytest.raises(ConfigError, match=r"there is no efficientnetb0_3d, 3D models are: .*densenet121_3d"):
        build("efficientnetb0_2d", input_size=(28, 28, 28))
    with pytest.raises(ConfigError, match="without the channel axis"):
        build("seedcnn_2d", input_size=(1, 28, 28))


@pytest.mark.parametrize("name", ["densenet121_2d", "efficientnetb0_2d"])
def test_width_on_a_fixed_width_model_lists_the_models_that_scale(name):
    with pytest.raises(ConfigError, match=rf"`{name}` has a fixed width.*width=1.0.*resnet18, .*seedcnn"):
        build(name, width=0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"input_size": (4, 28)}, "at least 8 voxels"),
        ({"input_size": (28.0, 28.0)}, "whole numbers of voxels"),
        ({"width": 0.0}, "must be > 0"),
        ({"dropout": 1.0}, r"probability in \[0, 1\)"),
        ({"dropout": "0.1"}, r"probability in \[0, 1\), got '0.1'"),
        ({"num_classes": 0}, "num_classes must be a whole number >= 1"),
        ({"in_channels": 1.5}, "in_channels must be a whole number >= 1"),
    ],
)
def test_out_of_range_options_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(**overrides)


def test_registry_round_trip_and_mistakes():
    things = Registry("thing")
    decorated = things.register("foo_2d")(len)

    assert decorated is len and things.get("foo_2d") is len
    assert "foo_2d" in things and "bar_2d" not in things and things.names() == ["foo_2d"]
    with pytest.raises(ConfigError, match=r"unknown thing `foo_3d`; did you mean `foo_2d`\? Known things: foo_2d"):
        things.get("foo_3d")
    with pytest.raises(ConfigError, match=r"unknown thing `zzz`\. Known things: foo_2d"):
        things.get("zzz")
    with pytest.raises(ValueError, match="already registered"):
        things.register("foo_2d")
    with pytest.raises(ValueError, match="lowercase"):
        things.register("Foo-2D")
