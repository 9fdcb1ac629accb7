"""3D classifiers that get 3D quality cheaply on a CPU (issue 19): registered on import.

All three are ResNet-18 (MONAI's, with the small-image stem of :mod:`.classifiers`) with its
convolutions made cheaper:

- ``acsresnet18_3d``: every k x k x k convolution becomes an ACS convolution (Yang et al.,
  "Reinventing 2D Convolutions for 3D Images", IEEE JBHI 2021): a 2D k x k kernel per output
  channel, the output channels split in three groups applied in the axial ``(1, k, k)``, coronal
  ``(k, 1, k)`` and sagittal ``(k, k, 1)`` planes. A third of a 3D convolution's multiply-adds.
- ``r21dresnet18_3d``: every k x k x k convolution becomes a (2+1)D pair (Tran et al., "A Closer
  Look at Spatiotemporal Convolutions for Action Recognition", CVPR 2018): an in-plane
  ``(1, k, k)`` convolution to ``M`` channels, batch norm, ReLU, then a through-plane ``(k, 1, 1)``
  one, with ``M`` chosen so the pair has the parameters of the full 3D kernel.
- ``slices25d_3d``: 2.5D. The volume's slices along each axis become the channels of a 2D image,
  and the three stacks go through one shared 2D ResNet-18 (a stem of its own per axis, since the
  stacks differ in channels when the volume is not cubic): at 28^3 about a tenth of the ACS
  network's multiply-adds, the trunk running on three 28 x 28 images instead of a 28^3 volume. The
  three 2D feature maps are summed back into a 3D map by broadcasting, ``map[d, h, w] = axial[h, w]
  + coronal[d, w] + sagittal[d, h]``: Grad-CAM sees a real 3D map, and its global average is the
  sum of the three maps' averages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medlens.models.classifiers import CLASSIFIERS, Backbone, build_resnet18


class ACSConv3d(nn.Module):
    """An ACS convolution: 2D kernels applied along the three orthogonal planes of a volume.

    Output channels are split into axial, coronal and sagittal groups of ``ceil``/``floor`` thirds, as
    in the authors' ``ACSConv`` (``github.com/M3DV/ACSConv``); each group is an ordinary 3D convolution
    whose kernel is flat along one axis, so the module exports to ONNX and TorchScript as three convs
    and a concatenation.

    Shapes: ``(B, in_channels, D, H, W) -> (B, out_channels, D', H', W')``, as a ``nn.Conv3d`` with
    the same kernel size, stride and padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = False):
        super().__init__()
        third = out_channels // 3
        groups = [third + (out_channels % 3 > 0), third + (out_channels % 3 > 1), third]
        k, p = kernel_size, padding
        shapes = [((1, k, k), (0, p, p)), ((k, 1, k), (p, 0, p)), ((k, k, 1), (p, p, 0))]
        self.planes = nn.ModuleList(
            nn.Conv3d(in_channels, g, kernel, stride=stride, padding=pad, bias=bias)
            for g, (kernel, pad) in zip(groups, shapes) if g > 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(x) for conv in self.planes], dim=1)


def conv2plus1d(conv: nn.Conv3d) -> nn.Sequential:
    """The (2+1)D pair replacing a cubic ``conv``: ``(1, k, k)`` in-plane, BN, ReLU, ``(k, 1, 1)`` through-plane.

    The middle width ``M = floor(k^3 N_in N_out / (k^2 N_in + k N_out))`` gives the pair the parameter
    count of the 3D kernel (Tran et al. 2018, section 3.5); the stride is split the same way.
    """
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    n_in, n_out = conv.in_channels, conv.out_channels
    middle = max(1, math.floor(k**3 * n_in * n_out / (k * k * n_in + k * n_out)))
    return nn.Sequential(
        nn.Conv3d(n_in, middle, (1, k, k), stride=(1, s, s), padding=(0, p, p), bias=False),
        nn.BatchNorm3d(middle),
        nn.ReLU(),
        nn.Conv3d(middle, n_out, (k, 1, 1), stride=(s, 1, 1), padding=(p, 0, 0), bias=conv.bias is not None),
    )


def acs_conv(conv: nn.Conv3d) -> ACSConv3d:
    """The :class:`ACSConv3d` with the shape, stride and padding of a cubic ``conv``."""
    return ACSConv3d(conv.in_channels, conv.out_channels, conv.kernel_size[0], stride=conv.stride[0],
                     padding=conv.padding[0], bias=conv.bias is not None)


