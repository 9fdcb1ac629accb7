"""Classification metrics with bootstrap confidence intervals, as one JSON-ready dict.

Conventions (shared by the classification task's evaluation):

- ``y_true``: ``(N,)`` int class indices for binary / multi-class / ordinal tasks, ``(N, L)``
  0/1 for multi-label tasks. MedMNIST's ``(N, 1)`` label column is accepted and flattened.
- ``probs``: ``(N, K)`` probabilities. Binary: ``K == 2``, column 1 is the positive class.
  Multi-class: rows sum to 1. Multi-label: ``(N, L)`` independent sigmoid probabilities.

Every metric is computed one-vs-rest from two ``(N, K)`` indicator matrices, truth ``T`` and
prediction ``P`` (binary: positive when ``probs[:, 1] >= threshold``; multi-class and ordinal:
argmax; multi-label: each label ``>= threshold``). Point estimates come from scikit-learn
(``multilabel_confusion_matrix``, ``roc_auc_score``); the bootstrap uses the same formulas on
weighted counts, all resamples at once, with the AUC as the Mann-Whitney statistic (ties count
one half), which equals scikit-learn's trapezoidal ROC AUC. Undefined values are NaN.

Ordinal tasks (ordered grades ``0..K-1``) add the figures graders use, on the argmax grade (see
:data:`GRADE_RULE`): quadratic weighted kappa (Cohen 1968; scikit-learn
``cohen_kappa_score(weights="quadratic")``) and the mean absolute error in grade steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix, multilabel_confusion_matrix, roc_auc_score

from medlens.errors import ConfigError
from medlens.evaluation.arrays import to_numpy
from medlens.evaluation.bootstrap import check_bootstrap_args, group_index, percentile_interval, resample_weights
from medlens.types import Task

PER_CLASS = ("precision", "recall", "specificity", "f1", "auc")
OVERALL = ("accuracy", "balanced_accuracy", "auc")


def as_task(task: Task | str) -> Task:
    """The :class:`Task` of a classification problem (ordinal: as multi-class, plus kappa and grade error)."""
    try:
        task = Task(task)
    except ValueError:
        raise ConfigError(f"unknown task {task!r}; expected one of "
                          f"{[t.value for t in Task if t is not Task.SEGMENTATION]}") from None
    if task is Task.SEGMENTATION:
        raise ConfigError("classification metrics were asked for a segmentation task; "
                          "evaluate masks with the segmentation metrics instead")
    return task


def check_inputs(y_true, probs, task: Task, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities against the task and the number of classes.

    Returns:
        ``(y, p)``: int64 labels ``(N,)`` (``(N, L)`` multi-label) and float64 probs ``(N, K)``.

    Raises:
        ConfigError: shapes that disagree (both are named), NaN or values outside [0, 1] in
            ``probs``, labels outside ``0..K-1`` (or 0/1 for multi-label).
    """
    y, p = to_numpy(y_true), to_numpy(probs).astype(np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ConfigError(f"expected probs of shape (N, K) with N > 0, got shape {p.shape}")
    if num_classes is not None and p.shape[1] != num_classes:
        raise ConfigError(f"probs has shape {p.shape} but class_names lists {num_classes} classes; "
                          "give one probability column per class name, in the same order")
    if task is Task.BINARY and p.shape[1] != 2:
        raise ConfigError(f"a binary task expects probs of shape (N, 2) with column 1 the positive class, "
                          f"got {p.shape}; for one sigmoid column use np.stack([1 - p, p], axis=1)")
    bad = ~np.isfinite(p)
    if bad.any():
        raise ConfigError(f"probs contains {int(bad.sum())} NaN/inf values (first in row "
                          f"{int(np.argwhere(bad)[0, 0])}); check the model output for a diverged run")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise ConfigError(f"probs must lie in [0, 1], found values in [{p.min():.3g}, {p.max():.3g}]; these look "
                          "like logits: apply softmax (sigmoid for multi-label) or apply_temperature first")
    multilabel = task is Task.MULTILABEL
    if not multilabel and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    expected = p.shape if multilabel else (len(p),)
    if y.shape != expected:
        raise ConfigError(f"y_true has shape {y.shape} but probs has shape {p.shape}; a {task.value} task "
                          f"expects y_true of shape {expected}")
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.mod(y, 1) == 0):
        raise ConfigError("y_true must hold whole-number class indices (0/1 for multi-label), found fractions "
                          "or NaN; pass the integer labels, not probabilities or soft labels")
    y = y.astype(np.int64)
    high = 1 if multilabel else p.shape[1] - 1
    outside = np.unique(y[(y < 0) | (y > high)])
    if outside.size:
        raise ConfigError(f"y_true holds labels {outside[:5].tolist()} outside 0..{high}; check that "
                          "class_names / the probs columns cover every class in the labels")
    return y, p


