"""Calibration and operating points, fitted on validation data and applied to test data.

- :func:`expected_calibration_error`: top-label ECE with equal-width confidence bins (Guo et al.
  2017, "On Calibration of Modern Neural Networks"): the row-weighted mean, over bins, of
  |accuracy - mean confidence|.
- :func:`fit_temperature` / :func:`apply_temperature`: temperature scaling (Guo et al. 2017),
  one scalar ``T`` dividing the logits, chosen to minimise the validation negative log-likelihood.
- :func:`youden_threshold`: the ROC point maximising Youden's J = sensitivity + specificity - 1
  (Youden 1950).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax
from sklearn.metrics import roc_curve

from medlens.errors import ConfigError, DatasetError
from medlens.evaluation.arrays import to_numpy

T_MIN, T_MAX = 0.05, 20.0


def _binned_gap(confidence: np.ndarray, outcome: np.ndarray, n_bins: int) -> float:
    """Sum over equal-width bins ``((i-1)/M, i/M]`` of |sum of outcomes - sum of confidences| / N."""
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.bincount(bins, outcome, n_bins) - np.bincount(bins, confidence, n_bins)
    return float(np.abs(gap).sum() / len(confidence))


def expected_calibration_error(y_true, probs, n_bins: int = 15) -> float:
    """Expected calibration error (ECE) with ``n_bins`` equal-width bins.

    Binary / multi-class (``y_true`` ``(N,)``): top-label ECE, binning the maximum probability and
    comparing it with whether the argmax class is right. Multi-label (``y_true`` ``(N, L)``): the
    mean over labels of each label's ECE, binning its sigmoid probability on [0, 1] and comparing
    it with the label's frequency (classwise ECE, Kull et al. 2019).

    Args:
        y_true: ``(N,)`` class indices, or ``(N, L)`` 0/1.
        probs: ``(N, K)`` probabilities (binary: ``K == 2``), or ``(N, L)``.
        n_bins: number of bins ``M`` on [0, 1].

    Returns:
        ECE in [0, 1].

    Raises:
        ConfigError: shapes that disagree, NaN, or ``n_bins < 1``.
    """
    y, p = to_numpy(y_true), to_numpy(probs).astype(np.float64)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ConfigError(f"`n_bins` must be a whole number >= 1, got {n_bins!r}; Guo et al. use 15")
    multilabel = y.ndim == 2 and y.shape == p.shape
    if not multilabel and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if p.ndim != 2 or len(p) == 0 or (not multilabel and y.shape != (len(p),)):
        raise ConfigError(f"expected y_true (N,) with probs (N, K), or y_true (N, L) with probs (N, L); "
                          f"got y_true {y.shape} and probs {p.shape}")
    if not np.isfinite(p).all():
        raise ConfigError("probs contains NaN/inf values; check the model output for a diverged run")
    if multilabel:
        return float(np.mean([_binned_gap(p[:, j], y[:, j].astype(float), n_bins) for j in range(p.shape[1])]))
    correct = (p.argmax(axis=1) == y).astype(float)
    return _binned_gap(p.max(axis=1), correct, n_bins)


def mean_nll(logits: np.ndarray, y: np.ndarray, multilabel: bool, temperature: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)`` (or summed-over-labels BCE)."""
    z = logits / temperature
    if multilabel:
        # -log sigmoid(z) = logaddexp(0, -z); -log(1 - sigmoid(z)) = logaddexp(0, z)
        return float(np.mean(np.sum(np.where(y == 1, np.logaddexp(0, -z), np.logaddexp(0, z)), axis=1)))
    return float(-np.mean(np.take_along_axis(log_softmax(z, axis=1), y[:, None], axis=1)))


