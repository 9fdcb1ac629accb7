"""Building the Lightning Trainer every task's module trains under: callbacks, precision, devices, logs."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from medlens.config import Config
from medlens.engine.callbacks import EpochCSV, TimeBudget
from medlens.engine.checkpoints import AtomicCheckpointIO
from medlens.engine.distributed import Launch
from medlens.runs import RunFolder

ONE_PROCESS = Launch()


def build_trainer(run: RunFolder, config: Config, csv_metrics: tuple[str, ...], *, launch: Launch = ONE_PROCESS,
                  strategy: str = "auto", progress_bar: bool = True, steps_per_epoch: int = 0,
                  select_by: str = "", started: float | None = None) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The Trainer with medlens' callbacks.

    Args:
        csv_metrics: the logged metrics ``metrics.csv`` records each epoch.
        launch: the processes (devices x nodes) and how they were started.
        steps_per_epoch: optimisation steps per epoch in each process; sizes the weight average
            (``train.ema_fraction``).
        select_by: the logged value the best checkpoint and early stopping watch (default ``train.monitor``).
        started: :func:`time.perf_counter` when the run's work began (before preprocessing): ``train.time_budget_s``
            counts from there (default: now). See :class:`~medlens.engine.callbacks.TimeBudget`.
    """
    _quiet_lightning()
    t = config.train
    mode = "min" if t.monitor == "val_loss" else "max"  # val_dice, val_auc, val_accuracy: higher is better
    monitor = select_by or t.monitor
    best = ModelCheckpoint(dirpath=run.checkpoints, filename="best", monitor=monitor, mode=mode, save_last=True,
                           save_top_k=1, enable_version_counter=False)
    callbacks = [best, EarlyStopping(monitor=monitor, mode=mode, patience=t.patience, check_finite=False),
                 EpochCSV(run.metrics_csv, csv_metrics), *weight_averaging(config, steps_per_epoch)]
    if t.time_budget_s:
        callbacks.append(TimeBudget(t.time_budget_s, time.perf_counter() if started is None else started))
    gpu = torch.cuda.is_available()
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if gpu and torch.cuda.is_bf16_supported()
                                                           else "16-mixed" if gpu else "32-true")
    if strategy == "auto" and launch.processes > 1:
        strategy = "ddp"
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu", devices=launch.devices, num_nodes=launch.num_nodes, strategy=strategy,
        precision=precision, max_epochs=t.max_epochs,
        callbacks=callbacks, logger=_tensorboard(run), plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0,
        use_distributed_sampler=False, enable_progress_bar=progress_bar, enable_model_summary=False,
        log_every_n_steps=10, default_root_dir=run.root)
    return trainer, best


def time_budget(trainer: pl.Trainer) -> TimeBudget | None:
    """The trainer's :class:`~medlens.engine.callbacks.TimeBudget` (``None`` without a budget)."""
    return next((c for c in trainer.callbacks if isinstance(c, TimeBudget)), None)


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
