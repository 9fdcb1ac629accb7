"""Our own small classification backbones, 2D or 3D: SeedCNN, MobileNet and ContextNet.

Each backbone maps an image ``(B, C, *spatial)`` to pooled features ``(B, num_features)`` and
names, in ``cam_layer``, its last spatial feature layer. The linear head lives in
:class:`medlens.models.Classifier`. Small inputs get fewer downsampling stages, placed late so
early layers keep full resolution: a 28x28 image goes 28 -> 28 -> 14 -> 7 -> 3.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_GLOBAL_POOL = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}

MIN_FEATURE_SIZE = 3  # voxels per axis left after the last downsampling, when the input allows


def scale_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 4, at least 4 (keeps grouped convs valid)."""
    return max(4, int(round(channels * width / 4)) * 4)


def downsample_flags(input_size: Sequence[int], stages: int) -> list[bool]:
    """Which of ``stages`` candidate stages halve the image, given the input size.

    Halvings are allowed while the smallest axis stays >= ``MIN_FEATURE_SIZE`` and are given to the
    *last* stages, so a small image keeps its resolution in the early layers.

    Returns:
        ``stages`` booleans, e.g. ``[False, True, True, True]`` for 28x28 and 4 stages.
    """
    size, halvings = min(input_size), 0
    while halvings < stages and size // 2 >= MIN_FEATURE_SIZE:
        size //= 2
        halvings += 1
    return [False] * (stages - halvings) + [True] * halvings


