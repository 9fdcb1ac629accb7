"""``train``: plan (or read a plan), check, fit with Lightning, keep the best model, calibrate, report.

One loop for every task: the task (looked up once from the plan's ``dataset.task``) prepares the
data, the module and the loaders and, once the best weights are back, fits what validation decides
(its calibration hook); the engine owns the run folder, the trainer, interruption, checkpoints and
the report. Every check that can fail runs before the first training step: audit errors, labels,
a model or loss that does not fit the task, an ``--init-from`` checkpoint of another network. A run
folder is created fresh (never overwritten); ``resume`` continues one from its last atomic
checkpoint.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from medlens._files import write_json_atomic, write_text_atomic
from medlens.config import Config, apply_overrides, read_plan, render_plan
from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.dataset import (
    allow_outside_root_in_force,
    series_rules_in_force,
    skip_unreadable_in_force,
    unreadable_skipped,
)
from medlens.data.prepared import check_plan_fits, open_config_dataset, reopen_options, resolve_splits, split_cases
from medlens.data.splits import read_splits
from medlens.engine import distributed
from medlens.engine.race import drop_overridden_rivals
from medlens.errors import ConfigError, DatasetError
from medlens.runs import RunFolder, new_run, now, open_run
from medlens.tasks import Fit, Task, task_for, task_named


def flush_denormals() -> None:
    """Treat denormal floats as zero on this process's CPU.

    Early in training (random weights, SGD with momentum) activations and gradients fall into the
    denormal range, where x86 CPUs compute many times slower: on the demo lesions the first epoch took
    76 s instead of 34 s, with identical losses and Dice. Values below ~1e-38 become 0. The planner's
    timing probe runs under the same setting, so the epochs it plans are the epochs that run.
    """
    torch.set_flush_denormal(True)


def make_plan(source, *, image_root=None, time_budget_s: float | None = None, processes: int = 1,
              task: str | None = None, task_options: dict | None = None, log=print):
    """Open and audit ``source``, then plan with the task its data call for (or the task named ``task``, e.g.
    ``anomaly`` on class-labelled data, ``pretraining`` on any images).

    Args:
        task_options: keyword arguments of that task's ``plan`` (``anomaly``: ``normal=("normal",)``).

    Returns:
        ``(config, reasons, card, dataset)``.
    """
    flush_denormals()
    dataset = open_dataset(source, image_root=image_root)
    card = inspect_dataset(dataset)
    check_card(card, log)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    planner = task_named(task) if task else task_for(card["dataset"]["task"])
    config, reasons = planner.plan(card, time_budget_s=time_budget_s, device=device, processes=processes,
                                   **(task_options or {}))
    if image_root:
        config = replace(config, dataset=replace(config.dataset, image_root=str(image_root)))
    if allow_outside_root_in_force():  # evaluate, report and other processes reopen the data as it was planned
        config = replace(config, dataset=replace(config.dataset, allow_outside_root=True))
    if series_rules_in_force():
        config = replace(config, dataset=replace(config.dataset, series_rules=series_rules_in_force()))
        reasons["dataset.series_rules"] = "--series-rule: the series read from each DICOM study (NAME=REGEX)"
    if skip_unreadable_in_force():
        config = replace(config, dataset=replace(config.dataset, skip_unreadable=True))
        reasons["dataset.skip_unreadable"] = "--skip-unreadable: files no reader opens are left out (card: skipped)"
    return config, reasons, card, dataset


def skip_requested(plan, overrides) -> bool:
    """Whether unreadable files are to be left out: already in force (the CLI's ``--skip-unreadable``), else the
    last ``--set dataset.skip_unreadable=...``, else the plan file's key."""
    if skip_unreadable_in_force():
        return True
    assignments = [o for o in overrides if o.split("=", 1)[0].strip() == "dataset.skip_unreadable"]
    if assignments:
        return apply_overrides(Config(), assignments[-1:]).dataset.skip_unreadable
    return bool(plan) and read_plan(plan)[0].dataset.skip_unreadable


def check_card(card: dict, log=print) -> None:
    """Refuse data the audit found unusable (findings that block training); print the other findings."""
    blocking = [f for f in card["findings"] if f.get("blocks_training")]
    for finding in card["findings"]:
        if finding not in blocking and finding["severity"] in ("error", "warning"):
            log(f"warning [{finding['code']}]: {finding['message']}")
    if blocking:
        raise DatasetError("the data cannot be trained on:\n" + "\n".join(f"  [{f['code']}] {f['message']}"
                                                                          for f in blocking))


def plan_header(source) -> str:
    return (f"medlens plan for {source}, made {now()}.\nEdit any value; the comment beside it says why it was "
            "chosen. Train with: medlens train DATA --plan THIS_FILE")


def write_plan(path: Path, config: Config, reasons: dict[str, str], source) -> Path:
    """The plan as readable YAML, without the keys its task does not use."""
    return write_text_atomic(path, render_plan(config, reasons, plan_header(source), omit=task_for(config).ignored))


def train(source=None, *, plan: Path | None = None, overrides: list[str] = (), out=None, resume=None,
          time_budget_s: float | None = None, init_from=None, devices: int = 1, num_nodes: int = 1,
          strategy: str = "auto", image_root=None, progress_bar: bool = True, task: str | None = None,
          task_options: dict | None = None, log=print) -> RunFolder:
    """Train the model ``source``'s data call for; returns the run folder (see :mod:`medlens.runs`).

    Args:
        task, task_options: plan for this task instead of the one the data call for (see :func:`make_plan`).
        devices, num_nodes: processes per node and nodes (``devices * num_nodes`` processes in all); under
            torchrun or SLURM the launcher starts them and rank 0 plans for all of them.
        strategy: Lightning's (``auto``, or ``ddp`` / ``ddp_spawn`` for several processes).
    """
    world = distributed.Launch.detect(devices, num_nodes)
    if resume:
        return _resume(resume, world, strategy, progress_bar, log)
    if source is None:
        raise ConfigError("give the dataset to train on (or --resume RUN_FOLDER)")
    joined = distributed.join_run(world)  # a process that rank 0 planned for
    if joined is not None:
        config = joined.read_config()
        dataset = open_config_dataset(config)
        return _fit(joined, config, dataset, read_splits(joined.splits, dataset), init_from=init_from, world=world,
                    strategy=strategy, checkpoint=None, progress_bar=progress_bar, log=log)
    with unreadable_skipped(skip_requested(plan, overrides)):  # --set or the plan file, for Python callers too
        config, reasons, card, dataset = _initial_config(source, plan, image_root, time_budget_s, world.processes,
                                                         log, task=task, task_options=task_options)
    if init_from:
        from medlens.models.weights import resolve_source

        init_from = resolve_source(init_from)  # a known name not fetched yet fails before a run folder exists
        if plan is None:
            config = adopt_encoder(config, reasons, init_from, log)
    config = apply_overrides(config, list(overrides))
    for key in (o.split("=", 1)[0].strip() for o in overrides):
        reasons[key] = "set on the command line"
    chosen = [o.split("=", 1)[0] for o in overrides] + (["model.name", "model.width"] if init_from else [])
    config = drop_overridden_rivals(config, chosen, reasons, log)  # the user's choices hold whoever wins
    task = task_for(config)
    check_plan_fits(config, dataset)
    task.check(config)
    splits = resolve_splits(dataset, config, card)  # the audit's duplicate groups stay in one split
    run = new_run(out, Path(str(source)).name.removesuffix(".npz").removesuffix(".csv"))
    write_plan(run.plan, config, reasons, source)
    write_json_atomic(run.card, card)
    write_json_atomic(run.splits, splits)
    log(f"run folder: {run.root}")
    distributed.announce_run(world, run)
    return _fit(run, config, dataset, splits, init_from=init_from, world=world, strategy=strategy, checkpoint=None,
                progress_bar=progress_bar, log=log)


def adopt_encoder(config: Config, reasons: dict[str, str], init_from: Path, log=print) -> Config:
    """A plan made now that starts from other weights (``--init-from``): the network of a medlens run, or of
    a downloaded weights file in a known layout (an ImageNet ResNet-18 -> ``resnet18_2d`` at width 1), is
    taken so the weights fit, and where the task has the schedule the new head first learns on a frozen
    backbone for a tenth of the epochs (``train.freeze_epochs``).

    A source of other dimensions, or an unrecognised file, keeps the planned network (the transfer then
    says what matched).
    """
    from medlens.models.weights import layout_network

    source_plan = init_from / "plan.yaml"
    if source_plan.is_file():
        config = _adopt_network(config, reasons, read_plan(source_plan)[0].model, init_from, log)
    elif init_from.is_file() and (network := layout_network(init_from, config.dataset.spatial_dims)):
        config = _adopt_network(config, reasons, replace(config.model, name=network, width=1.0), init_from, log)
    if "train.freeze_epochs" not in task_for(config).ignored and config.train.freeze_epochs == 0:
        freeze = max(1, round(config.train.max_epochs / 10))
        config = replace(config, train=replace(config.train, freeze_epochs=freeze))
        reasons["train.freeze_epochs"] = (f"--init-from: the new head learns on the frozen pretrained backbone for "
                                          f"{freeze} of {config.train.max_epochs} epochs first")
    return config


def _adopt_network(config: Config, reasons: dict[str, str], source, init_from: Path, log) -> Config:
    dims = config.dataset.spatial_dims
    same = (source.name, source.width) == (config.model.name, config.model.width)
    if same or not source.name.endswith(f"_{dims}d") or not _is_classifier(source.name):
        return config
    log(f"--init-from {init_from}: using its network {source.name} (width {source.width}) instead of the "
        f"planned {config.model.name} (width {config.model.width})")
    why = f"from --init-from {init_from.name} (its encoder's network)"
    reasons["model.name"], reasons["model.width"] = why, why
    return replace(config, model=replace(config.model, name=source.name, width=source.width))


def _is_classifier(name: str) -> bool:
    from medlens.models import CLASSIFIERS

    return name in CLASSIFIERS


def _resume(path, world, strategy, progress_bar, log) -> RunFolder:
    run = open_run(path, finished=False)
    if run.read_info().get("status") == "finished":
        log(f"{run.root}: this run already finished; nothing to resume")
        return run
    os.environ[distributed.RUN_DIR_VARIABLE] = str(run.root.resolve())  # the processes Lightning starts join it
    config = run.read_config()
    dataset = open_config_dataset(config)
    checkpoint = run.last_checkpoint if run.last_checkpoint.exists() else None
    if world.rank == 0:
        log(f"resuming {run.root} from {checkpoint or 'the start (no checkpoint yet)'}")
    return _fit(run, config, dataset, read_splits(run.splits, dataset), init_from=None, world=world,
                strategy=strategy, checkpoint=checkpoint, progress_bar=progress_bar, log=log)


def _initial_config(source, plan, image_root, time_budget_s, processes: int, log, *, task=None, task_options=None):
    if plan is None:
        return make_plan(source, image_root=image_root, time_budget_s=time_budget_s, processes=processes, task=task,
                         task_options=task_options, log=log)
    config, reasons = read_plan(plan)
    if str(Path(source)) != str(Path(config.dataset.source)):
        config = replace(config, dataset=replace(config.dataset, source=str(source)))
    if time_budget_s:
        config = replace(config, train=replace(config.train, time_budget_s=float(time_budget_s)))
    dataset = open_dataset(source, **{**reopen_options(config), "image_root": image_root or config.dataset.image_root
                                      or None, "series_rules": series_rules_in_force() or config.dataset.series_rules})
    card = inspect_dataset(dataset)
    check_card(card, log)
    return config, reasons, card, dataset


def _fit(run: RunFolder, config: Config, dataset, splits: dict, *, init_from, world, strategy: str, checkpoint,
         progress_bar: bool, log) -> RunFolder:
    """The loop every task runs: prepare, fit (resumable), keep the best weights, calibrate, save, report."""
    from medlens.engine.lightning import build_trainer
    from medlens.engine.race import settle_race

    flush_denormals()
    cases = split_cases(dataset, splits, config.dataset.fold)
    config = settle_race(run, config, dataset, cases, processes=world.processes, log=log)  # the winner's, if raced
    # train.time_budget_s counts from here, preprocessing included (a race has already taken its time off it)
    started = time.perf_counter()
    task = task_for(config)
    fit = task.prepare_fit(config, dataset, cases, world_size=world.processes, log=log)
    fit.transfer = _transfer(fit, init_from, log)
    trainer, best = build_trainer(run, fit.config, fit.csv_metrics, launch=world, strategy=strategy,
                                  progress_bar=progress_bar, steps_per_epoch=fit.steps_per_epoch,
                                  select_by=fit.select_by, started=started)
    if trainer.global_rank == 0:
        run.update_info(status="running", started=now(), dataset=config.dataset.source, task=config.dataset.task,
                        transfer=fit.transfer, prepare_seconds=round(time.perf_counter() - started, 2))
    trainer.fit(fit.module, fit.train_loader, fit.val_loader, ckpt_path=checkpoint)
    if trainer.global_rank == 0 and trainer.world_size > 1:
        run.update_info(world_size=trainer.world_size, num_nodes=trainer.num_nodes,
                        backend=torch.distributed.get_backend())
    if trainer.global_rank != 0:
        return run
    if trainer.interrupted:
        run.update_info(status="interrupted")
        raise KeyboardInterrupt
    _finish(run, task, fit, trainer, best, started, log)
    return run


def _transfer(fit: Fit, init_from, log) -> dict | None:
    """``--init-from``: matching tensors of another run or checkpoint into the fresh network."""
    if not init_from:
        return None
    from medlens.models.weights import transfer_weights

    transfer = transfer_weights(fit.module.model, Path(init_from))
    log(f"--init-from: {transfer['summary']}")
    return transfer


def _finish(run: RunFolder, task: Task, fit: Fit, trainer, best, started: float, log) -> None:
    """Keep the best weights, let the task fit what validation decides, mark the run finished, report."""
    from medlens.engine.evaluate import write_run_report
    from medlens.engine.lightning import time_budget
    from medlens.models.weights import save_atomic

    model, config = fit.module.model, fit.config
    budget = time_budget(trainer)
    spent = budget.summary() if budget else None  # before calibration and the report, which the budget leaves be
    kept = _keep_best(run, fit, trainer, best, log)
    save_atomic(model.state_dict(), run.weights)
    summary = task.finish(run, config, model.eval(), fit, log)
    score = best.best_model_score if kept != NO_CHECKPOINT else trainer.callback_metrics.get(best.monitor)
    run.update_info(status="finished", finished=now(), epochs_run=trainer.current_epoch, best_checkpoint=kept,
                    best_score=None if score is None else round(float(score), 6), monitor=best.monitor,
                    train_seconds=round(time.perf_counter() - started, 2), stopped_by=stop_reason(trainer, config),
                    budget=spent)
    if spent and spent["mid_epoch"]:
        log(f"the {spent['budget_s']:g} s time budget stopped training mid-epoch, after "
            f"{spent['epochs_completed']} whole epoch(s)")
    log(f"best {best.monitor} {float(score) if score is not None else float('nan'):.4f}; {summary}; "
        f"weights in {run.weights}")
    write_run_report(run, config, log=log)


NO_CHECKPOINT = "none: the weights training ended with"


def _keep_best(run: RunFolder, fit: Fit, trainer, best, log) -> str:
    """Load the best checkpoint (else the last) into ``fit.module``; returns its file name.

    Lightning validates and checkpoints whenever training stops, mid-epoch too, so a checkpoint is expected.
    Should none exist (no validation batch ran), the weights training ended with are kept and validated
    now, so ``run.json`` still records their score: the run never fails for want of a checkpoint.
    """
    from medlens.models.weights import load_state_dict

    for source in (Path(best.best_model_path) if best.best_model_path else None, run.last_checkpoint):
        if source is not None and source.is_file():
            fit.module.model.load_state_dict(load_state_dict(source))
            return source.name
    log("warning: training stopped before any checkpoint was written; keeping the weights it ended with")
    if fit.val_loader is not None:
        trainer.validate(fit.module, fit.val_loader, verbose=False)
    return NO_CHECKPOINT


def stop_reason(trainer, config: Config) -> str:
    """``time_budget``, ``max_epochs``, ``early_stopping`` (or ``stopped`` when something else stopped it)."""
    from medlens.engine.lightning import time_budget

    budget = time_budget(trainer)
    if budget is not None and budget.stopped:
        return "time_budget"
    if trainer.current_epoch >= config.train.max_epochs:
        return "max_epochs"
    stopper = trainer.early_stopping_callback
    if stopper is not None and stopper.stopped_epoch:
        return "early_stopping"
    return "stopped"
