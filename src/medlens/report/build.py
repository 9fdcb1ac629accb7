"""``report.html`` (and ``report.md``) of one run: written when training finishes and after each evaluation."""

from __future__ import annotations

import os
from pathlib import Path

from medlens._files import read_json
from medlens.engine.runs import RunFolder, now
from medlens.report.classification import ClassificationEvidence, classification_sections
from medlens.report.document import Report, Section, write_report_files
from medlens.report.run_sections import dataset_section, plan_section, training_section
from medlens.report.segmentation import SegmentationEvidence, segmentation_sections


def build_report(run: RunFolder, *, classification: ClassificationEvidence | None = None,
                 segmentation: SegmentationEvidence | None = None) -> Report:
    """The report of ``run`` from its files, plus the figures only the in-memory evidence allows.

    Args:
        run: a run folder with plan.yaml (and whatever else it holds so far).
        classification: from ``evaluate`` (ROC, calibration, Grad-CAM gallery).
        segmentation: from ``evaluate`` (overlays of the worst, median and best cases).
    """
    from medlens.config import read_plan

    config, reasons = read_plan(run.plan)
    card, doc = read_json(run.card, {}), read_json(run.metrics_json, {})
    info = read_json(run.info, {})
    report = Report(f"medlens report: {run.root.name}",
                    f"{config.dataset.task} {config.dataset.spatial_dims}D · {config.model.name} · "
                    f"{info.get('status', 'unknown')} · written {now()} · run folder {run.root}")
    report.sections += [dataset_section(run, config, card), plan_section(config, reasons), training_section(run)]
    if not doc:
        report.sections.append(Section("Evaluation", key="evaluation").text(
            f"not evaluated yet: run `medlens evaluate {run.root}` for the test metrics and figures."))
    elif config.dataset.task == "segmentation":
        report.sections += segmentation_sections(run, doc, card, config, segmentation)
    else:
        names = list(config.dataset.class_names)
        report.sections += classification_sections(doc, classification, names, config.dataset.source)
    return report


def write_report(run: RunFolder | str | os.PathLike, *, classification: ClassificationEvidence | None = None,
                 segmentation: SegmentationEvidence | None = None, log=print) -> Path | None:
    """Write ``RUN/report.html`` and ``RUN/report.md`` (figures in ``RUN/report_files/``).

    Called last by ``train`` and ``evaluate``, after their own results are on disk. A report that
    cannot be made is a warning, never a failed run: the weights and metrics.json are already safe.

    Returns:
        The path of report.html, or ``None`` when it could not be written.
    """
    run = run if isinstance(run, RunFolder) else RunFolder(Path(run))
    try:
        report = build_report(run, classification=classification, segmentation=segmentation)
        path = write_report_files(report, run.root / "report.html")
    except Exception as exc:  # noqa: BLE001 - any failure here must leave the finished run intact
        log(f"warning: report.html not written ({type(exc).__name__}: {exc}); the run's results are complete. "
            f"Please report this with the run folder {run.root}")
        return None
    log(f"report written to {path}")
    return path