def indicators(y: np.ndarray, p: np.ndarray, task: Task, threshold) -> tuple[np.ndarray, np.ndarray]:
    """Truth and prediction indicator matrices ``T, P``, both bool ``(N, K)``."""
    k = p.shape[1]
    if task is Task.MULTILABEL:
        return y.astype(bool), p >= np.asarray(threshold)
    pred = (p[:, 1] >= threshold).astype(np.int64) if task is Task.BINARY else p.argmax(axis=1)
    return np.eye(k, dtype=bool)[y], np.eye(k, dtype=bool)[pred]


def resolve_threshold(threshold, task: Task, num_classes: int) -> float | list[float] | None:
    """The decision threshold: ``None`` for argmax tasks, else a float (or one per label)."""
    if task not in (Task.BINARY, Task.MULTILABEL):
        if threshold is not None:
            raise ConfigError(f"a {task.value} task predicts the argmax class, so `threshold` does not apply "
                              f"(got {threshold!r}); leave it as None")
        return None
    t = np.asarray(0.5 if threshold is None else threshold, dtype=float)
    allowed = [()] if task is Task.BINARY else [(), (num_classes,)]
    if t.shape not in allowed or not np.all((t >= 0) & (t <= 1)):
        raise ConfigError(f"`threshold` must be a probability in [0, 1]{' (or one per label)' * (len(allowed) > 1)}, "
                          f"got {threshold!r}; e.g. 0.5 or youden_threshold(y_val, p_val)")
    return float(t) if t.ndim == 0 else t.tolist()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, NaN where ``den == 0``."""
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def derive_metrics(counts: dict[str, np.ndarray], aucs: np.ndarray, task: Task,
                   counted: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from one-vs-rest counts, for ``B`` (re)samples at once.

    Args:
        counts: ``tp, fp, fn, tn``, each ``(B, K)`` (weighted) counts.
        aucs: ``(B, K)`` one-vs-rest AUC per class.
        counted: ``(K,)`` bool, classes entering the macro averages; a resample where one of them
            is undefined gets NaN (and is skipped by the interval), so every resample estimates
            the same quantity.

    Returns:
        ``precision, recall, specificity, f1, auc`` ``(B, K)`` and ``accuracy,
        balanced_accuracy, auc_macro`` ``(B,)``.
    """
    tp, fp, fn, tn = (counts[c] for c in ("tp", "fp", "fn", "tn"))
    out = {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
           "specificity": _ratio(tn, tn + fp), "f1": _ratio(2 * tp, 2 * tp + fp + fn), "auc": aucs}
    n = (tp + fp + fn + tn)[:, 0]
    nan = np.full(len(n), np.nan)
    if task is Task.MULTILABEL:
        out["accuracy"] = ((tp + tn) / n[:, None]).mean(axis=1)
        balanced = (out["recall"] + out["specificity"]) / 2
    else:
        out["accuracy"] = tp.sum(axis=1) / n
        balanced = out["recall"]
    out["balanced_accuracy"] = balanced[:, counted].mean(axis=1) if counted.any() else nan
    if task is Task.BINARY:
        out["auc_macro"] = aucs[:, 1]
    else:
        out["auc_macro"] = aucs[:, counted].mean(axis=1) if counted.any() else nan
    return out


