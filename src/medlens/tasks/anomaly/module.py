"""The LightningModule of the autoencoder method: reconstruct normal images, a training step that reads top to
bottom. (PatchCore's encoder trains with :class:`medlens.tasks.pretraining.module.ContrastiveModule`.)

Every random draw of epoch *e* comes from ``(seed, e)``, so a resumed run retraces an uninterrupted one.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from medlens.config import Config
from medlens.tasks.optim import scheduled_optimizer
from medlens.transforms import BatchAugment


class AutoencoderModule(pl.LightningModule):
    """L2 reconstruction of (augmented) normal training images; ``val_loss`` on normal validation images.

    Args:
        model: an :class:`~medlens.tasks.anomaly.models.AutoencoderModel`.
        config: the run's configuration (``augment``, ``train``).
    """

    def __init__(self, model, config: Config):
        super().__init__()
        self.model, self.config = model, config
        self.augment = BatchAugment(config.augment, config.dataset.spatial_dims)
        self.generator: torch.Generator | None = None
        self._val_sums: list[tuple[float, int]] = []

    def on_train_epoch_start(self) -> None:
        seed, epoch = self.config.train.seed, self.current_epoch
        torch.manual_seed(seed * 100_003 + epoch)
        self.generator = torch.Generator(device=self.device).manual_seed(seed * 100_019 + epoch + 1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = self.augment(batch, self.generator)
        loss = torch.nn.functional.mse_loss(self.model.reconstruct(x).float(), x.float())
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums.clear()

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = torch.nn.functional.mse_loss(self.model.reconstruct(batch).float(), batch.float())
        self._val_sums.append((float(loss.detach()) * len(batch), len(batch)))

    def on_validation_epoch_end(self) -> None:
        if self._val_sums:
            total, count = (sum(v) for v in zip(*self._val_sums))
            self._val_sums.clear()
            self.log("val_loss", total / count, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        return scheduled_optimizer(self.model.parameters(), self.config.train, self.trainer)
