"""One package per task, behind one protocol, looked up in one registry.

>>> task = task_for(config)                      # from the plan's dataset.task, decided by the data
>>> fit = task.prepare_fit(config, dataset, cases, world_size=1, log=print)
>>> task.evaluate(run, config, model, EvaluateOptions(split="test"), log=print)

:mod:`~medlens.tasks.base` defines :class:`Task` (what every task provides);
:mod:`~medlens.tasks.registry` maps data kinds to tasks; :mod:`~medlens.tasks.classification` and
:mod:`~medlens.tasks.segmentation` are the tasks medlens ships. :mod:`~medlens.tasks.losses`,
:mod:`~medlens.tasks.optim` and :mod:`~medlens.tasks.planning` are shared by them.
"""

from __future__ import annotations

from medlens.tasks.base import EvaluateOptions, Evaluation, Explained, Fit, Task
from medlens.tasks.registry import TASKS, all_kinds, register_task, task_for, task_named

__all__ = ["TASKS", "EvaluateOptions", "Evaluation", "Explained", "Fit", "Task", "all_kinds", "load_model",
           "register_task", "task_for", "task_named"]


def load_model(run, config=None):
    """The trained network of a run folder, in eval mode (its ``weights.pt`` into the network its plan describes)."""
    from medlens.models.weights import load_state_dict

    config = config or run.read_config()
    model = task_for(config).build_model(config)
    model.load_state_dict(load_state_dict(run.weights))
    return model.eval()
