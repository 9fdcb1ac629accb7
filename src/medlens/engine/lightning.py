"""Building the LightningModule and Trainer from a run's configuration."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from medlens.config import Config
from medlens.engine.callbacks import CLASSIFICATION_METRICS, EpochCSV
from medlens.engine.checkpoints import AtomicCheckpointIO, transfer_weights
from medlens.engine.prepared import SplitData
from medlens.engine.runs import RunFolder
from medlens.errors import ConfigError
from medlens.models import Ensemble, build_classifier
from medlens.tasks.classification import ClassificationModule


def build_model(config: Config):
    """The network a plan describes: a registry classifier, or a segmentation network."""
    if config.dataset.task == "segmentation":
        from medlens.models import build_segmenter

        m = config.model
        return build_segmenter(m.name, in_channels=config.data.channels, num_classes=len(config.dataset.class_names),
                               filters=m.filters, strides=m.strides, kernels=m.kernels,
                               deep_supervision=m.deep_supervision, dropout=m.dropout)
    m = config.model
    if m.members < 1:
        raise ConfigError(f"model.members={m.members}: give 1 (one network) or more (an ensemble)")
    members = [build_classifier(m.name, in_channels=config.data.channels, num_classes=len(config.dataset.class_names),
                                input_size=tuple(config.data.input_size), width=m.width, dropout=m.dropout)
               for _ in range(m.members)]
    return members[0] if m.members == 1 else Ensemble(members)


def build_module(config: Config, train: SplitData, init_from=None) -> tuple[ClassificationModule, dict | None]:
    """The module with a fresh (seeded) model, optional transferred weights, and class weights."""
    torch.manual_seed(config.train.seed)
    model = build_model(config)
    transfer = transfer_weights(model, Path(init_from)) if init_from else None
    return ClassificationModule(model, config, class_weights(config, train.labels)), transfer


def class_weights(config: Config, labels: np.ndarray) -> torch.Tensor | None:
    """Inverse-frequency weights ``N / (K * n_k)`` for the weighted losses, else ``None``."""
    if config.train.loss not in ("weighted_ce", "focal"):
        return None
    k = len(config.dataset.class_names)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return torch.tensor(len(labels) / (k * np.maximum(counts, 1)), dtype=torch.float32)


def build_trainer(run: RunFolder, config: Config, *, devices: int = 1, strategy: str = "auto",
                  progress_bar: bool = True, steps_per_epoch: int = 0) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The Trainer with medlens' callbacks; ``steps_per_epoch`` sizes the weight average (``train.ema_fraction``)."""
    _quiet_lightning()
    t = config.train
    mode = "min" if t.monitor == "val_loss" else "max"  # val_dice, val_auc, val_accuracy: higher is better
    monitor = "val_auc_then_loss" if t.monitor == "val_auc" else t.monitor
    best = ModelCheckpoint(dirpath=run.checkpoints, filename="best", monitor=monitor, mode=mode, save_last=True,
                           save_top_k=1, enable_version_counter=False)
    callbacks = [best, EarlyStopping(monitor=monitor, mode=mode, patience=t.patience, check_finite=False),
                 EpochCSV(run.metrics_csv, _csv_metrics(config)), *weight_averaging(config, steps_per_epoch)]
    gpu = torch.cuda.is_available()
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if gpu and torch.cuda.is_bf16_supported()
                                                           else "16-mixed" if gpu else "32-true")
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu", devices=devices, strategy=strategy, precision=precision,
        max_epochs=t.max_epochs, max_time=timedelta(seconds=t.time_budget_s) if t.time_budget_s else None,
        callbacks=callbacks, logger=_tensorboard(run), plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0,
        use_distributed_sampler=False, enable_progress_bar=progress_bar, enable_model_summary=False,
        log_every_n_steps=10, default_root_dir=run.root)
    return trainer, best


def weight_averaging(config: Config, steps_per_epoch: int) -> list[pl.Callback]:
    """An exponential moving average of the weights over the last ``train.ema_fraction`` of the
    ``max_epochs * steps_per_epoch`` steps (Lightning's ``EMAWeightAveraging``): validation, the best
    checkpoint and the final weights all use the average, so the checkpoint chosen on a small
    validation split is not one noisy step's weights."""
    horizon = config.train.ema_fraction * config.train.max_epochs * steps_per_epoch
    if horizon <= 0:
        return []
    from lightning.pytorch.callbacks import EMAWeightAveraging

    return [EMAWeightAveraging(decay=1.0 - 1.0 / max(horizon, 1.0))]


def _csv_metrics(config: Config) -> tuple[str, ...]:
    if config.dataset.task == "segmentation":
        return ("train_loss", "val_dice", *[f"val_dice_{n}" for n in config.dataset.class_names[1:]])
    return CLASSIFICATION_METRICS


def _quiet_lightning() -> None:
    """Keep the terminal for what matters: no tips, no warnings about choices medlens made on purpose."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # data are preprocessed in memory
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def _tensorboard(run: RunFolder):
    from lightning.pytorch.loggers import TensorBoardLogger

    try:
        return TensorBoardLogger(save_dir=run.root, name="tensorboard", version="", default_hp_metric=False)
    except (ImportError, ModuleNotFoundError):
        return False