def auc_plan(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort order, starts of runs of tied scores, and sorted truth, for :func:`weighted_auc`."""
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    return order, starts, truth[order].astype(np.float64)


def weighted_auc(weights: np.ndarray, plan: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """ROC AUC of every resample: P(score of a positive > score of a negative), ties one half.

    Args:
        weights: ``(B, N)`` row weights (draw counts) of ``B`` resamples.
        plan: :func:`auc_plan` of the truth and scores.

    Returns:
        ``(B,)`` AUC, NaN where a resample lacks positives or negatives.
    """
    order, starts, truth = plan
    ranked = weights[:, order]
    pos = np.add.reduceat(ranked * truth, starts, axis=1)   # (B, U) weight per run of tied scores
    neg = np.add.reduceat(ranked, starts, axis=1) - pos
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    return _ratio((pos * (below + 0.5 * neg)).sum(axis=1), n_pos * n_neg)


def _point_metrics(T: np.ndarray, P: np.ndarray, p: np.ndarray, task: Task, defined: np.ndarray,
                   counted: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics on all rows, from scikit-learn's counts and AUCs; each array has ``B == 1``."""
    mcm = multilabel_confusion_matrix(T.astype(int), P.astype(int))  # (K, 2, 2): [[tn, fp], [fn, tp]]
    counts = {"tn": mcm[:, 0, 0], "fp": mcm[:, 0, 1], "fn": mcm[:, 1, 0], "tp": mcm[:, 1, 1]}
    counts = {name: c[None].astype(np.float64) for name, c in counts.items()}
    aucs = [roc_auc_score(T[:, j], p[:, j]) if defined[j] else np.nan for j in range(p.shape[1])]
    return derive_metrics(counts, np.array([aucs], dtype=float), task, counted)


def _bootstrap_metrics(T, P, p, task, counted, groups, n_boot, seed) -> dict[str, np.ndarray]:
    """:func:`derive_metrics` of ``n_boot`` resamples, ``(B, ...)`` per metric."""
    X = np.concatenate([T & P, ~T & P, T & ~P, ~T & ~P], axis=1).astype(np.float64)
    plans = [auc_plan(T[:, j], p[:, j]) for j in range(p.shape[1])]
    parts = []
    for block in resample_weights(len(p), groups=groups, n_boot=n_boot, seed=seed):
        weights = block.astype(np.float64)
        counts = dict(zip(("tp", "fp", "fn", "tn"), np.split(weights @ X, 4, axis=1)))
        aucs = np.stack([weighted_auc(weights, plan) for plan in plans], axis=1)
        parts.append(derive_metrics(counts, aucs, task, counted))
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]} if parts else {}


def _entries(point: np.ndarray, boot: np.ndarray | None, alpha: float) -> list[dict]:
    """``{"value", "ci_low", "ci_high"}`` per column of ``point`` ``(1, K)`` or ``(1,)``."""
    values = np.atleast_1d(point[0])
    if boot is None:
        low = high = np.full(values.shape, np.nan)
    else:
        low, high = (np.atleast_1d(b) for b in percentile_interval(boot, alpha))
    return [{"value": float(v), "ci_low": float(lo), "ci_high": float(hi)} for v, lo, hi in zip(values, low, high)]


