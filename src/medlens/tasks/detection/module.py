"""The LightningModule for detection: patches with boxes in, RetinaNet's focal + box-regression loss out;
whole validation images scored by COCO mAP (logged: ``val_map`` over IoU 0.5:0.95, ``val_map50``)."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch

from medlens.config import Config
from medlens.tasks.optim import scheduled_optimizer


class DetectionModule(pl.LightningModule):
    """Wraps MONAI's RetinaNet detector with its optimiser and validation.

    Args:
        model: the detector (:func:`medlens.models.detectors.build_detector`): in training mode
            ``model(images (B, C, *P), targets) -> {"classification", "box_regression"}`` losses.
        config: the run's resolved configuration.
        patches: the training :class:`~medlens.tasks.detection.prepare.BoxPatches` (its epoch is set here).
    """

    def __init__(self, model: torch.nn.Module, config: Config, patches=None):
        super().__init__()
        self.model, self.config, self.patches = model, config, patches
        self._found: list = []
        self._truth: list = []

    def on_train_epoch_start(self) -> None:
        torch.manual_seed(self.config.train.seed * 100_003 + self.current_epoch)
        if self.patches is not None:
            self.patches.epoch = self.current_epoch

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = losses["classification"] + losses["box_regression"]
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(images),
                 sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        from medlens.tasks.detection.infer import detect_array

        image, boxes, labels = batch
        self._found.append(detect_array(self.model, image[0], self.config))
        self._truth.append((boxes[0].cpu().numpy(), labels[0].cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        from medlens.tasks.detection.metrics import detection_metrics

        if not self._found:
            return
        preds = [(d.boxes, d.scores, d.labels) for d in self._found]
        scores = detection_metrics(preds, self._truth, self.config.dataset.class_names)
        self._found, self._truth = [], []
        self.log("val_map", float(np.nan_to_num(scores["map"])), prog_bar=True, sync_dist=True)
        self.log("val_map50", float(np.nan_to_num(scores["map_50"])), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        return scheduled_optimizer(self.model.parameters(), self.config.train, self.trainer)


class WholeImages(torch.utils.data.Dataset):
    """Validation images whole: ``item -> (image (C, *S), boxes (N, 2D), labels (N,))`` on the plan's grid."""

    def __init__(self, items):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        return torch.from_numpy(item.image), torch.from_numpy(item.boxes), torch.from_numpy(item.labels)
