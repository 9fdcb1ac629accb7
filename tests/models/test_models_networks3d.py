"""The fast 3D networks: ACS and (2+1)D convolutions by hand, 2.5D slice stacks, sizes, widths, export parity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medlens.deploy.export import OnnxRunner, TorchRunner, TorchScriptRunner, export_onnx, export_torchscript
from medlens.models import build_classifier
from medlens.models.networks3d import ACSConv3d, BroadcastSum, conv2plus1d

NETWORKS = ("acsresnet18_3d", "r21dresnet18_3d", "slices25d_3d")



def test_acs_conv_is_a_3d_conv_whose_kernels_lie_in_three_planes():
    torch.manual_seed(0)
    acs = ACSConv3d(2, 7, 3, stride=2, padding=1)
    x = torch.randn(1, 2, 9, 10, 11)

    # the same convolution written as one 3x3x3 kernel, zero outside each group's plane
    axial, coronal, sagittal = (conv.weight for conv in acs.planes)
    full = torch.zeros(7, 2, 3, 3, 3)
    full[:3, :, 1:2, :, :] = axial       # 7 = 3 + 2 + 2 output channels
    full[3:5, :, :, 1:2, :] = coronal
    full[5:, :, :, :, 1:2] = sagittal
    expected = nn.functional.conv3d(x, full, stride=2, padding=1)

    assert [tuple(c.weight.shape[2:]) for c in acs.planes] == [(1, 3, 3), (3, 1, 3), (3, 3, 1)]
    assert torch.allclose(acs(x), expected, atol=1e-5)
    assert acs(x).shape == nn.Conv3d(2, 7, 3, stride=2, padding=1)(x).shape == (1, 7, 5, 5, 6)


def test_2plus1d_pair_matches_the_3d_kernel_in_parameters_and_output_shape():
    conv = nn.Conv3d(16, 32, 3, stride=2, padding=1, bias=False)
    pair = conv2plus1d(conv)
    x = torch.randn(2, 16, 8, 12, 10)

    # Tran et al.: M = floor(27 * 16 * 32 / (9 * 16 + 3 * 32)) = floor(13824 / 240) = 57
    assert pair[0].out_channels == 57
    assert pair[0].kernel_size == (1, 3, 3) and pair[0].stride == (1, 2, 2)
    assert pair[3].kernel_size == (3, 1, 1) and pair[3].stride == (2, 1, 1)
    weights = pair[0].weight.numel() + pair[3].weight.numel()
    assert weights == 57 * (9 * 16 + 3 * 32) == 13680  # the 3D kernel has 13824: short by less than one M
    assert pair(x).shape == conv(x).shape == (2, 32, 4, 6, 5)


def test_broadcast_sum_averages_to_the_sum_of_the_three_maps_averages():
    axial, coronal, sagittal = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 3, 6), torch.randn(2, 4, 3, 5)

    volume = BroadcastSum()(axial, coronal, sagittal)

    assert volume.shape == (2, 4, 3, 5, 6)
    assert torch.allclose(volume[:, :, 1, 2, 4], axial[:, :, 2, 4] + coronal[:, :, 1, 4] + sagittal[:, :, 1, 2])
    means = axial.mean((2, 3)) + coronal.mean((2, 3)) + sagittal.mean((2, 3))
    assert torch.allclose(volume.mean((2, 3, 4)), means, atol=1e-5)


@pytest.mark.parametrize("name", NETWORKS)
def test_only_the_intended_convolutions_remain(name):
    model = build_classifier(name, in_channels=1, num_classes=2, input_size=(28, 28, 28), width=0.25)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]

    if name == "slices25d_3d":  # 2D convolutions after stems whose kernels span one whole axis each
        stems = [tuple(stem.kernel_size) for stem in model.backbone.stems]
        assert stems == [(28, 3, 3), (3, 28, 3), (3, 3, 28)]
        assert all(isinstance(m, nn.Conv2d) for m in convs if all(m is not stem for stem in model.backbone.stems))
    else:  # no full k^3 kernel left: only flat kernels and 1x1x1 shortcuts
        shapes = {tuple(m.kernel_size) for m in convs}
        assert all(isinstance(m, nn.Conv3d) for m in convs) and (3, 3, 3) not in shapes
        assert shapes >= ({(1, 3, 3), (3, 1, 3), (3, 3, 1)} if name.startswith("acs") else {(1, 3, 3), (3, 1, 1)})


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("size", [(20, 28, 24), (64, 64, 64)])
def test_uneven_and_64_cubed_volumes_give_logits_and_a_3d_cam_map(name, size):
    model = build_classifier(name, in_channels=2, num_classes=3, input_size=size, width=0.25).eval()
    seen = []
    layer = dict(model.named_modules())[model.cam_layer]
    layer.register_forward_hook(lambda module, args, output: seen.append(output.shape))

    with torch.no_grad():
        logits = model(torch.randn(1, 2, *size))

    assert logits.shape == (1, 3) and torch.isfinite(logits).all()
    assert len(seen[-1]) == 5 and min(seen[-1][2:]) >= 2


@pytest.mark.parametrize("name", NETWORKS)
def test_half_the_width_has_about_a_quarter_of_the_weights(name):
    count = lambda width: sum(p.numel() for p in build_classifier(  # noqa: E731
        name, in_channels=1, num_classes=2, input_size=(28, 28, 28), width=width).parameters())

    ratio = count(0.25) / count(0.5)

    assert 0.2 < ratio < 0.3  # channels halve, so weights (in x out) quarter


@pytest.mark.e2e  # exports whole networks (5-20 s each on a shared 2-core machine), as tests/deploy does
@pytest.mark.parametrize("name", NETWORKS)
def test_torchscript_and_onnx_give_pytorch_logits(name, tmp_path):
    torch.manual_seed(0)
    model = build_classifier(name, in_channels=1, num_classes=3, input_size=(28, 28, 28), width=0.25).eval()
    example = torch.zeros(1, 1, 28, 28, 28)
    runners = {"torchscript": TorchScriptRunner(export_torchscript(model, example, tmp_path / "model.ts")),
               "onnx": OnnxRunner(export_onnx(model, example, tmp_path / "model.onnx", exporter="torchscript"))}
    images = torch.randn(3, 1, 28, 28, 28, generator=torch.Generator().manual_seed(2)).numpy()

    expected = TorchRunner(model)(images)

    for kind, runner in runners.items():
        got = runner(images)
        assert got.shape == expected.shape == (3, 3), kind
        assert abs(got - expected).max() < 1e-4, kind
        assert abs(runner(images[:1]) - expected[:1]).max() < 1e-4, kind
