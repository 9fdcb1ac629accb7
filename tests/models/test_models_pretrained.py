"""Weights from elsewhere: each downloadable layout, built here from a MONAI network by renaming its keys into
that library's names (no download), maps back onto the registry network tensor for tensor.

The key patterns are those of torchvision (``resnet.py``, ``densenet.py``, ``efficientnet.py``), timm
(``resnet.py``, ``densenet.py``, ``_efficientnet_blocks.py``), MedicalNet (``models/resnet.py``, saved from
``DataParallel``) and lukemelas' EfficientNet-PyTorch (the layout MONAI downloads).
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from medlens.errors import ConfigError
from medlens.models import Ensemble, build_classifier
from medlens.models.pretrained import adapt_input_conv
from medlens.models.weights import layout_network, save_atomic, transfer_weights

IMAGENET = 1000


def network(name: str, size: int, channels: int = 3, seed: int = 0, width: float | None = None):
    """A registry network; ResNets at a quarter of their width (16x fewer weights: the key patterns are the same)."""
    torch.manual_seed(seed)
    width = width or (0.25 if name.startswith("resnet") else 1.0)
    dims = int(name[-2])
    return build_classifier(name, in_channels=channels, num_classes=2, input_size=(size,) * dims, width=width)


def backbone_state(model) -> dict[str, torch.Tensor]:
    return {k.removeprefix("backbone."): v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")}


def trained_elsewhere(model) -> dict[str, torch.Tensor]:
    """The backbone tensors of ``model``'s architecture with other values (as if trained elsewhere), MONAI names.

    ``2 v + 1`` differs from ``v`` everywhere (no initial value is -1) and keeps variances positive.
    """
    return {k.removeprefix("backbone."): v * 2 + 1 if v.is_floating_point() else v
            for k, v in model.state_dict().items() if k.startswith("backbone.")}


# --- the source layouts, from a MONAI network's state --------------------------------------------


def torchvision_resnet(backbone: dict) -> dict:
    """torchvision and timm ResNets: MONAI's names, no bias in the shortcut convolution, ``fc`` for 1000 classes."""
    state = {k: v for k, v in backbone.items() if not re.search(r"downsample\.0\.bias$", k)}
    features = next(v.shape[0] for k, v in reversed(state.items()) if k.endswith("bn2.weight"))
    return {**state, "fc.weight": torch.randn(IMAGENET, features), "fc.bias": torch.zeros(IMAGENET)}


def medicalnet_resnet(backbone: dict) -> dict:
    """MedicalNet ResNet-18/34: shortcut A (no shortcut weights), a segmentation head, ``module.``, a wrapper dict."""
    state = {k: v for k, v in backbone.items() if ".downsample." not in k}
    state |= {"conv_seg.0.weight": torch.randn(128, 32, 2, 2, 2), "conv_seg.1.weight": torch.ones(32),
              "conv_seg.6.weight": torch.randn(2, 32, 1, 1, 1)}
    return {"state_dict": {f"module.{k}": v for k, v in state.items()}}


def torchvision_densenet(backbone: dict, dotted: bool) -> dict:
    """torchvision's file names a dense layer's parts ``norm.1`` (``dotted``); newer code and timm ``norm1``."""
    sep = "." if dotted else ""
    state = {re.sub(r"\.layers\.(norm|conv)([12])\.", rf".\1{sep}\2.", k): v for k, v in backbone.items()}
    return {**state, "classifier.weight": torch.randn(IMAGENET, 1024), "classifier.bias": torch.zeros(IMAGENET)}


# MONAI MBConvBlock part -> (timm depthwise-separable, timm inverted-residual, torchvision 3-part, 4-part block)
EFFICIENTNET_PARTS = {
    "_expand_conv": (None, "conv_pw", None, "block.0.0"), "_bn0": (None, "bn1", None, "block.0.1"),
    "_depthwise_conv": ("conv_dw", "conv_dw", "block.0.0", "block.1.0"),
    "_bn1": ("bn1", "bn2", "block.0.1", "block.1.1"),
    "_se_reduce": ("se.conv_reduce", "se.conv_reduce", "block.1.fc1", "block.2.fc1"),
    "_se_expand": ("se.conv_expand", "se.conv_expand", "block.1.fc2", "block.2.fc2"),
    "_project_conv": ("conv_pw", "conv_pwl", "block.2.0", "block.3.0"),
    "_bn2": ("bn2", "bn3", "block.2.1", "block.3.1"),
}
EFFICIENTNET_TOP = {"_conv_stem": ("conv_stem", "features.0.0"), "_bn0": ("bn1", "features.0.1"),
                    "_conv_head": ("conv_head", "features.8.0"), "_bn1": ("bn2", "features.8.1")}


