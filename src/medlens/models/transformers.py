"""Transformer networks from MONAI in the registries: ViT as a classifier, UNETR and SwinUNETR as segmenters.

>>> model = build_classifier("vit_2d", in_channels=1, num_classes=2, input_size=(28, 28))  # 2x2 patches
>>> model(torch.zeros(8, 1, 28, 28)).shape                        # (8, 2)
>>> GradCAM(nn_module=model, target_layers=model.cam_layer)       # on the token grid, (B, hidden, 14, 14)

``vit_2d`` / ``vit_3d`` wrap MONAI's ``ViT`` (Dosovitskiy et al., ICLR 2021) without its own
classification head (a CLS token and a ``tanh`` on the logits): the patch tokens after the final
layer norm are laid back on their grid (:class:`TokenGrid`, the ``cam_layer``), averaged, and fed
to medlens' ``Dropout -> Linear`` head like every other classifier. Grad-CAM on that grid weights
each token's features by the gradient of the class score, as for a CNN's last feature map, at the
resolution of the patch grid. ``width`` sets the number of 64-wide attention heads: 3 at width 1
(ViT-Tiny, hidden size 192, 12 layers); 0.5 gives 2, 2.0 gives 6 (ViT-Small).

The segmenters ``unetr_2d`` / ``unetr_3d`` (Hatamizadeh et al., WACV 2022) and ``swinunetr_2d`` /
``swinunetr_3d`` (Hatamizadeh et al., BrainLes 2021) are registered in
:mod:`medlens.models.segmenters`'s registry from here and built by
:func:`~medlens.models.segmenters.build_segmenter`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks import nets
from monai.networks.blocks import TransformerBlock
from torch import nn

from medlens.errors import ConfigError
from medlens.models.classifiers import CLASSIFIERS, Backbone
from medlens.models.segmenters import SEGMENTERS, SWIN_MULTIPLE, UNETR_PATCH

HEAD_DIM = 64  # features per attention head (ViT, DeiT)
VIT_HEADS = 3  # at width 1: ViT-Tiny / DeiT-Ti
VIT_LAYERS = 12
# tokens per axis at most; patch sides: 28^2 -> 2 (14x14 tokens), 224^2 -> 16 (14x14), 28^3 -> 4 (7^3), 96^3 -> 16
MAX_GRID = {2: 16, 3: 8}
SWIN_FEATURE_MULTIPLE = 12  # SwinUNETR's heads (3, 6, 12, 24) need a feature size divisible by 12
DEFAULT_FEATURES = {"unetr": 16, "swinunetr": 24}  # UNETR paper; MONAI's SwinUNETR default


class TokenGrid(nn.Module):
    """Tokens ``(B, N, F)`` laid back on their patch grid: ``(B, F, *grid)`` with ``prod(grid) == N``."""

    def __init__(self, grid: Sequence[int]) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.transpose(1, 2).unflatten(2, self.grid)


class ViTBackbone(nn.Module):
    """Images ``(B, C, *S)`` -> mean of the final patch tokens ``(B, hidden)``.

    The image is zero-padded at the far end of each axis to a whole number of patches (after the
    usual z-scoring, zero is the mean intensity), then MONAI's ``ViT`` embeds it with learnt
    position embeddings.
    """

    def __init__(self, spatial_dims: int, in_channels: int, input_size: Sequence[int], heads: int) -> None:
        super().__init__()
        patch = vit_patch_size(input_size)
        grid = tuple(math.ceil(s / p) for s, p in zip(input_size, patch))
        padded = tuple(g * p for g, p in zip(grid, patch))
        # F.pad takes (before, after) pairs from the last axis backwards
        self.padding = tuple(v for s, p in zip(reversed(input_size), reversed(padded)) for v in (0, p - s))
        hidden = HEAD_DIM * heads
        self.vit = drop_unused_norms(nets.ViT(in_channels, img_size=padded, patch_size=patch, hidden_size=hidden,
                                              mlp_dim=4 * hidden, num_layers=VIT_LAYERS, num_heads=heads,
                                              spatial_dims=spatial_dims, qkv_bias=True))
        self.token_grid = TokenGrid(grid)
        self.num_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.padding):
            x = nn.functional.pad(x, self.padding)
        tokens, _ = self.vit(x)
        return self.token_grid(tokens).flatten(2).mean(-1)


def drop_unused_norms(net: nn.Module) -> nn.Module:
    """Replace the cross-attention layer norms MONAI's transformer blocks build but never use without
    cross-attention: parameters without gradients would stall DDP and only cost optimiser state."""
    for block in net.modules():
        if isinstance(block, TransformerBlock) and not block.with_cross_attention:
            block.norm_cross_attn = nn.Identity()
    return net


def vit_patch_size(input_size: Sequence[int]) -> tuple[int, ...]:
    """Per axis, the smallest power of two (>= 2) that leaves at most :data:`MAX_GRID` tokens along it.

    >>> vit_patch_size((28, 28)), vit_patch_size((224, 224)), vit_patch_size((28, 28, 28))
    ((2, 2), (16, 16), (4, 4, 4))
    """
    limit = MAX_GRID[len(input_size)]
    return tuple(max(2, 2 ** math.ceil(math.log2(s / limit))) for s in input_size)


@CLASSIFIERS.register("vit_2d")
@CLASSIFIERS.register("vit_3d")
def build_vit(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """MONAI's ViT, 12 layers of ``3 x width`` heads (rounded, at least 1), patches from :func:`vit_patch_size`."""
    heads = max(1, round(VIT_HEADS * width))
    net = ViTBackbone(spatial_dims, in_channels, input_size, heads)
    return Backbone(net, net.num_features, "token_grid")


