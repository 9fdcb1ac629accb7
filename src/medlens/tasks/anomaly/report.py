"""The evaluation part of an anomaly report: the metrics with CIs, the score distributions of normal and
abnormal cases beside the threshold, and the ROC curve. Figures come from the evaluation's evidence (the
report never runs the model); without it (a report rebuilt later) the tables alone are shown."""

from __future__ import annotations

import numpy as np

from medlens._files import read_json
from medlens.report.document import Figure, Section, Table, count_phrase, num
from medlens.report.plots import figure, to_png

METRICS = (("auroc", "AUROC"), ("auprc", "AUPRC"), ("sensitivity", "sensitivity at the threshold"),
           ("specificity", "specificity at the threshold"))


def anomaly_sections(doc: dict, evidence) -> list[Section]:
    """The sections of ``report.html`` for the anomaly metrics document ``doc``."""
    m = doc.get("metrics", {})
    section = Section(f"Evaluation ({doc.get('split', '?')} split, {count_phrase(doc)})", key="evaluation")
    section.text(f"Normal class(es): {', '.join(doc.get('normal', []))}; {m.get('n_normal', '?')} normal and "
                 f"{m.get('n_abnormal', '?')} abnormal cases; method {doc.get('method', '?')}; a case is anomalous "
                 f"when its score (the maximum of its anomaly map) is above {num(m.get('threshold'))}, set on "
                 "normal validation cases alone.")
    section.table(metrics_table(m))
    if m.get("note"):
        section.text(m["note"])
    pixel = doc.get("pixel", {})
    section.text(f"Pixel-level AUROC: {num(pixel['auroc'])} over {pixel.get('n_cases')} cases with masks."
                 if pixel.get("auroc") is not None else pixel.get("note", ""))
    if evidence is not None:
        section.figures(*_figures(evidence))
    return [section]


def metrics_table(m: dict) -> Table:
    rows = [[label, *(("n/a",) * 3 if m.get(key) is None else
                      (num(m[key]["value"]), num(m[key]["ci_low"]), num(m[key]["ci_high"])))]
            for key, label in METRICS]
    return Table(["metric", "value", "95% CI low", "95% CI high"], rows, key="anomaly-metrics")


def _figures(evidence) -> list[Figure]:
    from medlens.tasks.anomaly.metrics import roc_points

    figures = [Figure("scores", distribution_png(evidence.scores, evidence.abnormal, evidence.threshold),
                      "image scores of normal and abnormal cases; the dashed line is the threshold")]
    fpr, tpr = roc_points(evidence.abnormal, evidence.scores)
    if len(fpr):
        fig, axes = figure()
        ax = axes[0, 0]
        ax.plot(fpr, tpr)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(xlabel="false positive rate (normal cases)", ylabel="sensitivity (abnormal cases)", title="ROC")
        figures.append(Figure("roc", to_png(fig), "ROC curve of the image scores"))
    return figures


def distribution_png(scores: np.ndarray, abnormal: np.ndarray, threshold: float) -> bytes:
    fig, axes = figure(size=(5.0, 3.2))
    ax = axes[0, 0]
    bins = np.histogram_bin_edges(scores, bins=30)
    for chosen, label in ((~abnormal, "normal"), (abnormal, "abnormal")):
        if chosen.any():
            ax.hist(scores[chosen], bins=bins, alpha=0.6, label=f"{label} ({int(chosen.sum())})")
    ax.axvline(threshold, color="black", linestyle="--", label="threshold")
    ax.set(xlabel="anomaly score", ylabel="cases")
    ax.legend()
    return to_png(fig)


def compare_table(runs: list) -> Table:
    """``medlens report A B``: AUROC, AUPRC, sensitivity and specificity with CIs per run."""
    from medlens.report.compare import NOT_EVALUATED

    rows = []
    for label, run, config in runs:
        doc = read_json(run.metrics_json, {})
        m = doc.get("metrics", {})
        cells = [("n/a" if m.get(k) is None else f"{num(m[k]['value'])} [{num(m[k]['ci_low'])}, "
                  f"{num(m[k]['ci_high'])}]") for k, _ in METRICS] if doc else [NOT_EVALUATED, "", "", ""]
        rows.append([label, config.anomaly.method, doc.get("split", ""), str(doc.get("n_cases", "")), *cells])
    return Table(["run", "method", "split", "cases", *(f"{label} [95% CI]" for _, label in METRICS)], rows,
                 key="compare", caption="headline metrics from each run's metrics.json")
