"""``train``: plan (or read a plan), check, fit with Lightning, keep the best model, calibrate.

Every check that can fail runs before the first training step: audit errors, labels, a class
with no training example, a model of the wrong dimensionality, an ``--init-from`` checkpoint of
another network. A run folder is created fresh (never overwritten); ``resume`` continues one
from its last atomic checkpoint.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medlens._files import write_json_atomic, write_text_atomic
from medlens.config import Config, apply_overrides, read_plan, render_plan
from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.splits import read_splits
from medlens.engine.prepared import (SplitData, check_plan_fits, open_config_dataset, prepare_split, resolve_splits,
                                     split_cases)
from medlens.engine.runs import RunFolder, new_run, now, open_run
from medlens.errors import ConfigError, DatasetError

BLOCKING = {"class.empty", "class.no_training", "image.dims", "image.unreadable", "file.missing", "label.missing",
            "mask.unreadable", "mask.values", "mask.labels", "mask.geometry", "mask.dims", "mask.channels",
            "mask.all_background"}


def make_plan(source, *, image_root=None, time_budget_s: float | None = None, log=print):
    """Open and audit ``source``, then plan. Returns ``(config, reasons, card, dataset)``."""
    from medlens.planning import plan_classification, plan_segmentation

    dataset = open_dataset(source, image_root=image_root)
    card = inspect_dataset(dataset)
    check_card(card, log)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    planner = plan_segmentation if card["dataset"]["task"] == "segmentation" else plan_classification
    config, reasons = planner(card, time_budget_s=time_budget_s, device=device)
    if image_root:
        config = replace(config, dataset=replace(config.dataset, image_root=str(image_root)))
    return config, reasons, card, dataset


def check_card(card: dict, log=print) -> None:
    """Refuse data the audit found unusable; print the other findings as warnings."""
    blocking = [f for f in card["findings"] if f["code"] in BLOCKING and f["severity"] == "error"]
    for finding in card["findings"]:
        if finding not in blocking and finding["severity"] in ("error", "warning"):
            log(f"warning [{finding['code']}]: {finding['message']}")
    if blocking:
        raise DatasetError("the data cannot be trained on:\n" + "\n".join(f"  [{f['code']}] {f['message']}"
                                                                          for f in blocking))


def plan_header(source) -> str:
    return (f"medlens plan for {source}, made {now()}.\nEdit any value; the comment beside it says why it was "
            "chosen. Train with: medlens train DATA --plan THIS_FILE")


def train(source=None, *, plan: Path | None = None, overrides: list[str] = (), out=None, resume=None,
          time_budget_s: float | None = None, init_from=None, devices: int = 1, strategy: str = "auto",
          image_root=None, progress_bar: bool = True, log=print) -> RunFolder:
    """Train a classifier; returns the run folder (see :mod:`medlens.engine.runs`)."""
    attached = _ddp_child_run()
    if attached or resume:
        run = attached or open_run(resume, finished=False)
        if not attached and run.read_info().get("status") == "finished":
            log(f"{run.root}: this run already finished; nothing to resume")
            return run
        config = run.read_config()
        dataset = open_config_dataset(config)
        splits = read_splits(run.splits, dataset)
        checkpoint = run.last_checkpoint if run.last_checkpoint.exists() else None
        if not attached:
            log(f"resuming {run.root} from {checkpoint or 'the start (no checkpoint yet)'}")
        return _fit(run, config, dataset, splits, init_from=None, devices=devices, strategy=strategy,
                    checkpoint=checkpoint, progress_bar=progress_bar, log=log)
    if source is None:
        raise ConfigError("give the dataset to train on (or --resume RUN_FOLDER)")
    config, reasons, card, dataset = _initial_config(source, plan, image_root, time_budget_s, log)
    config = apply_overrides(config, list(overrides))
    check_plan_fits(config, dataset)
    check_compatible(config)
    splits = resolve_splits(dataset, config)
    run = new_run(out, Path(str(source)).name.removesuffix(".npz").removesuffix(".csv"))
    write_text_atomic(run.plan, render_plan(config, reasons, plan_header(source)))
    write_json_atomic(run.card, card)
    write_json_atomic(run.splits, splits)
    log(f"run folder: {run.root}")
    return _fit(run, config, dataset, splits, init_from=init_from, devices=devices, strategy=strategy,
                checkpoint=None, progress_bar=progress_bar, log=log)


def _initial_config(source, plan, image_root, time_budget_s, log):
    if plan is None:
        return make_plan(source, image_root=image_root, time_budget_s=time_budget_s, log=log)
    config, reasons = read_plan(plan)
    if str(Path(source)) != str(Path(config.dataset.source)):
        config = replace(config, dataset=replace(config.dataset, source=str(source)))
    if time_budget_s:
        config = replace(config, train=replace(config.train, time_budget_s=float(time_budget_s)))
    dataset = open_dataset(source, image_root=image_root or config.dataset.image_root or None)
    card = inspect_dataset(dataset)
    check_card(card, log)
    return config, reasons, card, dataset


def check_compatible(config: Config) -> None:
    """The plan's model must fit its data: dimensionality, input (patch) size, task."""
    dims = config.dataset.spatial_dims
    if config.dataset.task == "segmentation":
        return check_segmentation_plan(config)
    if not config.model.name.endswith(f"_{dims}d"):
        family = config.model.name.rsplit("_", 1)[0]
        raise ConfigError(f"model.name={config.model.name} does not take {dims}D data "
                          f"(input {list(config.data.input_size)}); use {family}_{dims}d")
    if len(config.data.input_size) != dims:
        raise ConfigError(f"data.input_size={list(config.data.input_size)} has {len(config.data.input_size)} axes "
                          f"but the data are {dims}D")
    from medlens.models import CLASSIFIERS, SEGMENTERS

    if config.model.name in SEGMENTERS:
        raise ConfigError(f"model.name={config.model.name} is a segmentation network; this plan is for "
                          f"{config.dataset.task} classification ({', '.join(CLASSIFIERS.names()[:4])}, ...)")
    CLASSIFIERS.get(config.model.name)  # an unknown name fails here, with a "did you mean"


