"""The evaluation part of a classification report: metrics with CIs, curves, calibration, Grad-CAM gallery; for a
network of several inputs also what each input adds (``sources``) and what each is worth to it (``importance``)."""

from __future__ import annotations

import numpy as np

from medlens.report.document import Figure, Section, Table, count_phrase, num, with_ci
from medlens.report.published import approx, medmnist_benchmark
from medlens.tasks.classification.evaluate import ClassificationEvidence
from medlens.tasks.classification.plots import confusion_png, reliability_png, roc_pr_png

OVERALL = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("auc", "AUC"))
PER_CLASS = ("precision", "recall", "specificity", "f1", "auc")


ORDINAL = (("qwk", "quadratic weighted kappa"), ("mae", "mean absolute grade error (grade steps)"))


def metrics_table(metrics: dict, key: str, caption: str) -> Table:
    """Overall accuracy, balanced accuracy and AUC with their 95% CI: the numbers of metrics.json; for ordered
    grades also the quadratic weighted kappa and the mean absolute grade error."""
    rows = [[label, num(metrics[k]["value"]), num(metrics[k]["ci_low"]), num(metrics[k]["ci_high"])]
            for k, label in OVERALL + tuple(pair for pair in ORDINAL if pair[0] in metrics)]
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
    if "qwk" in metrics:
        section.text(f"Ordered grades: kappa and grade error score the {metrics['grade_rule']}; the grade error "
                     "is in grade steps (neighbouring grades are one step apart).")
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


def gallery_section(evidence: ClassificationEvidence, names: list[str]) -> Section:
    """Grad-CAM overlays of the predicted class (maps computed by evaluation), wrong then right cases."""
    predicted = evidence.probs.argmax(axis=1)
    section = Section("Grad-CAM gallery", key="gallery")
    section.text("Where the network looked for the class it predicted (Grad-CAM on its last feature layer; red = "
                 "most evidence). The most confident mistakes come first; 3D cases show the three slices through "
                 "the hottest point.")
    if evidence.views:
        section.text(f"One map per view ({', '.join(evidence.views)}), each scaled to its own peak, with the case's "
                     "clinical values given; a view the case lacks has no map (its caption says so).")
    if not evidence.gallery:
        return section
    for group, title in ((False, "wrongly classified"), (True, "correctly classified")):
        chosen = [(i, image, cam) for i, image, cam in evidence.gallery
                  if _right(evidence.labels[i], predicted[i]) == group]
        figures = [figure for i, image, cam in chosen for figure in _gallery_figures(i, image, cam, evidence, names,
                                                                                     predicted)]
        section.text(f"**{title}**: {len(chosen)} shown" + ("" if chosen else " (none in this split)"))
        section.figures(*figures)
    return section


def _gallery_figures(i: int, image: np.ndarray, cam: np.ndarray, evidence: ClassificationEvidence,
                     names: list[str], predicted: np.ndarray) -> list[Figure]:
    """The case's overlay, or one per view it has (``image (V * C, *S)``, ``cam (V, *S)``, NaN: view missing)."""
    from medlens.explain import overlay_rgb, png_bytes

    caption = _caption(i, evidence, names, predicted)
    if not evidence.views:
        return [Figure(f"cam_{i:05d}", png_bytes(overlay_rgb(image, cam)), caption, small=True)]
    per_view = image.reshape(len(evidence.views), -1, *image.shape[1:])
    missing = [name for name, m in zip(evidence.views, cam) if np.isnan(m).all()]
    note = f" (no map: {', '.join(missing)} missing)" if missing else ""
    return [Figure(f"cam_{i:05d}_{v}", png_bytes(overlay_rgb(per_view[v], cam[v])), f"{caption}, view {name}{note}",
                   small=True)
            for v, name in enumerate(evidence.views) if name not in missing]


def _right(label, predicted: int) -> bool:
    return bool(label[predicted] == 1) if np.ndim(label) else bool(predicted == label)


def _caption(i: int, evidence: ClassificationEvidence, names: list[str], predicted: np.ndarray) -> str:
    label = evidence.labels[i]
    truth = (", ".join(n for n, f in zip(names, label) if f) or "none") if np.ndim(label) else names[int(label)]
    p = evidence.probs[i, predicted[i]]
    return f"{evidence.case_ids[i]}: true {truth}, predicted {names[predicted[i]]} (p = {p:.2f})"


def classification_sections(doc: dict, evidence: ClassificationEvidence | None, names: list[str],
                            source: str) -> list[Section]:
    """All evaluation sections; without ``evidence`` (nothing in memory) only the tables of metrics.json."""
    sections = [metrics_section(doc), comparison_section(doc, source)]
    if "sources" in doc:
        sections.append(sources_section(doc["sources"], doc["split"]))
    if "importance" in doc:
        sections.append(importance_section(doc["importance"]))
    if evidence is not None:
        sections += [curves_section(doc, evidence, names), gallery_section(evidence, names)]
    return sections