# --- segmenters ----------------------------------------------------------------------------------


def _unetr(*, dims, in_channels, num_classes, filters, strides, kernels, deep_supervision, dropout, input_size):
    """UNETR: feature size ``filters[0]`` (default 16); ``0.75 x feature size`` heads of 64, so 16 gives the
    paper's ViT-B encoder (hidden 768, 12 heads, 12 layers)."""
    if len(input_size) != dims:
        raise ConfigError(f"unetr_{dims}d is built for one patch size: pass input_size, the {dims}-axis training "
                          f"patch (data.input_size), got {list(input_size)}")
    if any(s % UNETR_PATCH for s in input_size):
        fixed = [-(-s // UNETR_PATCH) * UNETR_PATCH for s in input_size]
        raise ConfigError(f"unetr_{dims}d needs every patch side to be a multiple of {UNETR_PATCH}, got "
                          f"{list(input_size)}; e.g. data.input_size={fixed}")
    feature = int(filters[0]) if filters else DEFAULT_FEATURES["unetr"]
    heads = max(1, round(0.75 * feature))
    return drop_unused_norms(nets.UNETR(in_channels, num_classes, img_size=tuple(input_size), feature_size=feature,
                                        hidden_size=HEAD_DIM * heads, mlp_dim=4 * HEAD_DIM * heads, num_heads=heads,
                                        dropout_rate=dropout, spatial_dims=dims, qkv_bias=True))


def _swinunetr(*, dims, in_channels, num_classes, filters, strides, kernels, deep_supervision, dropout, input_size):
    """SwinUNETR: feature size ``filters[0]`` (default 24; the paper used 48), depths (2, 2, 2, 2), windows of 7."""
    feature = int(filters[0]) if filters else DEFAULT_FEATURES["swinunetr"]
    if feature % SWIN_FEATURE_MULTIPLE:
        fixed = -(-feature // SWIN_FEATURE_MULTIPLE) * SWIN_FEATURE_MULTIPLE
        raise ConfigError(f"swinunetr_{dims}d takes its feature size from model.filters[0]={feature}, which must be "
                          f"a multiple of {SWIN_FEATURE_MULTIPLE} (its attention heads); e.g. model.filters=[{fixed}]")
    if input_size:
        _check_swin_patch(dims, input_size)
    return SwinUNETR(in_channels, num_classes, feature_size=feature, drop_rate=dropout, spatial_dims=dims)


class SwinUNETR(nets.SwinUNETR):
    """MONAI's SwinUNETR, which refuses ONNX export up front with the reason and the way out.

    With torch 2.13 neither ONNX exporter gives a working graph: the TorchScript-based one stops at
    "instance_norm for unknown channel size" after the window reshapes, and the dynamo one writes a
    graph that fails on any batch but the example's. TorchScript export works (traced, parity-checked).
    """

    def __init__(self, in_channels: int, out_channels: int, *, spatial_dims: int, **options) -> None:
        super().__init__(in_channels, out_channels, spatial_dims=spatial_dims, **options)
        self.name = f"swinunetr_{spatial_dims}d"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            raise ConfigError(f"{self.name} cannot be exported to ONNX (torch 2.13: its shifted-"
                              "window attention loses the shapes ONNX needs); export TorchScript instead "
                              "(--format torchscript), or train unetr / dynunet for an ONNX file")
        return super().forward(x)


def _check_swin_patch(dims: int, patch: Sequence[int]) -> None:
    """Sides divisible by 32, and the lowest level (patch / 32) more than one voxel: instance norm needs two."""
    if len(patch) == dims and not any(s % SWIN_MULTIPLE for s in patch) and max(patch) > SWIN_MULTIPLE:
        return
    fixed = [max(-(-int(s) // SWIN_MULTIPLE), 1) * SWIN_MULTIPLE for s in patch]
    if fixed and max(fixed) == SWIN_MULTIPLE:
        fixed[0] = 2 * SWIN_MULTIPLE
    raise ConfigError(f"swinunetr_{dims}d needs a {dims}-axis patch whose sides are multiples of {SWIN_MULTIPLE}, "
                      f"one of them at least {2 * SWIN_MULTIPLE} (its lowest level must hold more than one voxel), "
                      f"got {list(patch)}; e.g. data.input_size={fixed}")


for _dims in (2, 3):
    SEGMENTERS.register(f"unetr_{_dims}d")(_unetr)
    SEGMENTERS.register(f"swinunetr_{_dims}d")(_swinunetr)