def check_segmentation_plan(config: Config) -> None:
    """A segmentation network of the data's dimensionality whose patch every level divides evenly."""
    from medlens.models import SEGMENTERS, patch_multiple

    dims, name, patch = config.dataset.spatial_dims, config.model.name, tuple(config.data.input_size)
    if name not in SEGMENTERS:
        raise ConfigError(f"model.name={name} is not a segmentation network; use one of "
                          f"{', '.join(n for n in SEGMENTERS.names() if n.endswith(f'_{dims}d'))}")
    if not name.endswith(f"_{dims}d") or len(patch) != dims:
        raise ConfigError(f"model.name={name} with patch data.input_size={list(patch)} does not fit {dims}D data; "
                          f"use {name.rsplit('_', 1)[0]}_{dims}d and a {dims}-axis patch")
    multiple = patch_multiple(name, config.model.strides)
    if any(p % m for p, m in zip(patch, multiple)):
        raise ConfigError(f"data.input_size={list(patch)}: {name} with these strides needs every patch side to be a "
                          f"multiple of {list(multiple)}; e.g. {[-(-p // m) * m for p, m in zip(patch, multiple)]}")
    if len(config.dataset.label_values) != len(config.dataset.class_names):
        raise ConfigError(f"dataset.label_values {list(config.dataset.label_values)} and dataset.class_names "
                          f"{list(config.dataset.class_names)} need one entry per class")


def _ddp_child_run() -> RunFolder | None:
    """In a DDP worker process Lightning re-executes the command: join the run rank 0 created."""
    if int(os.environ.get("LOCAL_RANK", "0")) > 0 and os.environ.get("MEDLENS_RUN_DIR"):
        return RunFolder(Path(os.environ["MEDLENS_RUN_DIR"]))
    return None