def sources_section(sources: dict, split: str) -> Section:
    """What each input adds: the fused network with inputs withheld, and the clinical values alone (metrics.json)."""
    section = Section("What each input adds", key="sources")
    section.text(f"The fused network on the {split} split with all its inputs, then with some withheld (as when a "
                 "case lacks them; the same trained network, not one retrained per row), beside gradient boosting "
                 "on the clinical values alone. Per-case probabilities: `sources_<split>.csv`.")
    rows = [[row["source"], with_ci(row["auc"]), with_ci(row["accuracy"]), with_ci(row["balanced_accuracy"]),
             row["how"]] for row in sources["rows"]]
    return section.table(Table(["source", "AUC [95% CI]", "accuracy [95% CI]", "balanced accuracy [95% CI]", "how"],
                               rows, key="sources", caption=f"each source scored on the {split} split"))


def importance_section(importance: dict) -> Section:
    """The drop in the monitor's score when each clinical column is permuted / each view withheld (on validation)."""
    section = Section("What each input is worth to the network", key="importance")
    if "metric" not in importance:
        return section.text(importance.get("note", "importances not measured"))
    metric, split = importance["metric"], importance["split"]
    section.text(f"Measured on the {split} split ({importance['n_cases']} cases, {metric} "
                 f"{num(importance['baseline'])}), not on the evaluated split: {importance['how']}. A drop near 0 "
                 "(within its standard deviation) means the network does not rely on the input, or the split is too "
                 "small to tell; a negative drop is noise.")
    rows = [["clinical", row["input"], num(row["drop"]), num(row["std"]), ", ".join(row["features"])]
            for row in importance["clinical"]]
    rows += [["view", row["input"], num(row["drop"]), "", f"withheld ({row['n_with_view']} cases have it)"]
             for row in importance["views"]]
    if not rows:
        return section
    section.table(Table(["input", "name", f"drop in {metric}", "std", "how"], rows, key="importance",
                        caption=f"importance on the {split} split, largest drop first"))
    return section.figures(Figure("importance", importance_png(importance),
                                  f"drop in {split} {metric} when the input is permuted (clinical) or withheld (view)"))


def _finite(value) -> float:
    return float(value) if value is not None and np.isfinite(value) else 0.0


def importance_png(importance: dict) -> bytes:
    """Horizontal bars: the drop per input, with the permutations' standard deviation as error bars."""
    from medlens.report.plots import figure, to_png

    rows = [(f"{row['input']}", row["drop"], row["std"]) for row in importance["clinical"]]
    rows += [(f"view {row['input']}", row["drop"], 0.0) for row in importance["views"]]
    rows = [(label, _finite(drop), _finite(std)) for label, drop, std in rows]  # undefined (null in JSON): 0
    fig, axes = figure(1, size=(4.6, 0.4 * len(rows) + 1.2))
    ax = axes[0, 0]
    ax.barh(range(len(rows)), [r[1] for r in rows], xerr=[r[2] for r in rows], color="#4c78a8", capsize=3)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="grey", linewidth=1)
    ax.set(xlabel=f"drop in {importance['split']} {importance['metric']}")
    return to_png(fig)


def guard_section(guard: dict) -> Section:
    """How the out-of-distribution guard was fitted and thresholded (``guard``: its description, as in card.json)."""
    section = Section("Out-of-distribution guard", key="ood-guard")
    if not guard.get("fitted"):
        return section.text(guard.get("note", "no out-of-distribution guard"))
    section.text(f"Every prediction carries `ood_score` and `in_distribution`. {guard['rule']}. Fitted on "
                 f"{guard['fitted_on_images']} training images ({guard['classes']} class mean(s), "
                 f"{guard['num_features']} features: {guard.get('features', 'the pooled features')}).")
    rows = [["threshold (standardised score)", f"{guard['threshold']:.4g}"],
            *([["feature blocks", ", ".join(f"{name} ({size})" for name, size in guard["blocks"].items())]]
              if isinstance(guard.get("blocks"), dict) else []),
            ["target in-distribution recall", f"{100 * guard['recall_target']:.0f}%"],
            ["validation images flagged", f"{100 * guard['validation_flagged']:.1f}% of {guard['validation_images']}"]]
    return section.table(Table(["", "value"], rows, key="ood-guard", caption="the guard's threshold"))


def compare_table(runs: list) -> Table:
    """``medlens report A B``: each run's headline metrics with CIs (``runs`` as ``[(label, run, config)]``)."""
    from medlens._files import read_json
    from medlens.report.compare import NOT_EVALUATED
    from medlens.report.document import with_ci

    rows = []
    for label, run, config in runs:
        doc = read_json(run.metrics_json, {})
        cells = [with_ci(doc["metrics"][k]) for k, _ in OVERALL] if doc else [NOT_EVALUATED, "", ""]
        rows.append([label, config.model.name, doc.get("split", ""), str(doc.get("n_cases", "")), *cells])
    return Table(["run", "model", "split", "cases", *(f"{name} [95% CI]" for _, name in OVERALL)], rows,
                 key="compare", caption="headline metrics from each run's metrics.json")
