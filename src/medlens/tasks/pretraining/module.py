"""The LightningModule for contrastive pretraining (SimCLR): a training step that reads top to bottom.

Chen et al., "A simple framework for contrastive learning of visual representations", ICML 2020. Each
image gives two augmented views; the encoder's pooled features go through a small projection MLP, and the
NT-Xent loss (MONAI's ``ContrastiveLoss``) pulls the two projections of an image together and pushes those
of the other ``2B - 2`` views away, by cosine similarity over a temperature. The projection head is
dropped afterwards: what is kept is the encoder, ``model.backbone``.

Every random draw of epoch *e* comes from ``(seed, e)``, so a run resumed from its epoch-*e* checkpoint
retraces an uninterrupted run; validation views come from one fixed seed, so ``val_loss`` of different
epochs is measured on the same views.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn

from medlens.config import Config
from medlens.models.classifiers import Classifier
from medlens.tasks.optim import build_optimizer, schedule_factor
from medlens.tasks.pretraining.views import two_views


class ContrastiveModule(pl.LightningModule):
    """A registry :class:`~medlens.models.Classifier`'s encoder trained by SimCLR.

    Args:
        model: ``forward_features(x (B, C, *S)) -> (B, F)``; its head is frozen and left untouched
            (fine-tuning re-initialises it), so ``model.state_dict()`` loads into a classifier as it is.
        config: the run's configuration (``pretrain``, ``augment``, ``train``).
        steps_per_epoch: optimisation steps per epoch in this process; with ``train.max_epochs`` it sizes
            the learning-rate schedule.
    """

    def __init__(self, model: Classifier, config: Config, *, steps_per_epoch: int):
        super().__init__()
        from monai.losses import ContrastiveLoss

        self.model, self.config, self.steps_per_epoch = model, config, max(int(steps_per_epoch), 1)
        features, out = model.num_features, config.pretrain.projection_dim
        self.projection = nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True), nn.Linear(features, out))
        self.loss = ContrastiveLoss(temperature=config.pretrain.temperature)
        for p in model.head_parameters():
            p.requires_grad_(False)  # unused by the loss; distributed training refuses parameters without gradients
        self.generator: torch.Generator | None = None
        self._val_sums: list[tuple[float, int]] = []

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Projections ``(B, projection_dim)`` of images ``(B, C, *S)``."""
        return self.projection(self.model.forward_features(x))

    def contrastive_loss(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """NT-Xent of two views of each image (one forward pass over both, so batch norm sees both)."""
        view_a, view_b = two_views(images, self.config, generator)
        z = self.project(torch.cat([view_a, view_b])).float()  # exp(cos / T) in half precision loses digits
        return self.loss(z[: len(images)], z[len(images):])

    # ---- training ---------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        seed, epoch = self.config.train.seed, self.current_epoch
        torch.manual_seed(seed * 100_003 + epoch)  # dropout and anything else drawing from torch
        self.generator = torch.Generator(device=self.device).manual_seed(seed * 100_019 + epoch + 1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = images_of(batch)
        loss = self.contrastive_loss(images, self.generator)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(images),
                 sync_dist=True)
        return loss

    # ---- validation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_generator = torch.Generator(device=self.device).manual_seed(self.config.train.seed * 100_043 + 7)
        self._val_sums.clear()

    def validation_step(self, batch, batch_idx: int) -> None:
        images = images_of(batch)
        loss = self.contrastive_loss(images, self._val_generator)
        self._val_sums.append((float(loss.detach()) * len(images), len(images)))

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        total, count = (sum(v) for v in zip(*self._val_sums))
        self._val_sums.clear()
        self.log("val_loss", total / count, prog_bar=True, sync_dist=True)

    # ---- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.config.train
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, t)
        total = self.steps_per_epoch * max(t.max_epochs, 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(t.schedule, step, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def images_of(batch) -> torch.Tensor:
    """The images ``(B, C, *S)`` of a batch: the batch itself, or the first item of a tuple / list.

    Raises:
        TypeError: a batch that is neither.
    """
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"contrastive pretraining: expected a batch of images (B, C, *S) or a tuple / list whose "
                        f"first item is one, got {type(batch).__name__}; make the loader yield images first")
    return images
