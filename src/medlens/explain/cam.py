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

A fusion network of several views (:class:`~medlens.models.fusion.FusionClassifier`) is explained per view
(:func:`compute_view_cams`): its ``cam_layers`` name one layer per view (with a shared encoder one layer whose
output holds the ``B * V`` views batch-major), the clinical values go in as given, and a view the case lacks
has no map (all NaN).
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
                 method: Method = "gradcam", batch_size: int = 32, layer: str | None = None,
                 clinical: np.ndarray | None = None) -> np.ndarray:
    """Class activation maps for a batch of preprocessed images.

    Args:
        model: a registry classifier (its ``cam_layer`` is used unless ``layer`` is given), or an
            ``Ensemble``: each member's map for the ensemble's class, averaged, then scaled.
        images: float32 ``(N, C, *spatial)``, prepared as for training.
        class_indices: ``N`` target classes; ``None`` explains each image's predicted class.
        method: ``"gradcam"`` or ``"gradcam++"``.
        batch_size: images per backward pass (Grad-CAM++ runs one at a time: MONAI's version
            scores a single image).
        clinical: ``(N, F)`` encoded clinical values for a fusion network that takes them (``None``: every
            value missing).

    Returns:
        float32 ``(N, *spatial)``, each map scaled to [0, 1] (a map with no positive evidence is 0).

    Raises:
        ConfigError: the model takes several views (one map per view: use :func:`compute_view_cams`).
    """
    model = model.eval()
    if views_of(model) > 1:
        raise ConfigError(f"the model takes {views_of(model)} views in one input, so there is one map per view: "
                          "use medlens.explain.cam.compute_view_cams(model, images, clinical=...) -> (N, V, *spatial)")
    images = np.asarray(images, dtype=np.float32)
    class_indices = _targets(model, images, class_indices, batch_size, clinical)
    members = getattr(model, "members", None)
    if members is not None and layer is None:  # an ensemble: the mean of its members' maps
        return normalize_maps(np.mean([_raw_cams(m, images, class_indices, method, batch_size, m.cam_layer, clinical)
                                       for m in members], axis=0))
    return normalize_maps(_raw_cams(model, images, class_indices, method, batch_size, layer or model.cam_layer,
                                    clinical))


def compute_view_cams(model: torch.nn.Module, images: np.ndarray, *, clinical: np.ndarray | None = None,
                      class_indices: Sequence[int] | None = None, method: Method = "gradcam",
                      batch_size: int = 32) -> np.ndarray:
    """One class activation map per view of a fusion network (or an ensemble of them).

    Args:
        model: a :class:`~medlens.models.fusion.FusionClassifier` (``views``, ``cam_layers``); a network of
            one input counts as one view.
        images: float32 ``(N, V * C, *spatial)``, view ``v`` in channels ``[v*C, (v+1)*C)``, a missing view
            all NaN (as the loaders give them).
        clinical: ``(N, F)`` encoded clinical values, given to the network as they are (``None``: every value
            missing, as the network treats it).
        class_indices, method, batch_size: as for :func:`compute_cams`; the target class is the case's, the
            same for each of its views.

    Returns:
        float32 ``(N, V, *spatial)``: each present view's map scaled to [0, 1] by its own peak (maps of
        separate encoders are not on one scale); a view the case lacks has no map: all NaN.
    """
    model = model.eval()
    images = np.asarray(images, dtype=np.float32)
    views = views_of(model)
    class_indices = _targets(model, images, class_indices, batch_size, clinical)
    members = getattr(model, "members", None) or [model]
    raw = np.mean([_raw_view_cams(m, images, class_indices, method, batch_size, clinical) for m in members], axis=0)
    maps = normalize_maps(raw.reshape(-1, *raw.shape[2:])).reshape(raw.shape)
    maps[~view_presence(images, views)] = np.nan
    return maps


def views_of(model: torch.nn.Module) -> int:
    """``V``, the views a network (or an ensemble's first member) takes in one input; 1 for a plain classifier."""
    members = getattr(model, "members", None)
    return int(getattr(members[0] if members else model, "views", 1))


def view_presence(images: np.ndarray, views: int) -> np.ndarray:
    """``(N, V)`` bool: which views of ``images (N, V * C, *spatial)`` each case has (a missing view is all NaN)."""
    return ~np.isnan(np.asarray(images).reshape(len(images), views, -1)).all(axis=2)


