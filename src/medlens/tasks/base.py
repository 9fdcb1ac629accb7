"""The task interface: everything that differs between tasks, behind one small protocol.

The engine runs one loop for every task (start the run, fit, handle interrupts, keep the best
checkpoint, call the task's calibration hook, save, report); the report, the deployment code and
the CLI ask the task for what only it knows. A task is a package under ``medlens/tasks/`` whose
object satisfies :class:`Task` and is registered in :mod:`medlens.tasks.registry`.

What a task provides, in the order a run needs it:

==================  =====================================================================
plan rules          :meth:`Task.plan` (card -> plan with reasons), :meth:`Task.check`
network             :meth:`Task.build_model`
training            :meth:`Task.prepare_fit` (LightningModule + loss, loaders), :meth:`Task.finish`
evaluation          :meth:`Task.evaluate` (metrics + CIs, evidence for the report)
report              :meth:`Task.report_sections`, :meth:`Task.compare_table`
deployment          :meth:`Task.card_details`, :meth:`Task.predict`, :meth:`Task.to_json`,
                    :meth:`Task.write_outputs`, :meth:`Task.exportable`
explanations        :meth:`Task.explain`, :meth:`Task.sanity`
==================  =====================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from medlens.config import Config
from medlens.errors import ConfigError

Log = Callable[[str], None]


@dataclass
class Fit:
    """What a task hands the engine's training loop.

    Attributes:
        module: the LightningModule (its ``model`` attribute is the network that is saved).
        train_loader, val_loader: the data, already sharded for the process when distributed.
        config: the configuration the module trains with (a task may adjust e.g. the monitor).
        steps_per_epoch: optimisation steps per epoch in each process (sizes the weight average).
        validation: whatever :meth:`Task.finish` needs of the validation split.
        transfer: what ``--init-from`` loaded, for ``run.json`` (``None`` without it).
        csv_metrics: the columns of ``metrics.csv`` besides epoch, lr and time.
        select_by: the logged value the best checkpoint and early stopping watch (``""``: ``train.monitor``).
    """

    module: Any
    train_loader: Any
    val_loader: Any
    config: Config
    steps_per_epoch: int
    validation: Any = None
    transfer: dict | None = None
    csv_metrics: tuple[str, ...] = ()
    select_by: str = ""


@dataclass(frozen=True)
class EvaluateOptions:
    """``medlens evaluate`` options; ``None`` = the plan's value."""

    split: str = "test"
    tta: bool | None = None
    n_bootstrap: int | None = None
    baseline: bool | None = None
    save_masks: bool = False


@dataclass
class Evaluation:
    """What :meth:`Task.evaluate` produces.

    Attributes:
        doc: the metrics document (written as ``metrics.json``; JSON-ready apart from NaN).
        files: other files for the run folder, ``name -> text`` (per-case or per-image CSVs).
        evidence: what only memory holds and the report renders (figures' data); ``None`` if nothing.
        summary: lines to print.
    """

    doc: dict
    files: dict[str, str] = field(default_factory=dict)
    evidence: Any = None
    summary: str = ""


@dataclass
class Explained:
    """One input through :meth:`Task.explain`: the ``explanations.json`` row, the map on the network's grid
    ``(*input_size)`` in [0, 1] (``None`` when there is none), and what :meth:`Task.sanity` needs of it."""

    row: dict
    cam: Any
    sanity_item: Any = None


