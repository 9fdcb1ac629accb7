"""``report.html`` (and ``report.md``) of one run: written when training finishes and after each evaluation.

The report renders what it is handed: the run folder's files (card, plan, metrics.csv, run.json)
and the evaluation sections the run's task made from its metrics and in-memory evidence. It never
runs a model.
"""

from __future__ import annotations

import os
from pathlib import Path

from medlens._files import read_json
from medlens.report.document import Report, Section, write_report_files
from medlens.report.run_sections import dataset_section, plan_section, training_section
from medlens.runs import RunFolder, now


def build_report(run: RunFolder, evaluation: list[Section] | None = None, omit: frozenset[str] = frozenset()) -> Report:
    """The report of ``run``: dataset, plan and training from its files, then ``evaluation``.

    Args:
        run: a run folder with plan.yaml (and whatever else it holds so far).
        evaluation: the task's evaluation sections; ``None`` when the run has not been evaluated.
        omit: plan keys the run's task does not use (left out of the plan section, as out of plan.yaml).
    """
    from medlens.config import read_plan

    config, reasons = read_plan(run.plan)
    card, info = read_json(run.card, {}), read_json(run.info, {})
    report = Report(f"medlens report: {run.root.name}",
                    f"{config.dataset.task} {config.dataset.spatial_dims}D · {config.model.name} · "
                    f"{info.get('status', 'unknown')} · written {now()} · run folder {run.root}")
    if info.get("external"):
        report.sections.append(external_section(info["external"]))
    report.sections += [dataset_section(run, config, card), plan_section(config, reasons, omit), training_section(run)]
    if evaluation is None:
        report.sections.append(Section("Evaluation", key="evaluation").text(
            f"not evaluated yet: run `medlens evaluate {run.root}` for the test metrics and figures."))
    else:
        report.sections += evaluation
    return report


def external_section(external: dict) -> Section:
    """What an evaluation folder of other data is (``medlens evaluate RUN --data``; its run.json's ``external``):
    the run, the data, and the images of the run's own splits found in the data."""
    overlap = external.get("overlap") or {}
    section = Section("Other data", key="external").text(
        f"The model of **{external['run']}** scored on every case of **{external.get('data')}**, preprocessed as its "
        "plan says. The sections below describe the other data; the plan and training are the run's.")
    if overlap.get("said"):
        return section.text(f"**{overlap['said']}**" if overlap.get("checked") else overlap["said"])
    return section.text("No image of the other data is pixel for pixel an image of the run's own splits.")


def write_report(run: RunFolder | str | os.PathLike, evaluation=None, *, omit: frozenset[str] = frozenset(),
                 log=print) -> Path | None:
    """Write ``RUN/report.html`` and ``RUN/report.md``.

    Called last by ``train`` and ``evaluate``, after their own results are on disk. A report that
    cannot be made is a warning, never a failed run: the weights and metrics.json are already safe.

    Args:
        evaluation: the task's evaluation sections, or a function that makes them (called here, so a
            failure while drawing a figure is caught like any other).
        omit: plan keys the run's task does not use.

    Returns:
        The path of report.html, or ``None`` when it could not be written.
    """
    run = run if isinstance(run, RunFolder) else RunFolder(Path(run))
    try:
        sections = evaluation() if callable(evaluation) else evaluation
        path = write_report_files(build_report(run, sections, omit), run.root / "report.html")
    except Exception as exc:  # noqa: BLE001 - any failure here must leave the finished run intact
        log(f"warning: report.html not written ({type(exc).__name__}: {exc}); the run's results are complete. "
            f"Please report this with the run folder {run.root}")
        return None
    log(f"report written to {path}")
    return path