def _targets(model, images: np.ndarray, class_indices, batch_size: int, clinical) -> np.ndarray:
    """``(N,)`` target classes: the given ones (checked: one per image) or the model's predictions."""
    if class_indices is None:
        class_indices = predicted_classes(model, images, batch_size, clinical=clinical)
    class_indices = np.asarray(class_indices, dtype=np.int64)
    if len(class_indices) != len(images):
        raise ConfigError(f"{len(class_indices)} target classes for {len(images)} images; give one per image")
    return class_indices


def _batches(images: np.ndarray, class_indices: np.ndarray, method: Method, batch_size: int):
    """``(class, rows)`` batches of images sharing a target class (MONAI scores one class per call)."""
    step = 1 if method == "gradcam++" else batch_size
    for k in np.unique(class_indices):
        chosen = np.flatnonzero(class_indices == k)
        for start in range(0, len(chosen), step):
            yield int(k), chosen[start:start + step]


def _inputs(model, images: np.ndarray, rows: np.ndarray, clinical) -> tuple[torch.Tensor, dict]:
    """The batch ``x`` on the model's device, and ``{"clinical": (B, F)}`` when clinical values are given."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images[rows])).to(device)
    if clinical is None:
        return x, {}
    return x, {"clinical": torch.from_numpy(np.asarray(clinical, dtype=np.float32)[rows]).to(device)}


def _raw_cams(model, images: np.ndarray, class_indices: np.ndarray, method: Method, batch_size: int,
              layer: str, clinical: np.ndarray | None = None) -> np.ndarray:
    """Un-normalised maps ``(N, *spatial)`` of ``model.layer`` for each image's target class."""
    engine = cam_engine(model, layer, method)
    maps = np.zeros((len(images), *images.shape[2:]), dtype=np.float32)
    for k, rows in _batches(images, class_indices, method, batch_size):
        x, more = _inputs(model, images, rows, clinical)
        maps[rows] = engine(x, class_idx=k, **more)[:, 0].detach().float().cpu().numpy()
    return maps


def _raw_view_cams(model, images: np.ndarray, class_indices: np.ndarray, method: Method, batch_size: int,
                   clinical: np.ndarray | None) -> np.ndarray:
    """Un-normalised maps ``(N, V, *spatial)``: a shared encoder's layer gives the ``B * V`` views of a batch in one
    pass (row ``b * V + v``); separate encoders give one layer per view, each its own pass."""
    layers = list(getattr(model, "cam_layers", None) or [model.cam_layer])
    views = len(layers)
    maps = np.zeros((len(images), views, *images.shape[2:]), dtype=np.float32)
    shared = len(set(layers)) == 1
    for v, layer in enumerate(layers[:1] if shared else layers):
        engine = cam_engine(model, layer, method)
        for k, rows in _batches(images, class_indices, method, batch_size):
            x, more = _inputs(model, images, rows, clinical)
            out = engine(x, class_idx=k, **more)[:, 0].detach().float().cpu().numpy()
            if shared:
                maps[rows] = out.reshape(len(rows), views, *out.shape[1:])
            else:
                maps[rows, v] = out
    return maps


@torch.no_grad()
def predicted_classes(model: torch.nn.Module, images: np.ndarray, batch_size: int = 64, *,
                      clinical: np.ndarray | None = None) -> np.ndarray:
    """Argmax class ``(N,)`` of ``model`` on ``images (N, C, *spatial)`` (and ``clinical (N, F)`` values)."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size], dtype=np.float32)).to(device)
        more = () if clinical is None else (torch.from_numpy(np.asarray(clinical[s:s + batch_size],
                                                                        dtype=np.float32)).to(device),)
        out.append(model(x, *more).argmax(1).cpu())
    return torch.cat(out).numpy()


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Each map of ``(N, *spatial)`` divided by its own maximum: [0, 1], zero where all is zero."""
    maps = np.nan_to_num(np.maximum(np.asarray(maps, dtype=np.float32), 0.0))
    peak = maps.reshape(len(maps), -1).max(axis=1) if maps.size else np.zeros(0, dtype=np.float32)
    scale = np.where(peak > 0, peak, 1.0).reshape(-1, *[1] * (maps.ndim - 1))
    return (maps / scale).astype(np.float32)
