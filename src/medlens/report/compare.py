"""``medlens report A B ...``: runs of one task side by side, in one self-contained HTML file."""

from __future__ import annotations

import os
from pathlib import Path

from medlens._files import read_json
from medlens.engine.runs import RunFolder, now
from medlens.errors import ConfigError
from medlens.report.classification import OVERALL, num
from medlens.report.document import Figure, Report, Section, Table, write_report_files
from medlens.report.plots import curves_png, loss_columns
from medlens.report.run_sections import read_epoch_rows

NOT_EVALUATED = "not evaluated yet"


def with_ci(entry: dict) -> str:
    """``0.8123 [0.7801, 0.8432]`` (4 decimals, as in metrics.json)."""
    return f"{num(entry['value'])} [{num(entry['ci_low'])}, {num(entry['ci_high'])}]"


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
    tasks = {label: config.dataset.task for label, _, config in runs}
    if len(set(tasks.values())) > 1:
        listed = ", ".join(f"{label} is {task}" for label, task in tasks.items())
        raise ConfigError(f"cannot compare runs of different tasks ({listed}); compare runs of one task at a time")
    return runs


def classification_table(runs) -> Table:
    rows = []
    for label, run, config in runs:
        doc = read_json(run.metrics_json, {})
        cells = [with_ci(doc["metrics"][k]) for k, _ in OVERALL] if doc else [NOT_EVALUATED, "", ""]
        rows.append([label, config.model.name, doc.get("split", ""), str(doc.get("n_cases", "")), *cells])
    return Table(["run", "model", "split", "cases", *(f"{name} [95% CI]" for _, name in OVERALL)], rows,
                 key="compare", caption="headline metrics from each run's metrics.json")


def segmentation_table(runs) -> Table:
    names = list(dict.fromkeys(n for _, _, c in runs for n in c.dataset.class_names[1:]))
    rows = []
    for label, run, config in runs:
        doc = read_json(run.metrics_json, {})
        per_class = doc.get("metrics", {}).get("per_class", {})
        cells = [with_ci(per_class[n][k]) if n in per_class else "" for n in names for k in ("dice", "hd95_mm")]
        if not doc:
            cells = [NOT_EVALUATED, *[""] * (len(cells) - 1)]
        rows.append([label, config.model.name, doc.get("split", ""), str(doc.get("n_cases", "")), *cells])
    header = ["run", "model", "split", "cases", *(f"{n} {m} [95% CI]" for n in names for m in ("Dice", "HD95"))]
    return Table(header, rows, key="compare", caption="headline metrics from each run's metrics.json")


def training_table(runs) -> Table:
    rows = []
    for label, run, config in runs:
        info = read_json(run.info, {})
        best = info.get("best_score")
        rows.append([label, config.dataset.source, info.get("status", "unknown"), str(info.get("epochs_run", "")),
                     info.get("stopped_by", ""), f"{info.get('monitor', '')} {num(best) if best is not None else ''}",
                     str(info.get("train_seconds", ""))])
    return Table(["run", "data", "status", "epochs", "stopped by", "best", "train s"], rows, key="runs")


def curves_section(runs, task: str) -> Section:
    series = [(label, read_epoch_rows(run.metrics_csv)) for label, run, _ in runs]
    columns = sorted({c for _, rows in series for c in loss_columns(rows)}, reverse=True)
    metric = "val_dice" if task == "segmentation" else "val_auc"
    section = Section("Training curves", key="curves")
    figures = [Figure(name, png, caption) for name, png, caption in (
        ("loss", curves_png(series, columns, title="loss", ylabel="loss"), "loss per epoch, every run"),
        (metric, curves_png(series, [metric], title=metric, ylabel=metric), f"{metric} per epoch, every run"))
        if png is not None]
    return section.figures(*figures) if figures else section.text("no run has a finished epoch yet.")


def write_comparison(paths: list[str | os.PathLike], out: str | os.PathLike = "compare.html", log=print) -> Path:
    """Compare runs of one task: metrics with CIs in one table, training curves overlaid; writes ``out``."""
    runs = open_runs(list(paths))
    task = runs[0][2].dataset.task
    table = segmentation_table(runs) if task == "segmentation" else classification_table(runs)
    metrics = Section("Metrics", key="metrics-section").table(table)
    if any(NOT_EVALUATED in row for row in table.rows):
        metrics.text(f"A run marked “{NOT_EVALUATED}” has no metrics.json: run `medlens evaluate RUN` first.")
    report = Report(f"medlens comparison: {len(runs)} {task} run(s)", f"written {now()}",
                    [metrics, Section("Runs", key="runs-section").table(training_table(runs)),
                     curves_section(runs, task)])
    path = write_report_files(report, Path(out), markdown=False)
    log(f"comparison written to {path}")
    return path
