"""``medlens report A B ...``: runs of one task side by side, in one self-contained HTML file.

The caller hands the task's headline table and the metric the runs were selected by; this module
adds the run facts and the overlaid training curves, and writes the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from medlens._files import read_json
from medlens.report.document import Figure, Report, Section, Table, num, write_report_files
from medlens.report.plots import curves_png, loss_columns
from medlens.runs import RunFolder, now

NOT_EVALUATED = "not evaluated yet"


def training_table(runs) -> Table:
    rows = []
    for label, run, config in runs:
        info = read_json(run.info, {})
        best = info.get("best_score")
        rows.append([label, config.dataset.source, info.get("status", "unknown"), str(info.get("epochs_run", "")),
                     info.get("stopped_by", ""), f"{info.get('monitor', '')} {num(best) if best is not None else ''}",
                     str(info.get("train_seconds", ""))])
    return Table(["run", "data", "status", "epochs", "stopped by", "best", "train s"], rows, key="runs")


def curves_section(runs: list[tuple[str, RunFolder, object]], metric: str) -> Section:
    series = [(label, run.read_epoch_rows()) for label, run, _ in runs]
    columns = sorted({c for _, rows in series for c in loss_columns(rows)}, reverse=True)
    section = Section("Training curves", key="curves")
    figures = [Figure(name, png, caption) for name, png, caption in (
        ("loss", curves_png(series, columns, title="loss", ylabel="loss"), "loss per epoch, every run"),
        (metric, curves_png(series, [metric], title=metric, ylabel=metric), f"{metric} per epoch, every run"))
        if png is not None]
    return section.figures(*figures) if figures else section.text("no run has a finished epoch yet.")


def write_comparison(runs: list[tuple[str, RunFolder, object]], table: Table, *, task: str, metric: str,
                     out: str | os.PathLike = "compare.html", log=print) -> Path:
    """Write ``out``: ``table`` (the task's headline metrics with CIs), the runs' facts, and their ``metric``
    and loss curves overlaid. ``runs`` are ``[(label, run, config)]`` of one task."""
    metrics = Section("Metrics", key="metrics-section").table(table)
    if any(NOT_EVALUATED in row for row in table.rows):
        metrics.text(f"A run marked “{NOT_EVALUATED}” has no metrics.json: run `medlens evaluate RUN` first.")
    report = Report(f"medlens comparison: {len(runs)} {task} run(s)", f"written {now()}",
                    [metrics, Section("Runs", key="runs-section").table(training_table(runs)),
                     curves_section(runs, metric)])
    path = write_report_files(report, Path(out), markdown=False)
    log(f"comparison written to {path}")
    return path