def classification_metrics(y_true, probs, task: Task | str, class_names: Sequence[str], *, threshold=None,
                           groups: Sequence | np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                           alpha: float = 0.05) -> dict:
    """Accuracy, balanced accuracy, AUC, per-class metrics and confusion, with bootstrap CIs.

    Multi-label accuracy is the mean over labels of each label's accuracy (MedMNIST's ACC) and
    balanced accuracy the mean over labels of (sensitivity + specificity) / 2. Macro averages
    leave out classes whose AUC is undefined (absent from ``y_true``), with a note.

    Args:
        y_true: ``(N,)`` class indices, or ``(N, L)`` 0/1 for multi-label.
        probs: ``(N, K)`` probabilities (see module docstring).
        task: :class:`Task` (or its value); ordinal is evaluated as multi-class, plus :func:`ordinal_metrics`.
        class_names: ``K`` names, in the order of the ``probs`` columns.
        threshold: binary / multi-label decision threshold (default 0.5; one per label allowed).
        groups: ``(N,)`` patient ids: the bootstrap resamples patients, not images.
        n_boot: bootstrap resamples (0: no intervals, NaN bounds).
        seed, alpha: bootstrap seed and 1 - confidence level.

    Returns:
        JSON-ready dict: ``accuracy``, ``balanced_accuracy``, ``auc`` (each ``{"value", "ci_low",
        "ci_high"}``), ``per_class`` ``{name: {precision, recall, specificity, f1, auc, support}}``,
        ``confusion_matrix``, ``n``, ``n_groups``, ``threshold``, ``task``, ``bootstrap``, ``notes``; ordinal
        tasks also ``qwk``, ``mae`` and ``grade_rule`` (:func:`ordinal_metrics`).

    Raises:
        ConfigError: inputs that disagree in shape, NaN probabilities, a misplaced threshold.
    """
    task = as_task(task)
    names = [str(c) for c in class_names]
    if len(set(names)) != len(names):
        raise ConfigError(f"class_names must be distinct, got {names}; the per-class results are keyed by name")
    check_bootstrap_args(n_boot, alpha)
    y, p = check_inputs(y_true, probs, task, len(names))
    thr = resolve_threshold(threshold, task, len(names))
    T, P = indicators(y, p, task, thr)
    support = T.sum(axis=0)
    defined = (support > 0) & (support < len(p))
    counted = defined if task is Task.MULTILABEL else support > 0
    point = _point_metrics(T, P, p, task, defined, counted)
    boot = _bootstrap_metrics(T, P, p, task, counted, groups, n_boot, seed) if n_boot else None
    result = {"task": task.value, "n": len(p), "n_groups": group_index(groups, len(p))[1], "threshold": thr}
    for key, source in zip(OVERALL, ("accuracy", "balanced_accuracy", "auc_macro")):
        result[key] = _entries(point[source], None if boot is None else boot[source], alpha)[0]
    per_metric = {m: _entries(point[m], None if boot is None else boot[m], alpha) for m in PER_CLASS}
    result["per_class"] = {name: {**{m: per_metric[m][j] for m in PER_CLASS}, "support": int(support[j])}
                           for j, name in enumerate(names)}
    result["confusion_matrix"] = _confusion(y, T, P, task, names)
    result["bootstrap"] = {"n_boot": int(n_boot), "seed": int(seed), "alpha": float(alpha), "method": "percentile",
                           "resampled": "case" if groups is None else "group",
                           "defined_resamples": _defined_counts(boot)}
    result["notes"] = _notes(names, support, len(p), task)
    if task is Task.ORDINAL:
        result.update(ordinal_metrics(y, p, groups=groups, n_boot=n_boot, seed=seed, alpha=alpha))
    return result


#: The grade kappa and grade error score: the argmax, as for accuracy. The median of the predicted distribution
#: minimises the expected grade error of a calibrated distribution, but it moves with the temperature fitted on a
#: small validation split, and on OASIS-1 CDR grades it scored lower kappa in 6 of 8 comparisons and higher grade
#: error in 5 of 8 (benchmarks/ordinal.py).
GRADE_RULE = "argmax (the most probable grade, as for accuracy)"


