"""The LightningModule for segmentation: patches in, Dice + cross-entropy out; whole cases to validate.

Training batches are random patches (:class:`~medlens.data.volumes.PatchDataset`), augmented on
the batch, image and mask together. With deep supervision the lower-resolution heads add to the
loss with weights 1/2, 1/4 (normalised). Validation predicts every validation case whole, by
Gaussian-weighted sliding windows, and logs ``val_dice``: the mean over cases and foreground
classes of the Dice on the preprocessed grid (a class absent from both reference and prediction
is left out, never counted as 1).
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch

from medlens.config import Config
from medlens.tasks.losses import build_loss
from medlens.tasks.optim import scheduled_optimizer
from medlens.transforms import BatchAugment


class SegmentationModule(pl.LightningModule):
    """Wraps a registry segmentation network with its loss, augmentation, optimiser and validation.

    Args:
        model: ``forward(x (B, C, *P)) -> logits (B, K, *P)``, or ``(B, 1 + S, K, *P)`` in training
            mode with deep supervision.
        config: the run's resolved configuration.
        patches: the training :class:`~medlens.data.volumes.PatchDataset` (its epoch is set here).
    """

    def __init__(self, model: torch.nn.Module, config: Config, patches=None):
        super().__init__()
        self.model, self.config, self.patches = model, config, patches
        self.loss = build_loss(config.train.loss, targets="mask")
        self.augment = BatchAugment(config.augment, config.dataset.spatial_dims)
        self.generator: torch.Generator | None = None
        self._dice: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        seed, epoch = self.config.train.seed, self.current_epoch
        torch.manual_seed(seed * 100_003 + epoch)
        self.generator = torch.Generator(device=self.device).manual_seed(seed * 100_019 + epoch + 1)
        if self.patches is not None:
            self.patches.epoch = epoch

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        x, y = self.augment(x, self.generator, y)
        out = self.model(x)
        loss = self.supervised_loss(out, y[:, None])
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        return loss

    def supervised_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Dice + CE of the main output; with deep supervision, plus the heads at weights 1/2, 1/4 (normalised)."""
        if out.ndim == target.ndim:
            return self.loss(out, target)
        weights = torch.tensor([0.5 ** k for k in range(out.shape[1])], device=out.device)
        weights = weights / weights.sum()
        return sum(w * self.loss(out[:, k], target) for k, w in enumerate(weights))

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        probs = self.predict_volume(x)
        self._dice.append(dice_per_class(probs.argmax(1)[0], y[0], probs.shape[1]))

    def predict_volume(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax ``(1, K, *S)`` of a whole preprocessed case ``x (1, C, *S)`` by sliding windows."""
        from medlens.models.sliding import sliding_probs

        return sliding_probs(self.model, x, self.config)

    def on_validation_epoch_end(self) -> None:
        if not self._dice:
            return
        scores = np.stack(self._dice)  # (cases, K-1), NaN where a class is absent from both
        self._dice.clear()
        value = float(np.nanmean(scores)) if np.isfinite(scores).any() else 0.0
        self.log("val_dice", value, prog_bar=True, sync_dist=True)  # every rank scores the whole validation split
        for k, name in enumerate(self.config.dataset.class_names[1:]):
            column = scores[:, k]
            self.log(f"val_dice_{name}", float(np.nanmean(column)) if np.isfinite(column).any() else 0.0,
                     sync_dist=True)

    def configure_optimizers(self):
        return scheduled_optimizer(self.model.parameters(), self.config.train, self.trainer)


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> np.ndarray:
    """Dice of classes 1..K-1 between two label maps ``(*S)``; NaN where both are empty."""
    scores = []
    for k in range(1, num_classes):
        p, t = pred == k, target == k
        total = int(p.sum() + t.sum())
        scores.append(2.0 * int((p & t).sum()) / total if total else float("nan"))
    return np.asarray(scores, dtype=np.float64)
