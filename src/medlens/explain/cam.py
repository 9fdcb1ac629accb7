"""Class activation maps through MONAI's Grad-CAM and Grad-CAM++, for every registered network.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017: the feature maps of a late convolutional layer, weighted by the mean
gradient of the class score over each map, summed, passed through ReLU and up-sampled to the
input. Grad-CAM++ (Chattopadhyay et al., WACV 2018) weights each map by positive gradients only,
with per-location coefficients, which spreads the map over several instances of a finding.

The layer comes from the model (``Classifier.cam_layer``), the implementation from MONAI
(``monai.visualize.GradCAM`` / ``GradCAMpp``); this module groups images by target class (MONAI
scores one class index per call), normalises each map to [0, 1] and keeps the orientation (MONAI's
default normaliser maps the maximum to 0, so it is replaced).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from medlens.errors import ConfigError

Method = Literal["gradcam", "gradcam++"]
METHODS = ("gradcam", "gradcam++")


def cam_engine(model: torch.nn.Module, layer: str, method: Method = "gradcam"):
    """A MONAI CAM object on ``model.layer`` that returns raw (un-normalised) up-sampled maps."""
    from monai.visualize import GradCAM, GradCAMpp

    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    if layer not in dict(model.named_modules()):
        raise ConfigError(f"the model has no layer {layer!r} to explain; its layers include "
                          f"{', '.join(list(dict(model.named_modules()))[-5:])}")
    kind = GradCAM if method == "gradcam" else GradCAMpp
    return kind(nn_module=model, target_layers=layer, postprocessing=lambda maps: maps)


def compute_cams(model: torch.nn.Module, images: np.ndarray, *, class_indices: Sequence[int] | None = None,
                 method: Method = "gradcam", batch_size: int = 32, layer: str | None = None) -> np.ndarray:
    """Class activation maps for a batch of preprocessed images.

    Args:
        model: a registry classifier (its ``cam_layer`` is used unless ``layer`` is given), or an
            ``Ensemble``: each member's map for the ensemble's class, averaged, then scaled.
        images: float32 ``(N, C, *spatial)``, prepared as for training.
        class_indices: ``N`` target classes; ``None`` explains each image's predicted class.
        method: ``"gradcam"`` or ``"gradcam++"``.
        batch_size: images per backward pass (Grad-CAM++ runs one at a time: MONAI's version
            scores a single image).

    Returns:
        float32 ``(N, *spatial)``, each map scaled to [0, 1] (a map with no positive evidence is 0).
    """
    model = model.eval()
    images = np.asarray(images, dtype=np.float32)
    if class_indices is None:
        class_indices = predicted_classes(model, images, batch_size)
    class_indices = np.asarray(class_indices, dtype=np.int64)
    if len(class_indices) != len(images):
        raise ConfigError(f"{len(class_indices)} target classes for {len(images)} images; give one per image")
    members = getattr(model, "members", None)
    if members is not None and layer is None:  # an ensemble: the mean of its members' maps
        return normalize_maps(np.mean([_raw_cams(m, images, class_indices, method, batch_size, m.cam_layer)
                                       for m in members], axis=0))
    return normalize_maps(_raw_cams(model, images, class_indices, method, batch_size, layer or model.cam_layer))


def _raw_cams(model, images: np.ndarray, class_indices: np.ndarray, method: Method, batch_size: int,
              layer: str) -> np.ndarray:
    """Un-normalised maps ``(N, *spatial)`` of ``model.layer`` for each image's target class."""
    device = next(model.parameters()).device
    engine = cam_engine(model, layer, method)
    step = 1 if method == "gradcam++" else batch_size
    maps = np.zeros((len(images), *images.shape[2:]), dtype=np.float32)
    for k in np.unique(class_indices):
        chosen = np.flatnonzero(class_indices == k)
        for start in range(0, len(chosen), step):
            rows = chosen[start:start + step]
            x = torch.from_numpy(images[rows]).to(device)
            maps[rows] = engine(x, class_idx=int(k))[:, 0].detach().float().cpu().numpy()
    return maps


@torch.no_grad()
def predicted_classes(model: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Argmax class ``(N,)`` of ``model`` on ``images (N, C, *spatial)``."""
    device = next(model.parameters()).device
    out = [model(torch.from_numpy(images[s:s + batch_size]).to(device)).argmax(1).cpu()
           for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Each map of ``(N, *spatial)`` divided by its own maximum: [0, 1], zero where all is zero."""
    maps = np.nan_to_num(np.maximum(np.asarray(maps, dtype=np.float32), 0.0))
    peak = maps.reshape(len(maps), -1).max(axis=1) if maps.size else np.zeros(0, dtype=np.float32)
    scale = np.where(peak > 0, peak, 1.0).reshape(-1, *[1] * (maps.ndim - 1))
    return (maps / scale).astype(np.float32)
