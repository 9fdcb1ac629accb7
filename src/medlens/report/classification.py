"""The evaluation part of a classification report: metrics with CIs, curves, calibration, Grad-CAM gallery."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medlens.report.classification_plots import confusion_png, reliability_png, roc_pr_png
from medlens.report.document import Figure, Section, Table, count_phrase
from medlens.report.published import approx, medmnist_benchmark

OVERALL = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("auc", "AUC"))
PER_CLASS = ("precision", "recall", "specificity", "f1", "auc")
GALLERY_SIZE = 8


@dataclass
class ClassificationEvidence:
    """What ``evaluate`` holds in memory: the model, the split's preprocessed images and probabilities.

    Attributes:
        model: the trained registry classifier.
        images: ``(N, C, *spatial)`` float32, preprocessed as for training.
        labels: ``(N,)`` class indices, or ``(N, L)`` 0/1 for multi-label.
        raw: ``(N, K)`` probabilities before temperature scaling.
        probs: ``(N, K)`` calibrated probabilities (the ones metrics.json scores).
        case_ids: ``N`` case ids.
    """

    model: object
    images: np.ndarray
    labels: np.ndarray
    raw: np.ndarray
    probs: np.ndarray
    case_ids: list[str]


def num(value) -> str:
    """A metric value with 4 decimals, ``n/a`` for undefined (``None`` / NaN in metrics.json)."""
    return "n/a" if value is None or value != value else f"{value:.4f}"


def metrics_table(metrics: dict, key: str, caption: str) -> Table:
    """Overall accuracy, balanced accuracy and AUC with their 95% CI: the numbers of metrics.json."""
    rows = [[label, num(metrics[k]["value"]), num(metrics[k]["ci_low"]), num(metrics[k]["ci_high"])]
            for k, label in OVERALL]
    return Table(["metric", "value", "95% CI low", "95% CI high"], rows, key=key, caption=caption)


def per_class_table(metrics: dict) -> Table:
    rows = []
    for name, row in metrics["per_class"].items():
        cells = [f"{num(row[m]['value'])} [{num(row[m]['ci_low'])}, {num(row[m]['ci_high'])}]" for m in PER_CLASS]
        rows.append([name, *cells, str(row["support"])])
    return Table(["class", "precision", "recall", "specificity", "F1", "AUC", "support"], rows, key="per-class",
                 caption="per class, value [95% CI]")


def metrics_section(doc: dict) -> Section:
    """The headline tables of metrics.json, with how they were computed."""
    metrics, boot = doc["metrics"], doc["metrics"]["bootstrap"]
    rule = "argmax" if metrics["threshold"] is None else f"p ≥ {metrics['threshold']}"
    section = Section(f"Test metrics ({doc['split']} split)", key="metrics-section")
    section.text(f"{count_phrase(doc)}; predicted class: {rule} on "
                 f"calibrated probabilities; 95% CIs from {boot['n_boot']} bootstrap resamples of "
                 f"{boot['resampled']}s{' with test-time augmentation' if doc.get('tta') else ''}.")
    section.table(metrics_table(metrics, "metrics", "headline metrics"))
    if "metrics_youden" in doc:
        threshold = doc["calibration"]["threshold"]
        section.table(metrics_table(doc["metrics_youden"], "metrics-youden",
                                    f"at the validation (Youden) threshold {threshold:.3f}"))
    section.table(per_class_table(metrics))
    for note in metrics.get("notes", []):
        section.text(f"note: {note}")
    return section


def comparison_section(doc: dict, source: str) -> Section:
    """Ours beside the k-NN baseline and, for a MedMNIST file, the published MedMNIST v2 figures."""
    ours = doc["medmnist_protocol"]
    rows = [["this run (MedMNIST protocol: raw probabilities)", num(ours["auc"]), num(ours["acc"])]]
    if "baseline" in doc:
        b = doc["baseline"]
        rows.append([f"k-NN pixel baseline (k={b['k']}), this split", num(b["auc"]["value"]),
                     num(b["accuracy"]["value"])])
    section = Section("Beside published figures", key="published")
    bench = medmnist_benchmark(source)
    if bench:
        ref, best = bench["reference"], bench["best_auc"]
        rows.append([f"MedMNIST v2 {ref['method']}", approx(ref, "auc"), approx(ref, "acc")])
        rows.append([f"MedMNIST v2 best AUC in the table: {best['method']}", approx(best, "auc"), approx(best, "acc")])
        if bench["plus"]:
            rows.append([f"MedMNIST+ best at {bench['size']} px", f"{bench['plus']['auc']:.4f}",
                         f"{bench['plus']['acc']:.4f}"])
        section.text(f"{bench['name']} ({bench['size']} px). Sources: {bench['source']}; {bench['plus_source']}. "
                     f"Protocol: {bench['protocol']}. ≈ marks a figure recalled from secondary copies (±0.005).")
    else:
        section.text("Not a benchmark medlens knows, so no published figures; the baseline is fitted on this run's "
                     "own train split.")
    return section.table(Table(["", "AUC", "ACC"], rows, key="benchmark", caption="test AUC / accuracy"))


def curves_section(doc: dict, evidence: ClassificationEvidence, names: list[str]) -> Section:
    """ROC / PR per class, the confusion matrix and the reliability diagram."""
    task, calibration = doc["metrics"]["task"], doc["calibration"]
    section = Section("Curves, confusion and calibration", key="curves")
    ece = (calibration["ece_before"], calibration["ece_after"])
    section.text(f"Calibration: expected calibration error {num(ece[0])} before and {num(ece[1])} after temperature "
                 f"scaling (T = {calibration['temperature']:.3f}, fitted on {calibration['fitted_on']}).")
    return section.figures(
        Figure("roc_pr", roc_pr_png(evidence.labels, evidence.probs, names, task),
               "ROC and precision-recall per class (one-vs-rest)"),
        Figure("confusion", confusion_png(doc["metrics"]["confusion_matrix"]), "confusion matrix, rows = true class"),
        Figure("reliability", reliability_png(evidence.labels, evidence.raw, evidence.probs,
                                              temperature=calibration["temperature"], ece=ece),
               "reliability before / after temperature scaling"))


def gallery_cases(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(predicted (N,), right (N,) bool, order)``: the most confident mistakes first, then the most confident
    correct cases, up to :data:`GALLERY_SIZE` of each. Multi-label: the top-scoring label, right if present."""
    predicted = probs.argmax(axis=1)
    right = labels[np.arange(len(labels)), predicted] == 1 if labels.ndim == 2 else predicted == labels
    confidence = probs[np.arange(len(probs)), predicted]
    by_confidence = np.argsort(-confidence, kind="stable")
    wrong = [i for i in by_confidence if not right[i]][:GALLERY_SIZE]
    correct = [i for i in by_confidence if right[i]][:GALLERY_SIZE]
    return predicted, right, np.asarray(wrong + correct, dtype=np.int64)


