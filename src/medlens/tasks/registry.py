"""The one place that knows which tasks exist: a registry of :class:`~medlens.tasks.base.Task` objects.

The data decide the task once: the audit writes what the labels are (``binary``, ``multiclass``,
``multilabel``, ``ordinal`` class labels, ``segmentation`` masks, or ``detection`` boxes) into the card and the plan's
``dataset.task``; :func:`task_for` maps that kind to the task that trains it. Everything else in
medlens asks the task object, never compares the name.

>>> task_for(config).evaluate(...)          # whatever the run is
>>> task_named("segmentation").kinds        # ('segmentation',)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medlens.errors import ConfigError
from medlens.registry import Registry

if TYPE_CHECKING:
    from medlens.config import Config
    from medlens.tasks.base import Task

TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    """Add ``task`` under ``task.name``; its ``kinds`` must not be claimed by another task."""
    for name in TASKS:
        taken = set(TASKS.get(name).kinds) & set(task.kinds)
        if taken:
            raise ValueError(f"task {task.name!r}: kind(s) {sorted(taken)} already belong to task {name!r}")
    return TASKS.register(task.name)(task)


def task_named(name: str) -> Task:
    """The task registered as ``name`` (``classification``, ``segmentation``...); unknown names say what exists."""
    _load_builtin()
    return TASKS.get(name)


def task_for(what: Config | str) -> Task:
    """The task that trains data of a kind: a :class:`~medlens.config.Config` (its ``dataset.task``), a
    dataset card's kind, or a task name.

    Raises:
        ConfigError: no registered task trains this kind.
    """
    _load_builtin()
    kind = str(getattr(getattr(what, "dataset", None), "task", what))
    for name in TASKS:
        task = TASKS.get(name)
        if kind == name or kind in task.kinds:
            return task
    known = ", ".join(f"{n} ({', '.join(TASKS.get(n).kinds) or f'--task {n}'})" for n in TASKS)
    raise ConfigError(f"no task trains `{kind}` data; the tasks are {known}")


def all_kinds() -> tuple[str, ...]:
    """Every data kind some task trains (the values ``dataset.task`` may take)."""
    _load_builtin()
    return tuple(k for n in TASKS for k in TASKS.get(n).kinds)


BUILTIN = ("classification", "segmentation", "detection", "anomaly", "pretraining")


def _load_builtin() -> None:
    """Import the task packages that ship with medlens (each registers itself on import)."""
    from importlib import import_module
    from importlib.util import find_spec

    for name in BUILTIN:
        if find_spec(f"medlens.tasks.{name}") is not None:
            import_module(f"medlens.tasks.{name}")