@runtime_checkable
class Task(Protocol):
    """What the engine, the report, the deployment code and the CLI may ask of a task.

    Attributes:
        name: the registry key (``classification``).
        kinds: the ``dataset.task`` values (what the labels are) this task trains.
        monitors: ``train.monitor`` values it logs; the first is what runs are compared by.
        ignored: plan keys (``section.key`` or a whole ``section``) the task does not use. They are left
            out of its plans, and a value other than the default is refused (:func:`check_ignored`).
        service_options: the boolean options ``POST /v1/predict`` accepts (``heatmap``, ``mask``).
        runs_exports: predictions can run through the bundle's TorchScript / ONNX network (whole images in,
            logits out); otherwise they run through the PyTorch weights.
        dicom_kinds: the DICOM objects its answer on a DICOM series can be written as (``seg``, ``rtstruct``,
            ``sr``, ``capture``: :mod:`medlens.deploy.dicom`).
        aggregate_calibration: how its calibration is fitted from aggregates of validation splits it cannot see
            (``statistics(model, config, fit)`` where the split is, ``combine([stats], config)`` where the
            calibration is written, ``score([stats], config)`` -> ``(higher is better, name)`` to choose a
            federation's round; :mod:`medlens.tasks.classification.aggregates`), or ``None``.
    """

    name: str
    kinds: tuple[str, ...]
    monitors: tuple[str, ...]
    ignored: frozenset[str]
    service_options: tuple[str, ...]
    runs_exports: bool
    dicom_kinds: tuple[str, ...]
    aggregate_calibration: Any

    def plan(self, card: dict, *, time_budget_s: float | None, device: str, processes: int = 1,
             probe: bool = True) -> tuple[Config, dict[str, str]]:
        """Every setting for the card's dataset, with ``{"section.key": reason}``."""

    def check(self, config: Config) -> None:
        """Refuse a plan this task cannot train (network, sizes, loss, keys it ignores), saying how to fix it."""

    def for_other_data(self, config: Config, class_names: tuple[str, ...], where: str) -> Config:
        """The plan that scores other data whose classes are ``class_names`` (``medlens evaluate RUN --data``), or a
        ``DatasetError`` / ``ConfigError`` saying why this run cannot (:func:`same_classes` for most tasks)."""

    def build_model(self, config: Config):
        """The network the plan describes, freshly initialised from the current torch seed."""

    def prepare_fit(self, config: Config, dataset, cases: dict[str, list], *, init_from: Path | None,
                    world_size: int, log: Log) -> Fit:
        """Read and preprocess the splits, build the module (model, loss, augmentation, optimiser) and loaders."""

    def finish(self, run, config: Config, model, fit: Fit, log: Log) -> str:
        """The calibration hook after the best weights are loaded: fit what validation decides
        (temperature and threshold, post-processing), write it to the run; returns a summary phrase."""

    def evaluate(self, run, config: Config, model, options: EvaluateOptions, log: Log) -> Evaluation:
        """Score ``options.split`` with 95% CIs."""

    def report_sections(self, run, config: Config, card: dict, doc: dict, evidence) -> list:
        """The evaluation sections of ``report.html`` from metrics.json (``doc``) and in-memory evidence."""

    def compare_table(self, runs: list) -> Any:
        """The headline table of ``medlens report A B``: runs as ``[(label, run, config)]``."""

    def card_details(self, run, config: Config) -> dict:
        """The model card's task part: ``steps`` (preprocessing in words), ``calibration``, ``metrics``."""

    def predict(self, predictor, image, *, heatmap: bool, tta: bool | None, probabilities: bool, where: str) -> dict:
        """One image through a :class:`~medlens.deploy.Predictor`: what a prediction returns."""

    def to_json(self, result: dict, options: dict[str, bool], folder: Path) -> dict:
        """The JSON body of ``POST /v1/predict`` for ``result``."""

    def write_outputs(self, predictor, inputs: list[Path], out: Path | None, *, tta: bool | None,
                      probabilities: bool, log: Log) -> int:
        """``medlens predict``: predict every input, print one line each, write files; returns the failures."""

    def exportable(self, model):
        """The module ``medlens export`` writes as TorchScript / ONNX: images ``(B, C, *input_size)`` in, one
        tensor out (the network itself, or its heads when post-processing stays in Python)."""

    def explain(self, model, config: Config, calibration: dict, image, *, method: str, class_name: str | None,
                where: str) -> Explained:
        """The prediction and the map of what the model looked at for one image."""

    def sanity(self, model, config: Config, items: list, method: str) -> dict | None:
        """The model-parameter randomisation test over the explained inputs (``None`` if it does not apply)."""


def same_classes(config: Config, class_names: tuple[str, ...], where: str) -> Config:
    """``config`` when other data's classes are the plan's (by name, in its order; data that name no classes, such
    as image / mask pairs, pass), else a ``DatasetError``: a label index must mean one class in both."""
    from medlens.errors import DatasetError

    ours, theirs = list(config.dataset.class_names), list(class_names)
    if not theirs or theirs == ours:
        return config
    missing, extra = [c for c in ours if c not in theirs], [c for c in theirs if c not in ours]
    said = "; ".join(part for part in (f"it lacks {', '.join(missing)}" if missing else "",
                                       f"it has {', '.join(extra)}, which the model never learnt" if extra else "")
                     if part) or f"they come in another order ({', '.join(theirs)})"
    raise DatasetError(f"{where}: classes {theirs}, but the model was trained on {ours}: {said}. Name the classes as "
                       "the training data did (folder names or label values); a class the model never learnt cannot "
                       "be scored")


def check_ignored(task: Task, config: Config) -> None:
    """Refuse a plan that sets a key ``task`` ignores (a value other than the default would do nothing).

    Raises:
        ConfigError: naming the key, its value and the task.
    """
    default = Config()
    for section in dataclasses.fields(Config):
        for item in dataclasses.fields(getattr(default, section.name)):
            key = f"{section.name}.{item.name}"
            if section.name not in task.ignored and key not in task.ignored:
                continue
            value, usual = getattr(getattr(config, section.name), item.name), getattr(getattr(default, section.name),
                                                                                      item.name)
            if value != usual:
                raise ConfigError(f"{key}={value!r} does nothing for {task.name} runs (the {task.name} task ignores "
                                  f"{key}); remove it from the plan or --set (default {usual!r})")


def check_monitor(task: Task, config: Config) -> None:
    """``train.monitor`` must be a metric the task logs."""
    if config.train.monitor not in task.monitors:
        raise ConfigError(f"train.monitor={config.train.monitor}: {task.name} runs log "
                          f"{', '.join(task.monitors)}; choose one of them")


def print_rows(rows: list[dict], describe: Callable[[dict], str], log: Log) -> int:
    """One line per input (``describe(row)``, or the error that input met); returns how many failed."""
    for row in rows:
        log(f"{row['path']}: error: {row['error']}" if "error" in row else describe(row))
    failed = sum("error" in r for r in rows)
    if failed:
        log(f"{failed} of {len(rows)} input(s) could not be predicted")
    return failed


def initial_model(task: Task, config: Config):
    """The run's network with the random weights training starts from (seeded as training seeds it); the
    global torch random state is left as it was."""
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(config.train.seed)
    try:
        return task.build_model(config).eval()
    finally:
        torch.random.set_rng_state(state)