def _check_logits(logits, y_true, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, K)`` float64 and labels ``(N,)`` or ``(N, L)`` int64, checked."""
    z, y = to_numpy(logits).astype(np.float64), to_numpy(y_true)
    if not multilabel and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    expected = z.shape if multilabel else z.shape[:1]
    if z.ndim != 2 or y.shape != expected:
        kind = "(N, L) 0/1 labels with (N, L) logits" if multilabel else "(N,) class indices with (N, K) logits"
        raise ConfigError(f"expected {kind}; got y_true {y.shape} and logits {z.shape}")
    if not np.isfinite(z).all():
        raise ConfigError("logits contain NaN/inf values; check the model output for a diverged run")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= (2 if multilabel else z.shape[1])):
        raise ConfigError(f"y_true holds labels outside 0..{1 if multilabel else z.shape[1] - 1}")
    return z, y


def fit_temperature(logits, y_true, multilabel: bool = False) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on validation data.

    ``T > 1`` softens an overconfident model; the argmax (hence accuracy) is unchanged. The NLL
    is unimodal in ``log T`` (convex in ``1 / T``), so a bounded Brent search on ``log T`` is exact.

    Args:
        logits: ``(N, K)`` validation logits (binary: 2 columns); ``(N, L)`` for multi-label.
        y_true: ``(N,)`` class indices, or ``(N, L)`` 0/1 with ``multilabel=True``.
        multilabel: fit sigmoid BCE instead of softmax cross-entropy.

    Returns:
        ``T`` in [0.05, 20]; 1.0 for degenerate input (no rows, constant logits).

    Raises:
        ConfigError: shapes that disagree, NaN logits, labels out of range.
    """
    z, y = _check_logits(logits, y_true, multilabel)
    spread = np.ptp(z, axis=1) if not multilabel else np.abs(z)
    if len(z) == 0 or not np.any(spread > 0):
        return 1.0
    result = minimize_scalar(lambda log_t: mean_nll(z, y, multilabel, math.exp(log_t)),
                             bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                             options={"xatol": 1e-5})
    return float(np.clip(math.exp(result.x), T_MIN, T_MAX))


def apply_temperature(logits, temperature: float, multilabel: bool = False) -> np.ndarray:
    """Probabilities ``softmax(logits / T)`` (``sigmoid`` for multi-label), float64 ``(N, K)``."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}; use fit_temperature on validation logits")
    z = to_numpy(logits).astype(np.float64) / temperature
    return expit(z) if multilabel else softmax(z, axis=-1)


def youden_threshold(y_true, p_positive) -> float:
    """Threshold maximising sensitivity + specificity - 1 over the ROC curve's thresholds.

    Predict positive when ``p >= threshold`` (scikit-learn's ``roc_curve`` convention, the same
    as :func:`~medlens.tasks.classification.metrics.classification_metrics`). Ties go to the higher ROC threshold,
    then the threshold is moved to the middle of the score gap below it (same J, larger margin).

    Args:
        y_true: ``(N,)`` 0/1 labels.
        p_positive: ``(N,)`` probability of the positive class (``probs[:, 1]``).

    Returns:
        The threshold, clipped to [0, 1].

    Raises:
        ConfigError: shapes that disagree or NaN probabilities.
        DatasetError: ``y_true`` holds one class only (no ROC curve).
    """
    y, p = to_numpy(y_true).ravel(), to_numpy(p_positive).astype(np.float64)
    if p.ndim != 1 or y.shape != p.shape:
        raise ConfigError(f"expected y_true (N,) and p_positive (N,) (e.g. probs[:, 1]); got {y.shape} and {p.shape}")
    if not np.isfinite(p).all():
        raise ConfigError("p_positive contains NaN/inf values; check the model output")
    if len(np.unique(y)) != 2:
        raise DatasetError(f"Youden's threshold needs both classes in y_true, found {np.unique(y).tolist()}; "
                           "choose the threshold on a validation split with positive and negative cases")
    fpr, tpr, thresholds = roc_curve(y, p)
    best = float(thresholds[np.argmax(tpr - fpr)])
    below = p[p < best]
    # every threshold in (highest score below `best`, best] gives the same J: take the middle of that
    # gap, so perfectly separated validation scores do not push the threshold to the edge of a class
    middle = (best + below.max()) / 2 if below.size and np.isfinite(best) else best
    return float(np.clip(middle, 0.0, 1.0))
