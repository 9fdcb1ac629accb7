"""Optimisers and learning-rate schedules from the plan's ``train`` section, shared by every task."""

from __future__ import annotations

import math

import torch

from medlens.config import TrainSection


def build_optimizer(params, train: TrainSection) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum ``train.momentum``, or AdamW with its usual moment decays (0.9, 0.999).

    ``train.momentum`` is SGD's alone: a plan planned for SGD (nnU-Net's 0.99) and switched to AdamW with
    ``--set train.optimizer=adamw`` must not hand AdamW a first-moment decay of 0.99.

    Args:
        params: parameters, or parameter groups (dicts with ``params`` and their own ``lr``).
    """
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, nesterov=True,
                               weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)


def schedule_factor(kind: str, step: int, total: int) -> float:
    """Learning-rate multiplier at ``step`` of ``total``: cosine decay, one-cycle (warm-up then cosine),
    polynomial ``(1 - t)^0.9`` (nnU-Net), constant."""
    progress = min(step / total, 1.0)
    if kind == "constant":
        return 1.0
    if kind == "poly":
        return (1 - progress) ** 0.9
    if kind == "onecycle":
        warm = 0.3
        if progress < warm:
            return 0.04 + 0.96 * progress / warm
        progress = (progress - warm) / (1 - warm)
    return 0.5 * (1 + math.cos(math.pi * progress))


def scheduled_optimizer(params, train: TrainSection, trainer) -> dict:
    """What a LightningModule's ``configure_optimizers`` returns: :func:`build_optimizer` with the plan's
    schedule stepped every optimisation step over the whole planned training."""
    optimizer = build_optimizer(params, train)
    total = total_steps(trainer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(train.schedule, step, total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def total_steps(trainer) -> int:
    """Optimisation steps of the whole planned training in this process (at least 1)."""
    return max(int(trainer.estimated_stepping_batches), 1)
