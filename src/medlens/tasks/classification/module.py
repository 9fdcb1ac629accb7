"""The LightningModule for classification: a training step that reads top to bottom.

Batches arrive preprocessed; augmentation runs on the batch, on the training device. Every
random draw of epoch *e* comes from ``(seed, e)``, so a run resumed from its epoch-*e*
checkpoint retraces an uninterrupted run exactly. 3D networks on a CPU train in the memory
layout and precision that a few timed steps found fastest on that machine
(:mod:`medlens.models.speed`); the choice is kept in the checkpoint, so a resumed run keeps it.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import torch

from medlens.config import Config
from medlens.models.speed import SpeedOptions, choose_speed_options
from medlens.tasks.classification.inputs import (
    has_clinical,
    split_batch,
    view_count,
    view_presence,
    with_absent_views,
    withhold_inputs,
)
from medlens.tasks.losses import build_loss
from medlens.tasks.optim import build_optimizer, schedule_factor, total_steps
from medlens.transforms import BatchAugment


class ClassificationModule(pl.LightningModule):
    """Wraps a registry :class:`~medlens.models.Classifier` with its loss, augmentation and optimiser.

    Args:
        model: a Classifier or an Ensemble: ``forward(x (B, C, *spatial)) -> logits (B, K)`` and
            ``member_logits(x) -> (M, B, K)`` (each member gets its own loss).
        config: the run's resolved configuration.
        class_weights: ``(K,)`` loss weights (weighted CE / focal) or BCE positive weights.
    """

    def __init__(self, model: torch.nn.Module, config: Config, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.model, self.config = model, config
        self.multilabel = config.dataset.task == "multilabel"
        self.loss = build_loss(config.train.loss, targets="multilabel" if self.multilabel else "index",
                               class_weights=class_weights, label_smoothing=config.train.label_smoothing)
        self.augment = BatchAugment(config.augment, config.dataset.spatial_dims)
        self.views = view_count(config.data)
        self.absent = _absent(config)  # the encoding of a clinical record with no value (None: no clinical input)
        self.generator: torch.Generator | None = None
        self.speed: SpeedOptions | None = None  # chosen when training starts, or read from the checkpoint
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, *clinical: torch.Tensor) -> torch.Tensor:
        return self.model(x, *clinical)

    # ---- training ---------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        seed, epoch = self.config.train.seed, self.current_epoch
        torch.manual_seed(seed * 100_003 + epoch)  # dropout and anything else drawing from torch
        self.generator = torch.Generator(device=self.device).manual_seed(seed * 100_019 + epoch + 1)
        self._set_backbone_trainable(epoch >= self.config.train.freeze_epochs)

    def on_train_start(self) -> None:
        if self.speed is None:
            d = self.config.data
            example = torch.randn(self.config.train.batch_size, d.channels * self.views, *d.input_size,
                                  generator=torch.Generator().manual_seed(0)).to(self.device)
            self.speed, reason = choose_speed_options(self.model, example,
                                                      allow_bf16=self.config.train.precision == "auto")
            self.print(f"training step: {reason}")
        self.speed.apply(self.model)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, clinical, y = split_batch(batch)
        x, clinical = self._augment(x, clinical)
        with self._speed.autocast(self.device.type):
            member_logits = self.model.member_logits(self._speed.layout(x), *_given(clinical))
        losses = torch.stack([self.loss(logits.float(), y) for logits in member_logits])
        self.log("train_loss", losses.mean(), on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x),
                 sync_dist=True)
        return losses.sum()  # each ensemble member learns from its own loss, as if trained alone

    def _augment(self, x: torch.Tensor, clinical: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augmented images; with several inputs, each view and clinical record first withheld with chance
        ``train.modality_dropout``. A view a case lacks (or that is withheld) stays all-NaN: the transforms see
        zeros, and the NaN is put back after them, since interpolation would smear it into the padding."""
        if self.views == 1 and clinical is None:
            return self.augment(x, self.generator), None
        present = view_presence(x, self.views)
        present, clinical = withhold_inputs(present, clinical, self.absent, self.config.train.modality_dropout,
                                            self.generator)
        x = self.augment(torch.nan_to_num(x, nan=0.0), self.generator)
        return (with_absent_views(x, present) if self.views > 1 else x), clinical

    # ---- validation -------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        x, clinical, y = split_batch(batch)
        # float32: the scores that pick the checkpoint stay exact
        logits = self.model(self._speed.layout(x), *_given(clinical))
        loss_sum = self.loss(logits, y).detach() * len(x)
        self._val_outputs.append((logits.detach().float().cpu(), y.cpu(), loss_sum.cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        logits = torch.cat([o[0] for o in self._val_outputs])
        targets = torch.cat([o[1] for o in self._val_outputs])
        loss = float(sum(o[2] for o in self._val_outputs)) / len(targets)
        self._val_outputs.clear()
        probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)
        auc = quick_auc(targets.numpy(), probs.numpy(), self.multilabel)
        self.log_dict({"val_loss": loss, "val_auc": auc,
                       "val_accuracy": quick_accuracy(targets.numpy(), probs.numpy(), self.multilabel)},
                      prog_bar=True, sync_dist=True)  # every rank scores the whole validation split
        self.log("val_auc_then_loss", selection_score(auc, loss), sync_dist=True)
        if self.config.dataset.task == "ordinal":  # graders' agreement: what the plan selects ordinal models by
            from medlens.tasks.classification.metrics import quick_qwk

            self.log("val_qwk", quick_qwk(targets.numpy(), probs.numpy()), prog_bar=True, sync_dist=True)

    @property
    def _speed(self) -> SpeedOptions:
        return self.speed or SpeedOptions()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.speed is not None:
            checkpoint["speed_options"] = {"channels_last": self.speed.channels_last, "bf16": self.speed.bf16}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "speed_options" in checkpoint:
            self.speed = SpeedOptions(**checkpoint["speed_options"])

    # ---- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.config.train
        head = list(self.model.head_parameters())
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.model.parameters() if id(p) not in head_ids]
        optimizer = build_optimizer([{"params": backbone, "lr": t.lr}, {"params": head, "lr": t.lr}], t)
        total = total_steps(self.trainer)
        steps_per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
        freeze_steps = t.freeze_epochs * steps_per_epoch
        shape = lambda step: schedule_factor(t.schedule, step, total)  # noqa: E731
        after = lambda step: 1.0 if step < freeze_steps or not freeze_steps else t.finetune_lr_factor  # noqa: E731
        lambdas = [lambda s: 0.0 if s < freeze_steps else shape(s) * after(s), lambda s: shape(s) * after(s)]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _set_backbone_trainable(self, trainable: bool) -> None:
        head_ids = {id(p) for p in self.model.head_parameters()}
        for p in self.model.parameters():
            if id(p) not in head_ids:
                p.requires_grad_(trainable)


