"""Losses by name (plan key ``train.loss``), each declaring the targets it takes.

=============  ===========================================  ============================
name           what                                         targets
=============  ===========================================  ============================
ce             cross-entropy (optional label smoothing)     class indices ``(B,)``
weighted_ce    cross-entropy, one weight per class          class indices ``(B,)``
focal          focal loss, gamma 2 (Lin et al. 2017)        class indices ``(B,)``
ordinal_bce    cumulative-link BCE for ordered grades       grade indices ``(B,)``
bce            one sigmoid per label                        0/1 per label ``(B, L)``
dice_ce        soft Dice + cross-entropy (nnU-Net)          label maps ``(B, 1, *S)``
=============  ===========================================  ============================

>>> build_loss("dice_c", targets="mask")   # ConfigError: unknown loss `dice_c`; did you mean `dice_ce`? ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from medlens.errors import ConfigError
from medlens.registry import Registry

Targets = Literal["index", "multilabel", "mask"]
TARGET_WORDS = {"index": "single-label classification", "multilabel": "multi-label classification",
                "mask": "segmentation"}


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: ``build(class_weights, label_smoothing) -> nn.Module`` and the targets it takes."""

    build: Callable[[torch.Tensor | None, float], nn.Module]
    targets: Targets


LOSSES: Registry[LossSpec] = Registry("loss")


def _register(name: str, targets: Targets):
    def decorator(build):
        LOSSES.register(name)(LossSpec(build, targets))
        return build

    return decorator


@_register("ce", "index")
def cross_entropy(class_weights: torch.Tensor | None, label_smoothing: float) -> nn.Module:
    """Cross-entropy (targets: class indices ``(B,)``), with optional label smoothing."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


@_register("weighted_ce", "index")
def weighted_cross_entropy(class_weights: torch.Tensor | None, label_smoothing: float) -> nn.Module:
    """Cross-entropy with one weight per class (rarer classes weigh more)."""
    return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)


@_register("focal", "index")
def focal(class_weights: torch.Tensor | None, label_smoothing: float) -> nn.Module:
    """Focal loss (MONAI, softmax, gamma 2): down-weights easy examples."""
    from monai.losses import FocalLoss

    inner = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, weight=class_weights)
    return _IndexTargets(inner)


@_register("ordinal_bce", "index")
def ordinal_binary_cross_entropy(class_weights: torch.Tensor | None, label_smoothing: float) -> nn.Module:
    """Ordered grades: binary cross-entropy on the softmax's cumulative probabilities ``P(y > k)``."""
    return OrdinalBCE(label_smoothing)


@_register("bce", "multilabel")
def binary_cross_entropy(class_weights: torch.Tensor | None, label_smoothing: float) -> nn.Module:
    """Multi-label: one sigmoid per label (targets 0/1 ``(B, L)``); ``class_weights`` = positive weights."""
    return _SmoothedBCE(class_weights, label_smoothing)


@_register("dice_ce", "mask")
def dice_cross_entropy(class_weights: torch.Tensor | None, label_smoothing: float) -> nn.Module:
    """Soft Dice (over the whole batch) plus cross-entropy of logits ``(B, K, *S)`` against label maps
    ``(B, 1, *S)`` (MONAI ``DiceCELoss``; the nnU-Net loss, Isensee et al. 2021)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, batch=True)


class _IndexTargets(nn.Module):
    """Adapts a loss wanting ``(B, 1)`` targets to class-index targets ``(B,)``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inner(logits, target[:, None])


class OrdinalBCE(nn.Module):
    """Cumulative-link loss for ordered grades, read off one softmax over ``K`` logits.

    The ordinal decomposition of Frank & Hall (ECML 2001, "A simple approach to ordinal
    classification"), also used by CORAL / CORN (Cao et al. 2020; Shi et al. 2023): grade ``y`` of
    ``0..K-1`` is the answer to ``K - 1`` binary questions "is the grade above ``k``?". Here the
    answers come from the network's usual softmax ``p``: ``P(y > k) = p_{k+1} + ... + p_{K-1}``, so
    they are consistent by construction (CORAL's separate outputs need not be) and the head, the
    probabilities and every consumer stay those of a ``K``-class classifier. The loss is the sum
    over ``k = 0..K-2`` of the binary cross-entropy of ``P(y > k)`` against ``[y > k]``, averaged
    over the batch: a grade ``d`` steps from the truth is wrong on ``d`` questions and costs
    accordingly, and each term being a proper scoring rule, the expected loss is least at the true
    grade distribution (the probabilities stay calibrated). For ``K = 2`` it is cross-entropy.
    ``label_smoothing`` pulls the binary targets towards 0.5.

    Shapes: ``logits (B, K)``, ``target (B,)`` grade indices; returns a scalar.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = logits.shape[1]
        if k < 2:
            raise ConfigError(f"train.loss=ordinal_bce needs two or more grades, got logits of shape "
                              f"{tuple(logits.shape)}; list every grade in dataset.class_names")
        log_total = torch.logsumexp(logits, dim=1, keepdim=True)
        # log P(y <= k) and log P(y > k) by cumulative log-sum-exp from either end: no 1 - p cancellation
        log_at_most = torch.logcumsumexp(logits, dim=1)[:, :-1] - log_total
        log_above = torch.logcumsumexp(logits.flip(1), dim=1).flip(1)[:, 1:] - log_total
        above = (target[:, None] > torch.arange(k - 1, device=logits.device)).to(logits.dtype)
        above = above * (1 - self.smoothing) + 0.5 * self.smoothing
        return -(above * log_above + (1 - above) * log_at_most).sum(dim=1).mean()


class _SmoothedBCE(nn.Module):
    def __init__(self, pos_weight: torch.Tensor | None, label_smoothing: float):
        super().__init__()
        self.loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float() * (1 - self.smoothing) + 0.5 * self.smoothing
        return self.loss(logits, target)


def check_loss(name: str, targets: Targets) -> LossSpec:
    """The registered loss ``name``, which must take ``targets``.

    Raises:
        ConfigError: unknown name (with "did you mean"), or a loss for other targets (naming those that fit).
    """
    spec = LOSSES.get(name)
    if spec.targets != targets:
        fitting = [n for n in LOSSES if LOSSES.get(n).targets == targets]
        raise ConfigError(f"train.loss={name} is a {TARGET_WORDS[spec.targets]} loss and does not fit a "
                          f"{TARGET_WORDS[targets]} task; use {' or '.join(fitting)}")
    return spec


def build_loss(name: str, *, targets: Targets, class_weights: torch.Tensor | None = None,
               label_smoothing: float = 0.0) -> nn.Module:
    """The loss module ``name`` for ``targets`` (see :func:`check_loss`)."""
    return check_loss(name, targets).build(class_weights, label_smoothing)
