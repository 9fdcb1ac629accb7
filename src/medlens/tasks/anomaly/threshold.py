"""The decision threshold: set on normal validation scores alone, at the false-positive rate the plan names."""

from __future__ import annotations

import numpy as np

from medlens.errors import ConfigError


def threshold_at_fpr(normal_scores: np.ndarray, fpr: float) -> float:
    """The smallest observed normal score with at most ``fpr`` of the normal scores above it.

    Args:
        normal_scores: ``(N,)`` image scores of normal validation cases.
        fpr: the share of normal cases allowed above the threshold, in [0, 1).

    Returns:
        The threshold: a case is anomalous when its score is above it.

    Raises:
        ConfigError: no score, or ``fpr`` outside [0, 1).
    """
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64))
    if not 0 <= fpr < 1:
        raise ConfigError(f"anomaly.fpr={fpr}: the share of normal cases allowed above the threshold must be in "
                          "[0, 1); e.g. 0.05")
    if not len(scores):
        raise ConfigError("no normal validation score to set the threshold on")
    allowed = int(np.floor(fpr * len(scores) + 1e-9))  # cases that may lie strictly above
    return float(scores[len(scores) - 1 - allowed])


def share_above(scores: np.ndarray, threshold: float) -> float:
    """The share of ``scores`` strictly above ``threshold`` (NaN without scores)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float((scores > threshold).mean()) if len(scores) else float("nan")
