"""Classification losses by name (plan key ``train.loss``): logits ``(B, K)`` and targets -> scalar."""

from __future__ import annotations

import torch
from torch import nn

from medlens.errors import ConfigError
from medlens.registry import Registry

LOSSES = Registry("loss")


@LOSSES.register("ce")
def cross_entropy(class_weights: torch.Tensor | None, label_smoothing: float) -> nn.Module:
    """Cross-entropy (targets: class indices ``(B,)``), with optional label smoothing."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


@LOSSES.register("weighted_ce")
def weighted_cross_entropy(class_weights: torch.Tensor | None, label_smoothing: float) -> nn.Module:
    """Cross-entropy with one weight per class (rarer classes weigh more)."""
    return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)


@LOSSES.register("focal")
def focal(class_weights: torch.Tensor | None, label_smoothing: float) -> nn.Module:
    """Focal loss (MONAI, softmax, gamma 2): down-weights easy examples."""
    from monai.losses import FocalLoss

    inner = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, weight=class_weights)
    return _IndexTargets(inner)


@LOSSES.register("bce")
def binary_cross_entropy(class_weights: torch.Tensor | None, label_smoothing: float) -> nn.Module:
    """Multi-label: one sigmoid per label (targets 0/1 ``(B, L)``); ``class_weights`` = positive weights."""
    return _SmoothedBCE(class_weights, label_smoothing)


class _IndexTargets(nn.Module):
    """Adapts a loss wanting ``(B, 1)`` targets to class-index targets ``(B,)``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inner(logits, target[:, None])


class _SmoothedBCE(nn.Module):
    def __init__(self, pos_weight: torch.Tensor | None, label_smoothing: float):
        super().__init__()
        self.loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float() * (1 - self.smoothing) + 0.5 * self.smoothing
        return self.loss(logits, target)


def build_loss(name: str, *, multilabel: bool, class_weights: torch.Tensor | None = None,
               label_smoothing: float = 0.0) -> nn.Module:
    """The loss ``name`` for the task; a single-label loss on a multi-label task (or back) is an error."""
    if multilabel != (name == "bce"):
        expected = "bce" if multilabel else "ce, weighted_ce or focal"
        raise ConfigError(f"train.loss={name} does not fit a {'multi-label' if multilabel else 'single-label'} task; "
                          f"use {expected}")
    return LOSSES.get(name)(class_weights, label_smoothing)