def replace_cubic_convs(module: nn.Module, make) -> nn.Module:
    """Replace, in place, every ``nn.Conv3d`` with a cubic kernel larger than 1 by ``make(conv)``.

    1 x 1 x 1 convolutions (ResNet shortcuts) are left alone: they have nothing to factorise.

    Returns:
        ``module`` itself.
    """
    for name, child in module.named_children():
        cubic = isinstance(child, nn.Conv3d) and len(set(child.kernel_size)) == 1 and child.kernel_size[0] > 1
        if cubic and child.groups == 1 and child.dilation == (1, 1, 1):
            setattr(module, name, make(child))
        else:
            replace_cubic_convs(child, make)
    return module


@CLASSIFIERS.register("acsresnet18_3d")
def build_acsresnet18(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """ResNet-18 whose 3D convolutions are ACS convolutions (Yang et al., IEEE JBHI 2021)."""
    backbone = build_resnet18(spatial_dims=3, in_channels=in_channels, input_size=input_size, width=width)
    replace_cubic_convs(backbone.module, acs_conv)
    return backbone


@CLASSIFIERS.register("r21dresnet18_3d")
def build_r21dresnet18(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """ResNet-18 whose 3D convolutions are factorised (2+1)D pairs (Tran et al., CVPR 2018)."""
    backbone = build_resnet18(spatial_dims=3, in_channels=in_channels, input_size=input_size, width=width)
    replace_cubic_convs(backbone.module, conv2plus1d)
    return backbone


class SliceStacks(nn.Module):
    """2.5D backbone: three orthogonal slice stacks through one shared 2D ResNet-18.

    The stack along axis ``a`` is the 2D image whose channels are the ``C * input_size[a]`` slices;
    its stem, a 2D convolution over those channels, is written as the equal 3D convolution whose
    kernel spans the whole axis (``(D, 3, 3)`` for the axial stack, no padding along it), so no
    transpose of the volume is needed and the first weights see the image's ``C`` channels.

    Args:
        in_channels: image channels ``C``.
        input_size: ``(D, H, W)``.
        width: ResNet-18 ``widen_factor``.

    Shapes: ``(B, C, D, H, W) -> (B, num_features)``; ``volume`` outputs the ``(B, F, d, h, w)`` map.
    """

    def __init__(self, in_channels: int, input_size: Sequence[int], width: float = 1.0):
        super().__init__()
        smallest = (min(input_size),) * 2  # the 2D trunk gets the stem the volume's smallest axis calls for
        trunk = build_resnet18(spatial_dims=2, in_channels=in_channels, input_size=smallest, width=width).module
        k, s, p = trunk.conv1.kernel_size[0], trunk.conv1.stride[0], trunk.conv1.padding[0]
        self.stems = nn.ModuleList()
        for axis, size in enumerate(input_size):
            kernel, stride, padding = [k, k, k], [s, s, s], [p, p, p]
            kernel[axis], stride[axis], padding[axis] = size, 1, 0
            self.stems.append(nn.Conv3d(in_channels, trunk.conv1.out_channels, kernel, stride, padding, bias=False))
        pool = nn.Identity() if trunk.no_max_pool else trunk.maxpool  # MONAI keeps the module and skips it
        self.trunk = nn.Sequential(trunk.bn1, trunk.act, pool, trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4)
        self.volume = BroadcastSum()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(1))
        self.num_features = trunk.in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [self.trunk(stem(x).squeeze(axis + 2)) for axis, stem in enumerate(self.stems)]
        return self.pool(self.volume(*maps))


class BroadcastSum(nn.Module):
    """Three 2D maps of one volume summed into a 3D map.

    Shapes: axial ``(B, F, h, w)``, coronal ``(B, F, d, w)``, sagittal ``(B, F, d, h)`` -> ``(B, F, d, h, w)``.
    """

    def forward(self, axial: torch.Tensor, coronal: torch.Tensor, sagittal: torch.Tensor) -> torch.Tensor:
        return axial[:, :, None, :, :] + coronal[:, :, :, None, :] + sagittal[:, :, :, :, None]


@CLASSIFIERS.register("slices25d_3d")
def build_slices25d(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """2.5D ResNet-18 on three orthogonal slice stacks, :class:`SliceStacks`."""
    net = SliceStacks(in_channels, input_size, width)
    return Backbone(net, net.num_features, "volume")


__all__ = ["ACSConv3d", "BroadcastSum", "SliceStacks", "acs_conv", "conv2plus1d", "replace_cubic_convs"]
