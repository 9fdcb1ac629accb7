"""Anomaly metrics with bootstrap 95% CIs: AUROC, AUPRC, and sensitivity / specificity at the threshold.

Abnormal is the positive class. AUROC: the probability that an abnormal case scores above a normal one
(ties count half); AUPRC: average precision (scikit-learn), whose chance level is the share of abnormal
cases. At the threshold, a case is called anomalous when its score is strictly above it: sensitivity is
the share of abnormal cases called anomalous, specificity the share of normal cases called normal. A
split without abnormal cases has no AUROC, AUPRC or sensitivity (``None``, with a note); specificity is
still reported.
"""

from __future__ import annotations

import numpy as np

from medlens.evaluation.bootstrap import bootstrap_ci


def anomaly_metrics(abnormal: np.ndarray, scores: np.ndarray, threshold: float, *, groups=None, n_boot: int = 1000,
                    seed: int = 0) -> dict:
    """Every image-level figure as ``{"value", "ci_low", "ci_high"}`` (``None`` where undefined).

    Args:
        abnormal: ``(N,)`` bool, the case is of a non-normal class.
        scores: ``(N,)`` image anomaly scores.
        threshold: scores above it are anomalous.
        groups: ``(N,)`` patient ids (the bootstrap resamples patients), or ``None``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = np.asarray(abnormal, dtype=bool), np.asarray(scores, dtype=np.float64)
    common = dict(groups=groups, n_boot=n_boot, seed=seed)
    both = 0 < y.sum() < len(y)
    out = {"n_normal": int((~y).sum()), "n_abnormal": int(y.sum()), "threshold": float(threshold)}
    out["auroc"] = _entry(bootstrap_ci(_defined(roc_auc_score), y, s, **common)) if both else None
    out["auprc"] = _entry(bootstrap_ci(_defined(average_precision_score), y, s, **common)) if both else None
    out["sensitivity"] = _entry(bootstrap_ci(_rate(True, threshold), y, s, **common)) if y.any() else None
    out["specificity"] = _entry(bootstrap_ci(_rate(False, threshold), y, s, **common)) if (~y).any() else None
    if not y.any():
        out["note"] = ("no abnormal case in this split: AUROC, AUPRC and sensitivity are undefined (only the "
                       "specificity, the share of normal cases below the threshold, is measured)")
    return out


def _defined(metric):
    """``metric(y, s)``, NaN for a resample holding one kind of case only."""
    def safe(y: np.ndarray, s: np.ndarray) -> float:
        return float(metric(y, s)) if 0 < y.sum() < len(y) else float("nan")
    return safe


def _rate(positive: bool, threshold: float):
    """Sensitivity (``positive``) or specificity at ``threshold``; NaN without cases of that kind."""
    def rate(y: np.ndarray, s: np.ndarray) -> float:
        chosen = y if positive else ~y
        called = s[chosen] > threshold
        return float(called.mean() if positive else (~called).mean()) if chosen.any() else float("nan")
    return rate


def _entry(result: tuple[float, float, float]) -> dict:
    value, low, high = result
    return {"value": value, "ci_low": low, "ci_high": high}


def pixel_auroc(maps: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """AUROC of every voxel's map value against the masks' foreground (``maps[i]`` and ``masks[i]`` one grid)."""
    from sklearn.metrics import roc_auc_score

    values = np.concatenate([m.ravel() for m in maps])
    truth = np.concatenate([(k > 0).ravel() for k in masks])
    return float(roc_auc_score(truth, values)) if 0 < truth.sum() < len(truth) else float("nan")


def roc_points(abnormal: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(false positive rate, true positive rate)`` of the ROC curve (empty without both kinds of case)."""
    from sklearn.metrics import roc_curve

    y = np.asarray(abnormal, dtype=bool)
    if not 0 < y.sum() < len(y):
        return np.zeros(0), np.zeros(0)
    fpr, tpr, _ = roc_curve(y, scores)
    return fpr, tpr
