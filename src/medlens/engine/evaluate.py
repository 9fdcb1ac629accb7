"""``evaluate``: a run's locked test split (or validation) through its trained model, every figure with a 95% CI.

The run's task scores the split (:meth:`medlens.tasks.Task.evaluate`); this module writes what it
returns into the run folder (``metrics.json``, per-case or per-image CSVs) and the report. The validation split's
figures go to ``metrics_val.json`` alone: they never replace the test split's or the report's.
"""

from __future__ import annotations

import time

from medlens._files import read_json, write_json_atomic, write_text_atomic
from medlens.errors import ConfigError
from medlens.runs import RunFolder, json_safe, open_run
from medlens.tasks import EvaluateOptions, load_model, task_for


def evaluate_run(path, *, split: str = "test", tta: bool | None = None, n_bootstrap: int | None = None,
                 baseline: bool | None = None, save_masks: bool = False, log=print) -> dict:
    """Evaluate the run at ``path`` on ``split`` (``test`` or ``val``); returns the metrics document.

    Args:
        tta, n_bootstrap, baseline: ``None`` = the plan's ``evaluate`` values.
        save_masks: segmentation: also write each predicted mask to ``RUN/masks_<split>/``.
    """
    started = time.perf_counter()
    run = open_run(path)
    config = run.read_config()
    if split not in ("test", "val"):
        raise ConfigError(f"--split {split}: choose test (the locked split) or val")
    task = task_for(config)
    options = EvaluateOptions(split=split, tta=tta, n_bootstrap=n_bootstrap, baseline=baseline, save_masks=save_masks)
    result = task.evaluate(run, config, load_model(run, config), options, log)
    doc = {**result.doc, "seconds": round(time.perf_counter() - started, 2)}
    if external := run.read_info().get("external"):  # an evaluation folder of other data (engine.external)
        doc["external"] = external
    target = run.metrics_json if split == "test" else run.root / f"metrics_{split}.json"
    write_json_atomic(target, json_safe(doc))
    for name, text in result.files.items():
        write_text_atomic(run.root / name, text)
    if result.summary:
        log(result.summary)
    log(f"metrics written to {target}" + "".join(f"; {run.root / n}" for n in result.files))
    if split == "test":
        write_run_report(run, config, result.evidence, log=log)
    else:  # the report and metrics.json stay the locked test split's
        log(f"{run.metrics_json.name} and the report keep the test split's figures")
    return doc


def write_run_report(run: RunFolder, config, evidence=None, *, log=print):
    """``RUN/report.html``: the run's files, and the task's evaluation sections once metrics.json exists
    (with figures from ``evidence``, what evaluation held in memory)."""
    from medlens.report import write_report

    doc = read_json(run.metrics_json)
    task = task_for(config)
    if doc is None:
        return write_report(run, None, omit=task.ignored, log=log)
    return write_report(run, lambda: task.report_sections(run, config, run.read_card(), doc, evidence),
                        omit=task.ignored, log=log)
