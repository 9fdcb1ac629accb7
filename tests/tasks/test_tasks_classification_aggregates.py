"""Calibration fitted from aggregates of validation splits held elsewhere (a federation's sites)."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.evaluation import fit_temperature, youden_threshold
from medlens.tasks.classification.aggregates import TEMPERATURES, combine, site_statistics


def _site(rng, n: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` validation cases, ``share`` of them positive, logits an over-confident model would give."""
    labels = (rng.random(n) < share).astype(int)
    margin = 6.0 * (labels - 0.5) + rng.normal(0, 4.0, n)
    return np.stack([np.zeros(n), margin], axis=1), labels


def _youden(labels, p, threshold) -> float:
    called = p >= threshold
    return called[labels == 1].mean() - called[labels == 0].mean()


def test_aggregates_give_the_temperature_and_threshold_of_the_pooled_cases():
    rng = np.random.default_rng(0)
    sites = [_site(rng, 300, 0.05), _site(rng, 500, 0.9), _site(rng, 80, 0.5)]  # label skew, as federations have
    result = combine([site_statistics(z, y, "binary") for z, y in sites], "binary")
    z, y = np.concatenate([s[0] for s in sites]), np.concatenate([s[1] for s in sites])
    pooled_t = fit_temperature(z, y)
    assert pooled_t > 1.5 and result["temperature"] == pytest.approx(pooled_t, rel=0.03)  # the grid's step is 5%
    p = 1 / (1 + np.exp(-z[:, 1] / result["temperature"]))
    best = _youden(y, p, youden_threshold(y, p))
    assert _youden(y, p, result["threshold"]) >= best - 0.01
    assert result["threshold_rule"].startswith("Youden J on the sites' validation splits")
    assert "3 site(s) (880 cases)" in result["fitted_on"]


def test_a_sites_aggregates_are_the_same_size_whatever_its_cases():
    rng = np.random.default_rng(1)
    small, large = site_statistics(*_site(rng, 10, 0.5), "binary"), site_statistics(*_site(rng, 900, 0.5), "binary")
    assert set(small) == {"n", "errors", "nll", "margin"}
    assert [len(small["nll"]), len(small["margin"][0])] == [len(large["nll"]), len(large["margin"][0])]
    assert len(small["nll"]) == len(TEMPERATURES)
    assert "margin" not in site_statistics(*_site(rng, 10, 0.5), "multiclass")


def test_no_validation_error_keeps_temperature_one():
    z, y = np.array([[0.0, 5.0], [0.0, -5.0], [0.0, 4.0]]), np.array([1, 0, 1])
    result = combine([site_statistics(z, y, "binary")], "binary")
    assert result["temperature"] == 1.0 and "no errors" in result["note"]


def test_the_selection_score_is_the_auc_of_the_pooled_cases_and_ranks_models_alike():
    from sklearn.metrics import roc_auc_score

    from medlens.tasks.classification.aggregates import selection_score

    rng = np.random.default_rng(2)
    sites = [_site(rng, 300, 0.05), _site(rng, 500, 0.9), _site(rng, 80, 0.5)]
    z, y = np.concatenate([s[0] for s in sites]), np.concatenate([s[1] for s in sites])
    score, what = selection_score([site_statistics(z, y, "binary") for z, y in sites], "binary")
    assert what == "validation AUC" and score == pytest.approx(roc_auc_score(y, z[:, 1]), abs=0.002)
    # a noisier model of the same cases scores lower: the pooled AUC, not each site's, is compared
    noisy = [(s[0] + np.stack([np.zeros(len(s[1])), rng.normal(0, 6.0, len(s[1]))], axis=1), s[1]) for s in sites]
    worse, _ = selection_score([site_statistics(z, y, "binary") for z, y in noisy], "binary")
    assert worse < score - 0.05
    three = [(np.c_[z, rng.normal(0, 1, len(y))], y) for z, y in sites]
    nll, what = selection_score([site_statistics(z, y, "multiclass") for z, y in three], "multiclass")
    assert what == "validation NLL (negated)" and -np.log(3) < nll < 0