def efficientnet(backbone: dict, library: str) -> dict:
    """timm (``blocks.S.I.conv_dw``), torchvision (``features.S+1.I.block.J``) or lukemelas (``_blocks.N.``)."""
    state, index_in_stage = {}, {}
    for key, value in backbone.items():
        if m := re.match(r"_blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)$", key):
            stage, number, part, parameter = int(m[1]), int(m[2]), m[3], m[4]
            i = index_in_stage.setdefault((stage, number), sum(s == stage for s, _ in index_in_stage))
            expands = stage > 0
            if library == "lukemelas":
                state[f"_blocks.{number}.{part}.{parameter}"] = value
            elif library == "timm":
                state[f"blocks.{stage}.{i}.{EFFICIENTNET_PARTS[part][expands]}.{parameter}"] = value
            else:
                state[f"features.{stage + 1}.{i}.{EFFICIENTNET_PARTS[part][2 + expands]}.{parameter}"] = value
        else:
            module, parameter = key.split(".")
            name = module if library == "lukemelas" else EFFICIENTNET_TOP[module][library == "torchvision"]
            state[f"{name}.{parameter}"] = value
    head = {"timm": "classifier", "torchvision": "classifier.1", "lukemelas": "_fc"}[library]
    return {**state, f"{head}.weight": torch.randn(IMAGENET, 1280), f"{head}.bias": torch.zeros(IMAGENET)}


def assert_backbone_equal(target, expected: dict, skip=()) -> None:
    """Every backbone tensor (but ``skip`` and step counters) is exactly the file's (copied, not computed)."""
    own = {k.removeprefix("backbone."): v for k, v in target.state_dict().items() if k.startswith("backbone.")}
    differ = [k for k, v in own.items()
              if k not in skip and not k.endswith("num_batches_tracked") and not torch.equal(v, expected[k])]
    assert differ == []


# --- each layout maps back ---------------------------------------------------------------------

SHORTCUT_BIASES = {f"layer{i}.0.downsample.0.bias" for i in (2, 3, 4)}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_torchvision_or_timm_resnet_loads_all_but_the_head_and_reports_why(tmp_path, suffix):
    target = network("resnet18_2d", 64)
    source = trained_elsewhere(target)
    path = tmp_path / f"resnet18{suffix}"
    save_file(torchvision_resnet(source), path) if suffix == ".safetensors" else \
        torch.save(torchvision_resnet(source), path)

    report = transfer_weights(target, path)

    assert report["layout"] == "torchvision/timm ResNet-18 (2D, ImageNet)"
    assert report["loaded"] == len(target.state_dict()) - 2 - 3  # all but the head and 3 shortcut biases
    assert report["reinitialised"] == ["head.fc.bias", "head.fc.weight"]
    assert report["adapted"] == sorted(f"backbone.{k}" for k in SHORTCUT_BIASES)
    assert_backbone_equal(target, source, skip=SHORTCUT_BIASES)
    assert all(target.state_dict()[f"backbone.{k}"].eq(0).all() for k in SHORTCUT_BIASES)
    assert "(head: always new, for this task's 2 classes; the file's own head (2 tensors) is not used)" in \
        report["summary"]
    assert "bias: the file's convolution has none; set to zero" in report["summary"]
    assert target(torch.randn(2, 3, 64, 64)).shape == (2, 2)


def test_rgb_weights_on_a_grey_network_sum_the_input_convolution_over_rgb(tmp_path):
    target = network("resnet18_2d", 64, channels=1)
    source = trained_elsewhere(target) | {"conv1.weight": torch.randn(16, 3, 7, 7)}
    torch.save(torchvision_resnet(source), tmp_path / "resnet18.pth")

    report = transfer_weights(target, tmp_path / "resnet18.pth")

    torch.testing.assert_close(target.backbone.conv1.weight, source["conv1.weight"].sum(dim=1, keepdim=True))
    assert "adapted backbone.conv1.weight (channels: the file's 3-channel input convolution summed over its " \
           "channels into 1 (timm's adapt_input_conv))" in report["summary"]
    assert "backbone.conv1.weight" in report["adapted"]
    assert target(torch.randn(2, 1, 64, 64)).shape == (2, 2)


