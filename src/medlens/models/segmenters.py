"""The segmentation network registry: MONAI's U-Net, V-Net, DynUNet, UNETR and SwinUNETR behind one builder.

>>> net = build_segmenter("dynunet_3d", in_channels=1, num_classes=3, filters=(16, 32, 64, 128),
...                       strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)), kernels=((3, 3, 3),) * 4)
>>> net(torch.zeros(2, 1, 40, 56, 40)).shape   # (2, 3, 40, 56, 40) logits, background included

``dynunet`` is the self-configured, nnU-Net-style network: its depth, strides and kernels come
from the plan (patch size and spacing). ``unet`` takes the same filters and the isotropic part
of the strides; ``vnet`` is MONAI's fixed V-Net (3D, patch sides divisible by 16). In training
mode a DynUNet with deep supervision returns ``(B, 1 + S, K, *spatial)`` (the main output and
``S`` lower-resolution heads up-sampled to full size); in eval mode every network returns
``(B, K, *spatial)``.

``unetr`` and ``swinunetr`` (registered from :mod:`medlens.models.transformers`) take their
feature size from ``filters[0]`` and ignore strides and kernels; UNETR is built for one patch size
(``input_size``, sides divisible by 16), SwinUNETR runs on any patch whose sides divide by 32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.networks import nets
from torch import nn

from medlens.errors import ConfigError
from medlens.registry import Registry

SEGMENTERS: Registry = Registry("segmentation network")
UNETR_PATCH = 16  # MONAI's UNETR embeds 16-voxel patches and up-samples them 16x
SWIN_MULTIPLE = 32  # SwinUNETR: a 2-voxel patch embedding, then four 2x patch merges


def build_segmenter(name: str, *, in_channels: int, num_classes: int, filters: Sequence[int] = (),
                    strides: Sequence[Sequence[int]] = (), kernels: Sequence[Sequence[int]] = (),
                    deep_supervision: bool = False, dropout: float = 0.0, input_size: Sequence[int] = ()) -> nn.Module:
    """Build a registered segmentation network.

    Args:
        name: ``dynunet_2d``, ``dynunet_3d``, ``unet_2d``, ``unet_3d``, ``vnet_3d``, ``unetr_2d``,
            ``unetr_3d``, ``swinunetr_2d`` or ``swinunetr_3d``.
        in_channels: image channels ``C``.
        num_classes: ``K`` output channels, background included.
        filters: feature maps per level (``dynunet``, ``unet``); one more level than down-samplings.
            ``unetr`` and ``swinunetr`` use ``filters[0]`` as their feature size.
        strides: per level, the stride per axis; level 0 is ``(1, ...)``.
        kernels: per level, the kernel size per axis (``dynunet`` only).
        deep_supervision: extra outputs from the two levels above the lowest (``dynunet`` only).
        dropout: dropout probability inside the network.
        input_size: the training patch ``(*P)``; ``unetr`` needs it (its position embeddings are
            one per patch token), the others ignore it.

    Returns:
        A network mapping ``(B, in_channels, *P)`` to logits ``(B, num_classes, *P)`` (see above for
        deep supervision).

    Raises:
        ConfigError: unknown name, or a topology that does not fit together.
    """
    builder = SEGMENTERS.get(name)
    dims = int(name.rsplit("_", 1)[1][:-1])
    strides = tuple(tuple(int(v) for v in s) for s in strides)
    kernels = tuple(tuple(int(v) for v in k) for k in kernels)
    for what, levels in (("strides", strides), ("kernels", kernels)):
        if any(len(level) != dims for level in levels):
            raise ConfigError(f"model.{what}={[list(v) for v in levels]}: every level needs {dims} values for "
                              f"{name}")
    return builder(dims=dims, in_channels=int(in_channels), num_classes=int(num_classes), filters=tuple(filters),
                   strides=strides, kernels=kernels, deep_supervision=deep_supervision, dropout=dropout,
                   input_size=tuple(int(s) for s in input_size))


def _dynunet(*, dims, in_channels, num_classes, filters, strides, kernels, deep_supervision, dropout, input_size):
    if not (len(filters) == len(strides) == len(kernels)) or len(filters) < 3:
        raise ConfigError(f"dynunet: model.filters ({len(filters)}), model.strides ({len(strides)}) and "
                          f"model.kernels ({len(kernels)}) need one entry per level, at least 3 levels; "
                          "make a new plan with `medlens plan` or fix the lists")
    supervised_heads = min(2, len(filters) - 2)
    return nets.DynUNet(dims, in_channels, num_classes, kernel_size=kernels, strides=strides,
                        upsample_kernel_size=strides[1:], filters=filters, dropout=dropout or None,
                        deep_supervision=deep_supervision and supervised_heads > 0,
                        deep_supr_num=max(supervised_heads, 1), res_block=False)


def _unet(*, dims, in_channels, num_classes, filters, strides, kernels, deep_supervision, dropout, input_size):
    if len(filters) < 2 or len(strides) != len(filters):
        raise ConfigError(f"unet: model.filters {list(filters)} and model.strides need one entry per level (>= 2)")
    steps = [max(s) for s in strides[1:]]  # MONAI's UNet takes one stride per level
    return nets.UNet(dims, in_channels, num_classes, channels=filters, strides=steps, num_res_units=2,
                     norm="INSTANCE", dropout=dropout)


def _vnet(*, dims, in_channels, num_classes, filters, strides, kernels, deep_supervision, dropout, input_size):
    if 16 % in_channels:
        raise ConfigError(f"vnet_3d takes 1, 2, 4, 8 or 16 input channels, the data have {in_channels}; "
                          "use dynunet_3d or unet_3d")
    return nets.VNet(dims, in_channels, num_classes, dropout_prob_down=dropout or None,
                     dropout_prob_up=(dropout or None, dropout or 0.0))


for _dims in (2, 3):
    SEGMENTERS.register(f"dynunet_{_dims}d")(_dynunet)
    SEGMENTERS.register(f"unet_{_dims}d")(_unet)
SEGMENTERS.register("vnet_3d")(_vnet)


def patch_multiple(name: str, strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Per axis, the number every patch side must be a multiple of for ``name`` to run."""
    dims = int(name.rsplit("_", 1)[1][:-1])
    if name.startswith("vnet"):
        return (16,) * dims
    if name.startswith("unetr"):
        return (UNETR_PATCH,) * dims
    if name.startswith("swinunetr"):
        return (SWIN_MULTIPLE,) * dims
    if name.startswith("unet"):  # one stride per level, the largest of the plan's, on every axis
        return (math.prod(max(level) for level in strides[1:]),) * dims
    return tuple(math.prod(level[a] for level in strides) for a in range(dims))