def _fit(run, config, dataset, splits, *, init_from, devices, strategy, checkpoint, progress_bar, log) -> RunFolder:
    from medlens.engine.lightning import build_module, build_trainer

    cases = split_cases(dataset, splits, config.dataset.fold)
    if config.dataset.task == "segmentation":
        from medlens.engine.segment import fit_segmentation

        return fit_segmentation(run, config, dataset, cases, checkpoint=checkpoint, devices=devices,
                                strategy=strategy, init_from=init_from, progress_bar=progress_bar, log=log)
    started = time.perf_counter()
    train_data = prepare_split(dataset, "train", cases["train"], config)
    val_data = prepare_split(dataset, "val", cases["val"], config)
    check_labels(config, train_data, val_data)
    config = _fit_monitor(config, val_data, log)
    module, transfer = build_module(config, train_data, init_from)
    if transfer:
        log(f"--init-from: loaded {transfer['loaded']} tensors; re-initialised {transfer['reinitialised'] or 'none'}")
    steps = -(-len(train_data.images) // (config.train.batch_size * max(devices, 1)))
    trainer, best = build_trainer(run, config, devices=devices, strategy=strategy, progress_bar=progress_bar,
                                  steps_per_epoch=steps)
    loaders = _loaders(config, train_data, val_data)
    os.environ["MEDLENS_RUN_DIR"] = str(run.root.resolve())
    if trainer.global_rank == 0:
        run.update_info(status="running", started=now(), dataset=config.dataset.source, task=config.dataset.task,
                        transfer=transfer, prepare_seconds=round(time.perf_counter() - started, 2))
    trainer.fit(module, *loaders, ckpt_path=checkpoint)
    if trainer.global_rank == 0 and trainer.world_size > 1:
        run.update_info(world_size=trainer.world_size, backend=torch.distributed.get_backend())
    if trainer.global_rank != 0:
        return run
    if trainer.interrupted:
        run.update_info(status="interrupted")
        raise KeyboardInterrupt
    _finish(run, config, module.model, val_data, trainer, best, started, log)
    return run


def check_labels(config: Config, train: SplitData, val: SplitData) -> None:
    """Every class needs training examples; the validation split needs labels of the same kind."""
    if config.dataset.task == "multilabel":
        return
    counts = np.bincount(train.labels, minlength=len(config.dataset.class_names))
    empty = [n for n, c in zip(config.dataset.class_names, counts) if c == 0]
    if empty:
        raise DatasetError(f"class(es) {', '.join(empty)} have no training example (train counts "
                           f"{dict(zip(config.dataset.class_names, counts.tolist()))}); add data or change the splits")


def _fit_monitor(config: Config, val: SplitData, log) -> Config:
    labels = val.labels if val.labels.ndim == 1 else val.labels.argmax(1)
    if config.train.monitor == "val_auc" and len(np.unique(labels)) < 2:
        log("warning: the validation split holds one class only, so AUC is undefined; monitoring val_loss")
        return replace(config, train=replace(config.train, monitor="val_loss"))
    return config


def _loaders(config: Config, train: SplitData, val: SplitData):
    from medlens.data.loading import EpochSampler, balanced_weights, make_loader

    weights = balanced_weights(train.labels) if config.train.sampler == "weighted" else None
    sampler = EpochSampler(len(train.images), config.train.seed, weights)
    workers = config.data.num_workers
    return (make_loader(train.images, train.labels, config.train.batch_size, sampler=sampler, num_workers=workers),
            make_loader(val.images, val.labels, max(config.train.batch_size, 256), num_workers=workers))


def _finish(run: RunFolder, config: Config, model, val: SplitData, trainer, best, started: float, log) -> None:
    """Keep the best weights, fit the temperature and threshold on validation, mark the run finished."""
    from medlens.engine.checkpoints import load_state_dict, save_atomic
    from medlens.engine.calibrate import calibrate, validation_metrics
    from medlens.engine.evaluate import json_safe

    source = Path(best.best_model_path) if best.best_model_path else run.last_checkpoint
    model.load_state_dict(load_state_dict(source))
    save_atomic(model.state_dict(), run.weights)
    calibration = calibrate(model, config, val)
    write_json_atomic(run.calibration, calibration)
    write_json_atomic(run.validation, json_safe(validation_metrics(model, config, val, calibration)))
    score = best.best_model_score
    run.update_info(status="finished", finished=now(), epochs_run=trainer.current_epoch,
                    best_checkpoint=source.name, best_score=None if score is None else round(float(score), 6),
                    monitor=best.monitor, train_seconds=round(time.perf_counter() - started, 2),
                    stopped_by=stop_reason(trainer, config))
    log(f"best {best.monitor} {float(score) if score is not None else float('nan'):.4f}; "
        f"temperature {calibration['temperature']:.3f}; weights in {run.weights}")
    from medlens.report import write_report

    write_report(run, log=log)


def stop_reason(trainer, config: Config) -> str:
    if trainer.current_epoch >= config.train.max_epochs:
        return "max_epochs"
    stopper = trainer.early_stopping_callback
    if stopper is not None and stopper.stopped_epoch:
        return "early_stopping"
    return "time_budget"