def test_other_channel_counts_repeat_the_rgb_filters_and_rescale_them():
    weight = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)

    five = adapt_input_conv(weight, 5)

    assert five.shape == (2, 5, 1, 1)
    torch.testing.assert_close(five[:, :3], weight * 3 / 5)
    torch.testing.assert_close(five[:, 3:], weight[:, :2] * 3 / 5)


def test_the_small_image_stem_is_reinitialised_with_its_reason(tmp_path):
    target = network("resnet18_2d", 28, channels=1)
    source = trained_elsewhere(target) | {"conv1.weight": torch.randn(16, 3, 7, 7)}
    torch.save(torchvision_resnet(source), tmp_path / "resnet18.pth")
    fresh_stem = target.backbone.conv1.weight.detach().clone()

    report = transfer_weights(target, tmp_path / "resnet18.pth")

    assert report["reinitialised"] == ["backbone.conv1.weight", "head.fc.bias", "head.fc.weight"]
    assert "(stem: resnet18_2d uses a 3x3 stride-1 stem for images under 64 px; the file's 7x7 stem does not " \
           "fit)" in report["summary"]
    torch.testing.assert_close(target.backbone.conv1.weight, fresh_stem)
    assert_backbone_equal(target, source, skip={"conv1.weight"} | SHORTCUT_BIASES)


def test_a_medicalnet_resnet_maps_onto_resnet18_3d_and_says_its_shortcuts_start_fresh(tmp_path):
    target = network("resnet18_3d", 64, channels=1)
    source = trained_elsewhere(target)
    torch.save(medicalnet_resnet(source), tmp_path / "resnet_18_23dataset.pth")

    report = transfer_weights(target, tmp_path / "resnet_18_23dataset.pth")

    assert report["layout"] == "MedicalNet ResNet-18 (3D)"
    shortcuts = [k for k in target.state_dict() if ".downsample." in k and not k.endswith("num_batches_tracked")]
    assert len(shortcuts) == 18 and report["missing"] == sorted(shortcuts + ["head.fc.bias", "head.fc.weight"])
    assert report["loaded"] == len(target.state_dict()) - 2 - 18 - 3  # head, shortcuts, their step counters
    assert "shortcut A (parameter-free)" in report["summary"]
    assert "the file's own head (3 tensors) is not used" in report["summary"]
    assert_backbone_equal(target, source, skip={k.removeprefix("backbone.") for k in shortcuts})
    assert target.eval()(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2)


@pytest.mark.parametrize("dotted", [True, False], ids=["torchvision-file", "timm"])
def test_a_densenet121_file_maps_onto_densenet121_2d(tmp_path, dotted):
    target = network("densenet121_2d", 64)
    source = trained_elsewhere(target)
    torch.save(torchvision_densenet(source, dotted), tmp_path / "densenet121.pth")

    report = transfer_weights(target, tmp_path / "densenet121.pth")

    assert report["layout"] == "torchvision/timm DenseNet-121 (2D, ImageNet)"
    assert report["loaded"] == len(target.state_dict()) - 2
    assert report["reinitialised"] == ["head.fc.bias", "head.fc.weight"]
    assert_backbone_equal(target, source)
    assert target.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize("library", ["timm", "torchvision", "lukemelas"])
def test_an_efficientnet_b0_file_maps_block_by_block_onto_monai_names(tmp_path, library):
    target = network("efficientnetb0_2d", 64)
    source = trained_elsewhere(target)
    save_file(efficientnet(source, library), tmp_path / "efficientnet_b0.safetensors")  # safetensors: no key order

    report = transfer_weights(target, tmp_path / "efficientnet_b0.safetensors")

    assert report["layout"].startswith(library) and "EfficientNet-B0 (2D, ImageNet)" in report["layout"]
    assert report["loaded"] == len(target.state_dict()) - 2
    assert report["reinitialised"] == ["head.fc.bias", "head.fc.weight"]
    assert_backbone_equal(target, source)
    assert target.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_an_efficientnet_on_small_images_keeps_its_3x3_stem_and_says_it_runs_at_stride_1(tmp_path):
    target = network("efficientnetb0_2d", 32, channels=1)
    source = trained_elsewhere(target) | {"_conv_stem.weight": torch.randn(32, 3, 3, 3)}
    torch.save(efficientnet(source, "timm"), tmp_path / "efficientnet_b0.pth")

    report = transfer_weights(target, tmp_path / "efficientnet_b0.pth")

    torch.testing.assert_close(target.backbone._conv_stem.weight, source["_conv_stem.weight"].sum(1, keepdim=True))
    assert "stem: loaded, but efficientnetb0_2d runs it at stride 1" in report["summary"]


