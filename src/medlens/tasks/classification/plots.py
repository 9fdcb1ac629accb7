"""Classification figures: ROC and precision-recall per class, confusion matrix, reliability diagram.

Conventions are those of :mod:`medlens.tasks.classification.metrics`: ``labels (N,)`` class indices
(``(N, L)`` 0/1 for multi-label) and ``probs (N, K)``; binary tasks draw the positive class only.
"""

from __future__ import annotations

import numpy as np

from medlens.report.plots import figure, to_png


def one_vs_rest(labels: np.ndarray, probs: np.ndarray, names: list[str], task: str):
    """``[(name, truth (N,) bool, score (N,))]`` for each curve to draw."""
    if task == "multilabel":
        return [(n, labels[:, j].astype(bool), probs[:, j]) for j, n in enumerate(names)]
    if task == "binary":
        return [(names[1], labels == 1, probs[:, 1])]
    return [(n, labels == j, probs[:, j]) for j, n in enumerate(names)]


def roc_pr_png(labels: np.ndarray, probs: np.ndarray, names: list[str], task: str) -> bytes:
    """ROC (with AUC) and precision-recall (with average precision) per class, side by side.

    Classes present in every case or in none have no curve (their AUC is undefined) and are skipped.
    """
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    fig, axes = figure(2, size=(3.7, 3.4))
    roc, pr = axes[0, 0], axes[0, 1]
    for name, truth, score in one_vs_rest(labels, probs, names, task):
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, score)
        precision, recall, _ = precision_recall_curve(truth, score)
        roc.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        pr.plot(recall, precision, label=f"{name} (AP {average_precision_score(truth, score):.3f})")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc.set(title="ROC", xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (recall)")
    pr.set(title="precision-recall", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is roc else "lower left")
    return to_png(fig)


def _matrix_panel(ax, matrix: np.ndarray, names: list[str], title: str, fmt: str) -> None:
    finite = np.nan_to_num(matrix.astype(float))
    ax.imshow(finite, cmap="Blues", vmin=0, vmax=max(finite.max(), 1e-9))
    for (i, j), value in np.ndenumerate(matrix):
        text = "n/a" if np.isnan(value) else format(value, fmt)
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="white" if finite[i, j] > 0.6 * finite.max() else "black")
    ax.set(title=title, xlabel="predicted", ylabel="true", xticks=range(len(names)), yticks=range(len(names)))
    ax.set_xticklabels(names, rotation=45 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center",
                       fontsize=8)
    ax.set_yticklabels(names, fontsize=8)


def confusion_png(confusion: dict) -> bytes:
    """Counts and row-normalised confusion (rows = true class); multi-label: one 2x2 per label."""
    if "per_label" in confusion:
        labels = list(confusion["per_label"])
        cols = min(len(labels), 5)
        fig, axes = figure(cols, -(-len(labels) // cols), size=(2.6, 2.5))
        for ax in axes.ravel()[len(labels):]:
            ax.axis("off")
        for ax, name in zip(axes.ravel(), labels):
            _matrix_panel(ax, np.asarray(confusion["per_label"][name]["counts"]), ["0", "1"], name, "d")
        return to_png(fig)
    names = confusion["labels"]
    side = max(3.0, 0.45 * len(names) + 1.6)
    fig, axes = figure(2, size=(side, side * 0.9))
    _matrix_panel(axes[0, 0], np.asarray(confusion["counts"]), names, "counts", "d")
    normalized = np.asarray([[np.nan if v is None else v for v in row] for row in confusion["normalized"]], float)
    _matrix_panel(axes[0, 1], normalized, names, "row-normalised", ".2f")
    return to_png(fig)


def reliability_bins(confidence: np.ndarray, outcome: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per equal-width bin ``((i-1)/M, i/M]``: mean confidence, observed frequency, count (as the ECE bins)."""
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, confidence, n_bins) / count
        frequency = np.bincount(bins, outcome, n_bins) / count
    return mean_conf, frequency, count


def _confidence_outcome(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness; multi-label: every label's probability and truth, pooled."""
    if labels.ndim == 2:
        return probs.ravel(), labels.ravel().astype(float)
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)


def reliability_png(labels: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, *, temperature: float,
                    ece: tuple[float, float], n_bins: int = 15) -> bytes:
    """Reliability diagram before and after temperature scaling (bars: observed accuracy per bin)."""
    fig, axes = figure(2, size=(3.4, 3.4))
    width = 1.0 / n_bins
    for ax, probs, title, value in ((axes[0, 0], raw, "before (T = 1)", ece[0]),
                                    (axes[0, 1], calibrated, f"after temperature T = {temperature:.3f}", ece[1])):
        mean_conf, frequency, count = reliability_bins(*_confidence_outcome(labels, probs), n_bins)
        centres = (np.arange(n_bins) + 0.5) * width
        keep = count > 0
        ax.bar(centres[keep], frequency[keep], width=width * 0.95, color="#4c78a8", edgecolor="white",
               label="observed")
        ax.plot(mean_conf[keep], frequency[keep], "o", color="#e45756", markersize=3, label="bin mean confidence")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
        ax.set(title=f"{title}\nECE {value:.4f}", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7, loc="upper left")
    return to_png(fig)