def weighted_kappa(confusions: np.ndarray) -> np.ndarray:
    """Quadratic weighted kappa of ``(B, K, K)`` (weighted) confusion matrices, rows = truth.

    ``1 - sum(w * O) / sum(w * E)`` with ``w_ij = (i - j)^2 / (K - 1)^2``, ``O`` the confusion and
    ``E`` the outer product of its margins over its total (Cohen 1968): 1 for perfect agreement, 0
    for chance. Returns ``(B,)``; NaN where ``sum(w * E)`` is 0 (one grade in truth and prediction).
    """
    k = confusions.shape[-1]
    grades = np.arange(k)
    weights = (grades[:, None] - grades[None, :]) ** 2 / max(k - 1, 1) ** 2
    total = confusions.sum(axis=(1, 2))
    expected = confusions.sum(axis=2)[:, :, None] * confusions.sum(axis=1)[:, None, :]
    expected = expected / np.where(total > 0, total, 1)[:, None, None]
    return 1 - _ratio((weights * confusions).sum(axis=(1, 2)), (weights * expected).sum(axis=(1, 2)))


def ordinal_metrics(y_true, probs, *, groups: Sequence | np.ndarray | None = None, n_boot: int = 1000,
                    seed: int = 0, alpha: float = 0.05) -> dict:
    """Quadratic weighted kappa and mean absolute grade error of the argmax grade, with bootstrap CIs.

    Args:
        y_true: ``(N,)`` grade indices ``0..K-1``.
        probs: ``(N, K)`` probabilities over the grades.
        groups: ``(N,)`` patient ids: resample patients (the same resamples as :func:`classification_metrics`).
        n_boot, seed, alpha: as :func:`classification_metrics`.

    Returns:
        ``{"qwk", "mae": {"value", "ci_low", "ci_high"}, "grade_rule"}``; MAE in grade steps (class index).
    """
    check_bootstrap_args(n_boot, alpha)
    y, p = check_inputs(y_true, probs, Task.ORDINAL)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    error = np.abs(y - pred).astype(np.float64)
    pairs = np.eye(k * k)[y * k + pred]  # (N, K*K): the confusion cell of each case
    one_grade = len(set(y.tolist()) | set(pred.tolist())) == 1  # kappa undefined, as in the bootstrap
    qwk = np.nan if one_grade else cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(k)))
    boot_qwk, boot_mae = [], []
    for block in resample_weights(len(y), groups=groups, n_boot=n_boot, seed=seed):
        weights = block.astype(np.float64)
        boot_qwk.append(weighted_kappa((weights @ pairs).reshape(-1, k, k)))
        boot_mae.append(weights @ error / weights.sum(axis=1))
    boots = [np.concatenate(b) if b else None for b in (boot_qwk, boot_mae)]
    return {"qwk": _entries(np.array([qwk], dtype=float), boots[0], alpha)[0],
            "mae": _entries(np.array([error.mean()]), boots[1], alpha)[0], "grade_rule": GRADE_RULE}


def quick_qwk(targets: np.ndarray, probs: np.ndarray) -> float:
    """Validation quadratic weighted kappa of the argmax grade (``targets (N,)``, ``probs (N, K)``); NaN when one
    grade is all there is."""
    k = probs.shape[1]
    return float(weighted_kappa(np.eye(k * k)[targets * k + probs.argmax(axis=1)].sum(axis=0).reshape(1, k, k))[0])


def _confusion(y: np.ndarray, T: np.ndarray, P: np.ndarray, task: Task, names: list[str]) -> dict:
    """Confusion counts, rows = true class, and row-normalised (NaN rows for absent classes)."""
    def normalised(counts: np.ndarray) -> list[list[float]]:
        rows = counts.sum(axis=1, keepdims=True)
        return _ratio(counts.astype(float), np.broadcast_to(rows, counts.shape)).tolist()

    if task is Task.MULTILABEL:
        mcm = multilabel_confusion_matrix(T.astype(int), P.astype(int))
        per_label = {name: {"counts": mcm[j].tolist(), "normalized": normalised(mcm[j])}
                     for j, name in enumerate(names)}
        return {"labels": names, "layout": "[[TN, FP], [FN, TP]], rows = true 0 / 1", "per_label": per_label}
    counts = confusion_matrix(y, P.argmax(axis=1), labels=list(range(len(names))))
    return {"labels": names, "counts": counts.tolist(), "normalized": normalised(counts)}