def gallery_section(evidence: ClassificationEvidence, names: list[str]) -> Section:
    """Grad-CAM overlays of the predicted class, wrongly then correctly classified cases."""
    from medlens.explain import compute_cams

    predicted, right, order = gallery_cases(evidence.labels, evidence.probs)
    section = Section("Grad-CAM gallery", key="gallery")
    section.text("Where the network looked for the class it predicted (Grad-CAM on its last feature layer; red = "
                 "most evidence). The most confident mistakes come first; 3D cases show the three slices through "
                 "the hottest point.")
    if not len(order):
        return section
    cams = compute_cams(evidence.model, evidence.images[order], class_indices=predicted[order].tolist())
    for group, title in ((False, "wrongly classified"), (True, "correctly classified")):
        figures = [_gallery_figure(i, cam, evidence, names, predicted)
                   for i, cam in zip(order, cams) if right[i] == group]
        section.text(f"**{title}**: {len(figures)} shown" + ("" if figures else " (none in this split)"))
        section.figures(*figures)
    return section


def _gallery_figure(i: int, cam: np.ndarray, evidence: ClassificationEvidence, names: list[str],
                    predicted: np.ndarray) -> Figure:
    from medlens.explain import overlay_rgb, png_bytes

    label = evidence.labels[i]
    truth = (", ".join(n for n, f in zip(names, label) if f) or "none") if np.ndim(label) else names[int(label)]
    p = evidence.probs[i, predicted[i]]
    caption = f"{evidence.case_ids[i]}: true {truth}, predicted {names[predicted[i]]} (p = {p:.2f})"
    return Figure(f"cam_{i:05d}", png_bytes(overlay_rgb(evidence.images[i], cam)), caption, small=True)


def classification_sections(doc: dict, evidence: ClassificationEvidence | None, names: list[str],
                            source: str) -> list[Section]:
    """All evaluation sections; without ``evidence`` (nothing in memory) only the tables of metrics.json."""
    sections = [metrics_section(doc), comparison_section(doc, source)]
    if evidence is not None:
        sections += [curves_section(doc, evidence, names), gallery_section(evidence, names)]
    return sections