def conv_norm_act(
    spatial_dims: int, in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1,
    dilation: int = 1, groups: int = 1, act: bool = True,
) -> nn.Sequential:
    """Convolution ("same" padding) -> batch norm -> ReLU (omitted when ``act`` is False)."""
    conv = _CONV[spatial_dims](
        in_channels, out_channels, kernel_size, stride=stride, padding=dilation * (kernel_size // 2),
        dilation=dilation, groups=groups, bias=False,
    )
    layers = [("conv", conv), ("norm", _NORM[spatial_dims](out_channels))]
    if act:
        layers.append(("act", nn.ReLU()))  # not in-place: Grad-CAM hooks may sit on these outputs
    return nn.Sequential(OrderedDict(layers))


def global_pool(spatial_dims: int) -> nn.Sequential:
    """Global average pooling and flattening: ``(B, F, *spatial) -> (B, F)``."""
    return nn.Sequential(_GLOBAL_POOL[spatial_dims](1), nn.Flatten(1))


class SeedCNN(nn.Module):
    """The classic tutorial CNN: 4 blocks of conv3x3 / BN / ReLU / max-pool 2, then global pooling.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        input_size: spatial size of the images, decides which blocks pool.
        width: multiplies the channel counts ``(32, 64, 128, 256)``.

    Shapes: ``(B, C, *input_size) -> (B, num_features)``.
    """

    channels = (32, 64, 128, 256)

    def __init__(self, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float = 1.0):
        super().__init__()
        widths = [scale_channels(c, width) for c in self.channels]
        pools = downsample_flags(input_size, len(widths))
        blocks, cin = [], in_channels
        for cout, pool in zip(widths, pools):
            block = conv_norm_act(spatial_dims, cin, cout)
            block.add_module("pool", _MAXPOOL[spatial_dims](2) if pool else nn.Identity())
            blocks.append(block)
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.pool = global_pool(spatial_dims)
        self.num_features = cin
        self.cam_layer = f"features.{len(blocks) - 1}.act"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


class InvertedResidual(nn.Module):
    """MobileNet-v2 block: 1x1 expansion, depthwise 3x3 (maybe strided), linear 1x1 projection.

    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018. The input is
    added back when the block keeps the shape.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, expansion: int, stride: int):
        super().__init__()
        hidden = in_channels * expansion
        layers = [] if expansion == 1 else [conv_norm_act(spatial_dims, in_channels, hidden, kernel_size=1)]
        layers += [
            conv_norm_act(spatial_dims, hidden, hidden, stride=stride, groups=hidden),
            conv_norm_act(spatial_dims, hidden, out_channels, kernel_size=1, act=False),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNet(nn.Module):
    """A small MobileNet-v2-style net of depthwise-separable inverted residual blocks.

    Stem conv3x3 (32), five stages of inverted residuals (expansion, channels, blocks) given by
    ``stages``, then a 1x1 conv to 512 channels and global pooling. The stem and the first block of
    every stage but the first may halve the image (see :func:`downsample_flags`).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        input_size: spatial size of the images.
        width: multiplies every channel count.

    Shapes: ``(B, C, *input_size) -> (B, num_features)``.
    """

    stages = ((1, 16, 1), (4, 24, 2), (4, 40, 2), (4, 80, 2), (4, 128, 2))

    def __init__(self, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float = 1.0):
        super().__init__()
        strides = [2 if down else 1 for down in downsample_flags(input_size, len(self.stages))]
        stem_channels = scale_channels(32, width)
        layers = OrderedDict(stem=conv_norm_act(spatial_dims, in_channels, stem_channels, stride=strides[0]))
        cin = stem_channels
        for i, ((expansion, channels, repeats), stride) in enumerate(zip(self.stages, [1, *strides[1:]])):
            cout = scale_channels(channels, width)
            blocks = []
            for j in range(repeats):
                blocks.append(InvertedResidual(spatial_dims, cin, cout, expansion, stride if j == 0 else 1))
                cin = cout
            layers[f"stage{i}"] = nn.Sequential(*blocks)
        self.num_features = scale_channels(512, width)
        layers["last"] = conv_norm_act(spatial_dims, cin, self.num_features, kernel_size=1)
        self.features = nn.Sequential(layers)
        self.pool = global_pool(spatial_dims)
        self.cam_layer = "features.last"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


class ContextAttention(nn.Module):
    """Multi-scale context gate followed by squeeze-excitation channel attention, with a residual.

    Three parallel 3x3 convolutions with dilation 1, 2 and 4 see growing neighbourhoods [Yu & Koltun,
    "Multi-scale context aggregation by dilated convolutions", ICLR 2016]; their concatenation is
    fused by a 1x1 conv into a sigmoid gate that multiplies the features voxel-wise. The gated
    features are then rescaled per channel by a squeeze-excitation branch [Hu et al., CVPR 2018],
    and added to the input, so at initialisation the block is close to the identity.

    Shapes: ``(B, F, *spatial) -> (B, F, *spatial)``.
    """

    def __init__(self, spatial_dims: int, channels: int, dilations: Sequence[int] = (1, 2, 4), reduction: int = 4):
        super().__init__()
        branch = max(4, channels // 4)
        conv = _CONV[spatial_dims]
        self.branches = nn.ModuleList(
            conv_norm_act(spatial_dims, channels, branch, dilation=d) for d in dilations
        )
        self.fuse = conv_norm_act(spatial_dims, branch * len(dilations), channels, kernel_size=1, act=False)
        squeezed = max(4, channels // reduction)
        self.excite = nn.Sequential(
            _GLOBAL_POOL[spatial_dims](1), conv(channels, squeezed, 1), nn.ReLU(), conv(squeezed, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = torch.cat([branch(x) for branch in self.branches], dim=1)
        gated = x * torch.sigmoid(self.fuse(context))
        return x + gated * torch.sigmoid(self.excite(gated))


class ContextNet(nn.Module):
    """SeedCNN-like stages with a :class:`ContextAttention` block in the last two stages.

    Stem conv3x3 (32), then four stages (32, 64, 128, 256 channels) of conv3x3 / BN / ReLU, a
    context-attention block in stages 3-4, and a max-pool 2 where the input is large enough.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        input_size: spatial size of the images.
        width: multiplies every channel count.

    Shapes: ``(B, C, *input_size) -> (B, num_features)``.
    """

    channels = (32, 64, 128, 256)
    context_stages = (2, 3)

    def __init__(self, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float = 1.0):
        super().__init__()
        widths = [scale_channels(c, width) for c in self.channels]
        pools = downsample_flags(input_size, len(widths))
        stages = OrderedDict(stem=conv_norm_act(spatial_dims, in_channels, widths[0]))
        cin = widths[0]
        for i, (cout, pool) in enumerate(zip(widths, pools)):
            stage = OrderedDict(conv=conv_norm_act(spatial_dims, cin, cout))
            if i in self.context_stages:
                stage["context"] = ContextAttention(spatial_dims, cout)
            stage["pool"] = _MAXPOOL[spatial_dims](2) if pool else nn.Identity()
            stages[f"stage{i}"] = nn.Sequential(stage)
            cin = cout
        self.features = nn.Sequential(stages)
        self.pool = global_pool(spatial_dims)
        self.num_features = cin
        self.cam_layer = f"features.stage{len(widths) - 1}.context"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))