def _absent(config: Config) -> torch.Tensor | None:
    if not has_clinical(config.clinical):
        return None
    from medlens.data.clinical import absent_vector

    return torch.tensor(absent_vector(config.clinical), dtype=torch.float32)


def _given(clinical: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The network's inputs after the images: the clinical values when the plan has them."""
    return () if clinical is None else (clinical,)


def selection_score(auc: float, loss: float) -> float:
    """Validation AUC with ties broken by the lower loss (AUC often saturates on small validation
    splits, and the first epoch to reach it may be badly calibrated); ``-loss`` when AUC is undefined."""
    if not math.isfinite(auc):
        return -loss
    return auc - 1e-4 * min(loss, 10.0)


def quick_auc(targets: np.ndarray, probs: np.ndarray, multilabel: bool) -> float:
    """Macro one-vs-rest AUC over the classes present (nan when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    onehot = targets if multilabel else np.eye(probs.shape[1])[targets]
    scores = [roc_auc_score(onehot[:, k], probs[:, k]) for k in range(probs.shape[1])
              if 0 < onehot[:, k].sum() < len(onehot)]
    if probs.shape[1] == 2 and not multilabel:
        scores = scores[1:]  # binary: the positive class's AUC (the negative's is the same)
    return float(np.mean(scores)) if scores else float("nan")


def quick_accuracy(targets: np.ndarray, probs: np.ndarray, multilabel: bool) -> float:
    if multilabel:
        return float(((probs >= 0.5) == (targets >= 0.5)).mean())
    return float((probs.argmax(1) == targets).mean())