def _defined_counts(boot: dict[str, np.ndarray] | None) -> dict[str, int]:
    """How many resamples each overall metric was defined on."""
    if boot is None:
        return {}
    return {key: int(np.isfinite(boot[src]).sum())
            for key, src in zip(OVERALL, ("accuracy", "balanced_accuracy", "auc_macro"))}


def _notes(names: list[str], support: np.ndarray, n: int, task: Task) -> list[str]:
    """Human-readable caveats: absent classes, one-class labels, multi-label definitions."""
    notes = []
    for name, s in zip(names, support):
        if s == 0:
            notes.append(f"class {name!r} is absent from y_true: its recall and AUC are undefined (NaN) "
                         "and it is left out of the macro averages (AUC, balanced accuracy)")
        elif s == n:
            notes.append(f"class {name!r} is present in every row: its specificity and AUC are undefined "
                         "(NaN) and it is left out of the macro AUC")
    if task is Task.MULTILABEL:
        notes.append("multi-label: accuracy is the mean over labels of per-label accuracy; balanced accuracy "
                     "the mean over labels of (sensitivity + specificity) / 2")
    return notes


def _fmt(entry: dict, ci: bool) -> str:
    """``0.812 [0.780, 0.843]``; ``n/a`` for NaN."""
    def num(x: float) -> str:
        return "  n/a" if math.isnan(x) else f"{x:.3f}"

    if not ci or math.isnan(entry["ci_low"]):
        return num(entry["value"])
    return f"{num(entry['value'])} [{num(entry['ci_low'])}, {num(entry['ci_high'])}]"


def format_metrics_table(metrics: dict, title: str = "") -> str:
    """A fixed-width text table of a :func:`classification_metrics` result, for the terminal.

    Returns:
        Overall rows (``value [low, high]``), a per-class table and, for single-label tasks,
        the confusion matrix counts (rows = true class).
    """
    boot = metrics.get("bootstrap", {})
    level = (f"{100 * (1 - boot.get('alpha', 0.05)):g}% CI, {boot.get('n_boot', 0)} bootstrap resamples "
             f"of {boot.get('resampled', 'case')}s")
    lines = [title] if title else []
    rule = "argmax" if metrics["threshold"] is None else f"p >= {metrics['threshold']}"
    lines.append(f"n = {metrics['n']} ({metrics['n_groups']} groups), predicted class: {rule}; {level}")
    for key, label in zip(OVERALL, ("accuracy", "balanced accuracy", "AUC")):
        lines.append(f"  {label:<18} {_fmt(metrics[key], ci=True)}")
    if "qwk" in metrics:
        lines.append(f"  {'quadratic kappa':<18} {_fmt(metrics['qwk'], ci=True)}")
        lines.append(f"  {'mean abs. error':<18} {_fmt(metrics['mae'], ci=True)} grade steps")
    names = list(metrics["per_class"])
    width = max([5, *map(len, names)])
    lines.append("")
    lines.append(f"  {'class':<{width}}  {'precision':>9}  {'recall':>6}  {'specificity':>11}  {'F1':>5}  "
                 f"{'AUC':>5}  {'support':>7}")
    for name, row in metrics["per_class"].items():
        cells = [_fmt(row[m], ci=False) for m in PER_CLASS]
        lines.append(f"  {name:<{width}}  {cells[0]:>9}  {cells[1]:>6}  {cells[2]:>11}  {cells[3]:>5}  "
                     f"{cells[4]:>5}  {row['support']:>7}")
    if "counts" in metrics.get("confusion_matrix", {}):
        lines += ["", "  confusion (rows = true, columns = predicted)"]
        counts = metrics["confusion_matrix"]["counts"]
        cell = max([len(str(c)) for r in counts for c in r] + [len(n) for n in names])
        lines.append(f"  {'':<{width}}  " + "  ".join(f"{n:>{cell}}" for n in names))
        for name, r in zip(names, counts):
            lines.append(f"  {name:<{width}}  " + "  ".join(f"{c:>{cell}}" for c in r))
    for note in metrics.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)
