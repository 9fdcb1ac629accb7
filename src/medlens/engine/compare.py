"""``medlens report A B ...``: open runs of one task and have the report compare them."""

from __future__ import annotations

import os
from pathlib import Path

from medlens.errors import ConfigError
from medlens.runs import RunFolder
from medlens.tasks import task_for


def open_runs(paths: list) -> list[tuple[str, RunFolder, object]]:
    """``[(label, run, config)]``; refuses runs of different tasks.

    Raises:
        ConfigError: a folder that is not a run, or runs of more than one task.
    """
    if not paths:
        raise ConfigError("give at least one run folder to report on, e.g. `medlens report runs/a runs/b`")
    runs = []
    for path in paths:
        run = RunFolder(Path(path))
        run.read_info()  # a folder that is not a run fails here, saying so
        runs.append((str(path), run, run.read_config()))
    tasks = {label: task_for(config).name for label, _, config in runs}
    if len(set(tasks.values())) > 1:
        listed = ", ".join(f"{label} is {task}" for label, task in tasks.items())
        raise ConfigError(f"cannot compare runs of different tasks ({listed}); compare runs of one task at a time")
    return runs


def compare_runs(paths: list[str | os.PathLike], out: str | os.PathLike = "compare.html", log=print) -> Path:
    """Compare runs of one task: the task's headline metrics with CIs, training curves overlaid; writes ``out``."""
    from medlens.report import write_comparison

    runs = open_runs(list(paths))
    task = task_for(runs[0][2])
    return write_comparison(runs, task.compare_table(runs), task=task.name, metric=task.monitors[0], out=out,
                            log=log)