def test_every_member_of_an_ensemble_gets_the_file(tmp_path):
    target = Ensemble([network("resnet18_2d", 28, seed=s) for s in (1, 2)])
    source = trained_elsewhere(target.members[0]) | {"conv1.weight": torch.randn(16, 3, 7, 7)}
    torch.save(torchvision_resnet(source), tmp_path / "resnet18.pth")

    report = transfer_weights(target, tmp_path / "resnet18.pth")

    assert report["loaded"] == 2 * (len(target.members[0].state_dict()) - 6)  # head, 3 biases, the small stem
    for member in target.members:
        assert_backbone_equal(member, source, skip=SHORTCUT_BIASES | {"conv1.weight"})


def test_the_network_a_file_is_for_can_be_read_before_planning(tmp_path):
    resnet = network("resnet18_3d", 16, channels=1)
    torch.save(medicalnet_resnet(trained_elsewhere(resnet)), tmp_path / "resnet_18.pth")
    save_atomic(resnet.state_dict(), tmp_path / "weights.pt")

    assert layout_network(tmp_path / "resnet_18.pth", spatial_dims=3) == "resnet18_3d"
    assert layout_network(tmp_path / "resnet_18.pth", spatial_dims=2) is None  # a 3D file says nothing for 2D data
    assert layout_network(tmp_path / "weights.pt", spatial_dims=3) is None  # a medlens run has its own plan


# --- files that fit no layer -----------------------------------------------------------------------


def test_a_densenet_file_for_a_resnet_names_the_network_it_is_for(tmp_path):
    torch.save(torchvision_densenet(trained_elsewhere(network("densenet121_2d", 64)), dotted=True),
               tmp_path / "densenet121.pth")
    target = network("resnet18_2d", 64)
    before = {k: v.clone() for k, v in target.state_dict().items()}

    with pytest.raises(ConfigError, match=r"densenet121.pth: a torchvision/timm DenseNet-121 \(2D, ImageNet\) weights "
                                          r"file matches no layer of resnet18_2d; train the network it is for: "
                                          r"--set model.name=densenet121_2d"):
        transfer_weights(target, tmp_path / "densenet121.pth")

    for key, value in target.state_dict().items():  # nothing was loaded
        torch.testing.assert_close(value, before[key])


def test_a_file_for_width_1_on_a_half_width_network_says_to_set_the_width(tmp_path):
    torch.save(torchvision_resnet(trained_elsewhere(network("resnet18_2d", 64, width=1.0))), tmp_path / "resnet18.pth")

    with pytest.raises(ConfigError, match=r"a torchvision/timm ResNet-18 \(2D, ImageNet\) file, but only 0 of \d+ "
                                          r"tensors of resnet18_2d take its weights \(shape: .*--set model.width=1.0"):
        transfer_weights(network("resnet18_2d", 64, width=0.5), tmp_path / "resnet18.pth")


def test_a_2d_imagenet_file_for_a_3d_network_says_which_network_it_fits(tmp_path):
    torch.save(torchvision_resnet(trained_elsewhere(network("resnet18_2d", 64))), tmp_path / "resnet18.pth")

    with pytest.raises(ConfigError, match=r"matches no layer of resnet18_3d; it holds 2D weights for resnet18_2d; use "
                                          r"that network for 2D images, or a 3D file \(MedicalNet for 3D\)"):
        transfer_weights(network("resnet18_3d", 16, channels=1), tmp_path / "resnet18.pth")


def test_a_medicalnet_resnet10_fits_no_registry_network(tmp_path):
    from monai.networks.nets import resnet10

    net = resnet10(spatial_dims=3, n_input_channels=1, widen_factor=0.25)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "resnet_10.pth")

    with pytest.raises(ConfigError, match=r"MedicalNet ResNet-10 \(3D\) weights file matches no layer of resnet18_3d; "
                                          r"no registry network has this layout"):
        transfer_weights(network("resnet18_3d", 16, channels=1), tmp_path / "resnet_10.pth")


def test_a_file_in_no_known_layout_says_which_layouts_are_known(tmp_path):
    vgg = {"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.6.weight": torch.zeros(IMAGENET, 4096)}
    torch.save(vgg, tmp_path / "vgg16.pth")

    with pytest.raises(ConfigError, match=r"vgg16.pth: only 0 of \d+ weight tensors fit this resnet18_2d .* neither a "
                                          r"medlens checkpoint nor a layout medlens recognises \(torchvision / timm"):
        transfer_weights(network("resnet18_2d", 16), tmp_path / "vgg16.pth")
