"""Percentile bootstrap confidence intervals, resampling cases or whole patients.

A resample is written as a weight per row: how many times the row was drawn. Resampling rows
draws ``N`` rows with replacement; resampling groups (the cluster bootstrap) draws as many groups
as there are, with replacement, and every row of a drawn group gets that group's draw count, so
the images of one patient always travel together. Both :func:`bootstrap_ci` and the vectorised
metrics of :mod:`medlens.tasks.classification.metrics` consume the same weights, so one seed gives
the same resamples everywhere.

The interval is the percentile interval (Efron & Tibshirani 1993, ch. 13): the ``alpha / 2`` and
``1 - alpha / 2`` quantiles of the metric over the resamples. Resamples on which the metric is
undefined (one class only for an AUC) are skipped; when fewer than half are left the interval is
``(nan, nan)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from medlens.errors import ConfigError

#: Resamples generated per block. Fixed (not derived from N) so that a seed always yields the
#: same resamples, whatever the data size.
BLOCK = 100


def group_index(groups: Sequence | np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Map each row to a group number.

    Args:
        groups: ``(N,)`` group labels (patient ids), or ``None`` for one group per row. A
            ``None`` (or NaN) label makes that row its own group: an unknown patient is
            counted as a patient of one image, never merged with the other unknowns.
        n: number of rows ``N``.

    Returns:
        ``(index, G)``: ``(N,)`` int group number of each row, and the number of groups ``G``.

    Raises:
        ConfigError: ``groups`` does not have one label per row.
    """
    if groups is None:
        return np.arange(n), n
    labels = list(np.asarray(groups, dtype=object).ravel())
    if len(labels) != n:
        raise ConfigError(f"`groups` must give one group (patient id) per row: expected {n} labels, "
                          f"got {len(labels)}; pass the patient id of each case, in the order of `y_true`")
    numbers: dict = {}
    index = np.empty(n, dtype=np.int64)
    for i, label in enumerate(labels):
        unknown = label is None or (isinstance(label, float) and math.isnan(label))
        key = ("__row__", i) if unknown else label
        index[i] = numbers.setdefault(key, len(numbers))
    return index, len(numbers)


def resample_weights(n: int, *, groups: Sequence | np.ndarray | None = None, n_boot: int = 1000,
                     seed: int = 0) -> Iterator[np.ndarray]:
    """Yield bootstrap resamples as row weights, in blocks of at most :data:`BLOCK` resamples.

    Args:
        n: number of rows ``N``.
        groups: ``(N,)`` group labels for the cluster bootstrap, or ``None`` to resample rows.
        n_boot: total number of resamples ``B``.
        seed: seed of the NumPy generator; the same seed gives the same resamples.

    Yields:
        ``(b, N)`` int64 arrays, ``b <= BLOCK``: how many times each row is in each resample.
    """
    index, n_groups = group_index(groups, n)
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, BLOCK):
        b = min(BLOCK, n_boot - start)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        flat = (draws + n_groups * np.arange(b)[:, None]).ravel()
        counts = np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups)
        yield counts if groups is None else counts[:, index]


def percentile_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap values, skipping undefined (NaN) resamples.

    Args:
        values: ``(B, ...)`` metric value of each resample; NaN where undefined.
        alpha: 1 - confidence level.

    Returns:
        ``(low, high)``, each of shape ``values.shape[1:]``; NaN where fewer than half of the
        ``B`` resamples are defined.
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0:  # n_boot = 0: no resample, no interval
        return np.full(values.shape[1:], np.nan), np.full(values.shape[1:], np.nan)
    valid = np.isfinite(values)
    enough = valid.sum(axis=0) * 2 >= max(len(values), 1)
    masked = np.where(valid, values, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are handled below
        low, high = np.nanpercentile(masked, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return np.where(enough, low, np.nan), np.where(enough, high, np.nan)


def check_bootstrap_args(n_boot: int, alpha: float) -> None:
    """Raise a :class:`ConfigError` unless ``n_boot >= 0`` and ``0 < alpha < 1``."""
    if int(n_boot) != n_boot or n_boot < 0:
        raise ConfigError(f"`n_boot` must be a whole number >= 0, got {n_boot!r}; use e.g. 1000 "
                          "(0 skips the confidence intervals)")
    if not 0 < alpha < 1:
        raise ConfigError(f"`alpha` must lie in (0, 1), got {alpha!r}; use 0.05 for 95% intervals")


def bootstrap_ci(metric: Callable[..., float], *arrays, groups: Sequence | np.ndarray | None = None,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """A metric on all rows, with its percentile bootstrap confidence interval.

    Args:
        metric: ``metric(*resampled_arrays) -> float``; it may raise ``ValueError`` or return
            NaN where it is undefined (such resamples are skipped).
        *arrays: arrays sharing their first axis ``N`` (e.g. ``y_true (N,)``, ``probs (N, K)``).
        groups: ``(N,)`` patient ids: resample whole patients (cluster bootstrap).
        n_boot: number of resamples ``B``; 0 gives a NaN interval.
        seed: the same seed gives the same interval.
        alpha: 1 - confidence level (0.05 for a 95% interval).

    Returns:
        ``(value, low, high)``: the metric on all rows and the interval bounds.

    Raises:
        ConfigError: no arrays, arrays of different lengths, or invalid ``n_boot`` / ``alpha``.
    """
    check_bootstrap_args(n_boot, alpha)
    arrays = tuple(np.asarray(a) for a in arrays)
    lengths = [len(a) for a in arrays]
    if not arrays or len(set(lengths)) != 1 or lengths[0] == 0:
        raise ConfigError(f"bootstrap_ci needs one or more non-empty arrays sharing their first axis; "
                          f"got lengths {lengths}; pass e.g. `bootstrap_ci(metric, y_true, probs)`")
    n = lengths[0]
    value = float(metric(*arrays))
    rows = np.arange(n)
    boot = []
    for block in resample_weights(n, groups=groups, n_boot=n_boot, seed=seed):
        for weights in block:
            take = np.repeat(rows, weights)
            boot.append(_defined_or_nan(metric, [a[take] for a in arrays]))
    low, high = percentile_interval(np.array(boot).reshape(len(boot)), alpha)
    return value, float(low), float(high)


def _defined_or_nan(metric: Callable[..., float], arrays: list[np.ndarray]) -> float:
    """The metric on one resample, or NaN where it raises ``ValueError`` (undefined there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. sklearn's UndefinedMetricWarning on one-class resamples
        try:
            return float(metric(*arrays))
        except (ValueError, ZeroDivisionError):
            return float("nan")
