"""Grad-CAM for segmentation networks: which context made the network mark a region as class k.

Vinogradova et al., "Towards Interpretable Semantic Segmentation via Gradient-weighted Class
Activation Mapping", AAAI 2020: the class score is the network's logit for class k averaged over
the voxels it predicted as k, and Grad-CAM runs on a decoder layer one level below full
resolution (at full resolution the map would only repeat the mask). The network sees one
training-sized window centred on the predicted region, as it did during training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medlens.errors import ConfigError


class RegionScore(nn.Module):
    """``(B, C, *P) -> (B, K)``: each class's logit averaged over ``region (*P)`` (a boolean mask)."""

    def __init__(self, segmenter: nn.Module, region: torch.Tensor):
        super().__init__()
        self.segmenter = segmenter
        self.register_buffer("region", region.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.segmenter(x)
        weight = self.region / self.region.sum().clamp(min=1.0)
        return (logits * weight).flatten(2).sum(-1)


def segmenter_cam_layer(model: nn.Module) -> str:
    """The decoder layer one level below full resolution of a registry segmenter (DynUNet, UNet, VNet,
    UNETR, SwinUNETR)."""
    children = dict(model.named_children())
    if "vit" in children:  # UNETR
        return "decoder3"
    if "swinViT" in children:  # SwinUNETR
        return "decoder2"
    if "upsamples" in children:
        return f"upsamples.{len(model.upsamples) - 2}" if len(model.upsamples) > 1 else "bottleneck"
    if "up_tr64" in children:
        return "up_tr64"
    if set(children) == {"model"}:
        return "model.1"
    raise ConfigError(f"no Grad-CAM layer is known for {type(model).__name__}; explanations support DynUNet, "
                      "UNet, VNet, UNETR and SwinUNETR")


def window_around(region: np.ndarray, patch: tuple[int, ...]) -> tuple[slice, ...]:
    """The ``patch``-sized window (clipped to the image) centred on the region's centre of mass."""
    points = np.argwhere(region)
    centre = points.mean(0).round().astype(int) if len(points) else np.asarray(region.shape) // 2
    starts = [int(np.clip(c - p // 2, 0, max(n - p, 0))) for c, p, n in zip(centre, patch, region.shape)]
    return tuple(slice(s, s + p) for s, p in zip(starts, patch))


def region_cam(model: nn.Module, array: np.ndarray, region: np.ndarray, class_index: int, patch: tuple[int, ...],
               method: str = "gradcam") -> np.ndarray:
    """Grad-CAM of ``class_index`` over ``region`` for a preprocessed image.

    Args:
        array: float32 ``(C, *S)`` on the network's grid.
        region: bool ``(*S)``, the voxels predicted as ``class_index``.
        patch: the training patch size; the map covers that window, zero elsewhere.

    Returns:
        float32 ``(*S)`` in [0, 1].
    """
    from medlens.explain.cam import cam_engine, normalize_maps

    window = window_around(region, patch)
    crop = array[(slice(None), *window)]
    pads = [(0, p - n) for p, n in zip(patch, crop.shape[1:])]
    x = torch.from_numpy(np.pad(crop, [(0, 0), *pads]).astype(np.float32))[None]
    mask = torch.from_numpy(np.pad(region[window], pads))
    device = next(model.parameters()).device
    scorer = RegionScore(model.eval(), mask.to(device))
    engine = cam_engine(scorer, f"segmenter.{segmenter_cam_layer(model)}", method)
    cam = engine(x.to(device), class_idx=int(class_index))[0, 0].detach().float().cpu().numpy()
    full = np.zeros(region.shape, dtype=np.float32)
    full[window] = cam[tuple(slice(0, n) for n in crop.shape[1:])]
    return normalize_maps(full[None])[0]
