"""Segmentation network registry: every network's forward shape, deep supervision, patch multiples, errors."""

from __future__ import annotations

import pytest
import torch

from medlens.errors import ConfigError
from medlens.models.segmenters import SEGMENTERS, build_segmenter, patch_multiple

NUM_CLASSES = 3
FILTERS = (4, 8, 16)



def topology(dims: int, levels: int = 3):
    strides = ((1,) * dims,) + ((2,) * dims,) * (levels - 1)
    kernels = ((3,) * dims,) * levels
    return strides, kernels


# name -> (in_channels, patch); vnet and unetr need patch sides divisible by 16, swinunetr by 32
CASES = {
    "dynunet_2d": (2, (16, 16)),
    "dynunet_3d": (1, (16, 16, 16)),
    "unet_2d": (1, (16, 16)),
    "unet_3d": (2, (16, 16, 16)),
    "vnet_3d": (1, (16, 16, 16)),
    "unetr_2d": (2, (32, 16)),
    "unetr_3d": (1, (16, 16, 32)),
    "swinunetr_2d": (1, (64, 32)),
    "swinunetr_3d": (1, (64, 32, 32)),  # its lowest level (patch / 32) needs more than one voxel
}
SWIN_FILTERS = (12,)  # swinunetr's feature size must be a multiple of 12


def test_every_registered_segmenter_has_a_case():
    assert sorted(CASES) == SEGMENTERS.names()


@pytest.mark.parametrize("name", sorted(CASES))
def test_segmenter_maps_a_patch_to_class_logits(name):
    torch.manual_seed(0)
    in_channels, patch = CASES[name]
    strides, kernels = topology(len(patch))
    filters = SWIN_FILTERS if name.startswith("swin") else FILTERS
    net = build_segmenter(name, in_channels=in_channels, num_classes=NUM_CLASSES, filters=filters, strides=strides,
                          kernels=kernels, input_size=patch).eval()
    x = torch.randn(2, in_channels, *patch)

    with torch.no_grad():
        out = net(x)

    assert out.shape == (2, NUM_CLASSES, *patch)
    assert torch.isfinite(out).all()
    assert all(p % m == 0 for p, m in zip(patch, patch_multiple(name, strides)))


@pytest.mark.parametrize("name", ["dynunet_2d", "unet_2d"])
def test_2d_segmenter_trains_one_step(name):
    torch.manual_seed(0)
    strides, kernels = topology(2)
    net = build_segmenter(name, in_channels=1, num_classes=2, filters=FILTERS, strides=strides, kernels=kernels)
    x, y = torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))

    torch.nn.functional.cross_entropy(net.train()(x), y).backward()

    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("levels,heads", [(3, 1), (4, 2)])
def test_dynunet_deep_supervision_stacks_heads_in_train_mode(levels, heads):
    torch.manual_seed(0)
    strides, kernels = topology(3, levels)
    net = build_segmenter("dynunet_3d", in_channels=1, num_classes=NUM_CLASSES, filters=(4, 8, 16, 32)[:levels],
                          strides=strides, kernels=kernels, deep_supervision=True)
    x = torch.randn(1, 1, 16, 16, 16)

    train_out = net.train()(x)
    with torch.no_grad():
        eval_out = net.eval()(x)

    assert train_out.shape == (1, 1 + heads, NUM_CLASSES, 16, 16, 16)
    assert eval_out.shape == (1, NUM_CLASSES, 16, 16, 16)
    torch.testing.assert_close(train_out[:, 0].detach(), eval_out)  # head 0 is the main output


def test_dynunet_with_anisotropic_strides_and_kernels():
    strides = ((1, 1, 1), (2, 2, 1), (2, 2, 2))
    kernels = ((3, 3, 1), (3, 3, 1), (3, 3, 3))
    net = build_segmenter("dynunet_3d", in_channels=1, num_classes=2, filters=FILTERS, strides=strides,
                          kernels=kernels).eval()
    patch = (16, 16, 8)

    with torch.no_grad():
        out = net(torch.zeros(1, 1, *patch))

    assert out.shape == (1, 2, *patch)
    assert patch_multiple("dynunet_3d", strides) == (4, 4, 2)


# ---- patch_multiple ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,strides,expected", [
    ("dynunet_3d", ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)), (8, 8, 8)),
    ("dynunet_3d", ((1, 1, 1), (2, 2, 1), (2, 2, 2)), (4, 4, 2)),
    ("dynunet_2d", ((1, 1), (2, 2), (2, 1)), (4, 2)),
    ("unet_3d", ((1, 1, 1), (2, 2, 1), (2, 2, 2)), (4, 4, 4)),  # MONAI's UNet strides every axis alike
    ("unet_2d", ((1, 1), (2, 2), (2, 2), (2, 2)), (8, 8)),
    ("vnet_3d", (), (16, 16, 16)),
    ("vnet_3d", ((1, 1, 1), (2, 2, 2)), (16, 16, 16)),
])
def test_patch_multiple(name, strides, expected):
    assert patch_multiple(name, strides) == expected


# ---- errors --------------------------------------------------------------------------------------------

def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown segmentation network `dynunet3d`; did you mean `dynunet_3d`"):
        build_segmenter("dynunet3d", in_channels=1, num_classes=2)


def test_unknown_name_lists_the_known_networks():
    with pytest.raises(ConfigError, match="Known segmentation networks: dynunet_2d, dynunet_3d"):
        build_segmenter("segformer_3d", in_channels=1, num_classes=2)


@pytest.mark.parametrize("name", ["dynunet_3d", "unet_3d"])
def test_strides_with_the_wrong_number_of_axes_are_rejected(name):
    strides_2d, _ = topology(2)
    _, kernels_3d = topology(3)
    with pytest.raises(ConfigError, match=r"model.strides=\[\[1, 1\], \[2, 2\], \[2, 2\]\]: every level needs 3 "):
        build_segmenter(name, in_channels=1, num_classes=2, filters=FILTERS, strides=strides_2d, kernels=kernels_3d)


def test_kernels_with_the_wrong_number_of_axes_are_rejected():
    strides, _ = topology(2)
    with pytest.raises(ConfigError, match="model.kernels=.*every level needs 2 values for dynunet_2d"):
        build_segmenter("dynunet_2d", in_channels=1, num_classes=2, filters=FILTERS, strides=strides,
                        kernels=((3, 3, 3),) * 3)


def test_dynunet_needs_one_entry_per_level_and_three_levels():
    strides, kernels = topology(3)
    with pytest.raises(ConfigError, match=r"model.filters \(2\), model.strides \(3\) and model.kernels \(3\)"):
        build_segmenter("dynunet_3d", in_channels=1, num_classes=2, filters=(4, 8), strides=strides, kernels=kernels)
    strides, kernels = topology(3, levels=2)
    with pytest.raises(ConfigError, match="at least 3 levels; make a new plan with `medlens plan`"):
        build_segmenter("dynunet_3d", in_channels=1, num_classes=2, filters=(4, 8), strides=strides, kernels=kernels)


def test_unet_needs_one_stride_per_filter_level():
    strides, _ = topology(2, levels=2)
    with pytest.raises(ConfigError, match=r"unet: model.filters \[4, 8, 16\] and model.strides"):
        build_segmenter("unet_2d", in_channels=1, num_classes=2, filters=FILTERS, strides=strides)


def test_vnet_rejects_three_input_channels():
    with pytest.raises(ConfigError, match="vnet_3d takes 1, 2, 4, 8 or 16 input channels, the data have 3; use "
                                          "dynunet_3d or unet_3d"):
        build_segmenter("vnet_3d", in_channels=3, num_classes=2)
