"""expected_calibration_error, temperature scaling and Youden's threshold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax

from medlens.errors import ConfigError, DatasetError
from medlens.evaluation import apply_temperature, expected_calibration_error, fit_temperature, youden_threshold


def sample_classes(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's probabilities."""
    return (rng.random((len(probs), 1)) > np.cumsum(probs, axis=1)).sum(axis=1)


def test_ece_hand_example_three_bins():
    # Bins (0, 1/3], (1/3, 2/3], (2/3, 1]. Top bin: confidences 0.9 (right), 0.8 (wrong): |0.5 - 0.85| = 0.35.
    # Middle bin: 0.6 (right), 0.5 (wrong), 0.4 (right): |2/3 - 0.5| = 1/6. ECE = (2 * 0.35 + 3 / 6) / 5.
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    y = np.array([0, 1, 1, 1, 2])
    assert expected_calibration_error(y, probs, n_bins=3) == pytest.approx(0.24)


def test_ece_multilabel_is_the_mean_of_per_label_ece():
    # Label 0, bins (0, .5], (.5, 1]: |0.5 - 0.3| and |1 - 0.8| -> 0.2. Label 1: |0 - 0.1|, |0.5 - 0.6| -> 0.1.
    probs = np.array([[0.2, 0.1], [0.4, 0.1], [0.7, 0.6], [0.9, 0.6]])
    y = np.array([[0, 0], [1, 0], [1, 1], [1, 0]])
    assert expected_calibration_error(y, probs, n_bins=2) == pytest.approx(0.15)


def test_ece_of_calibrated_probabilities_is_small():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.5, 0.5, 0.5], size=20000)
    assert expected_calibration_error(sample_classes(probs, rng), probs) < 0.02
    p = rng.random((20000, 3))
    assert expected_calibration_error((rng.random(p.shape) < p).astype(int), p) < 0.02


def test_ece_refuses_mismatched_shapes():
    with pytest.raises(ConfigError, match=r"got y_true \(3,\) and probs \(4, 2\)"):
        expected_calibration_error(np.zeros(3, int), np.full((4, 2), 0.5))


def test_temperature_recovers_overconfidence_and_lowers_ece():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(6000, 4))
    y = sample_classes(softmax(logits, axis=1), rng)
    overconfident = 3 * logits
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(3, rel=0.1)
    before = expected_calibration_error(y, softmax(overconfident, axis=1))
    after = expected_calibration_error(y, apply_temperature(overconfident, t))
    assert after < before / 2
    np.testing.assert_array_equal(apply_temperature(overconfident, t).argmax(1), overconfident.argmax(1))


def test_temperature_multilabel_and_binary():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=(4000, 3))
    y = (rng.random(logits.shape) < expit(logits)).astype(int)
    assert fit_temperature(logits / 2, y, multilabel=True) == pytest.approx(0.5, rel=0.1)
    np.testing.assert_allclose(apply_temperature(logits, 2.0, multilabel=True), expit(logits / 2))
    binary = np.stack([np.zeros(4000), 3 * logits[:, 0]], axis=1)   # 2 softmax columns
    assert fit_temperature(binary, y[:, 0]) == pytest.approx(3, rel=0.1)


def test_temperature_degenerate_input_gives_one_and_bad_input_is_refused():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    assert fit_temperature(np.ones((5, 3)), np.array([0, 1, 2, 0, 1])) == 1.0
    assert 0.05 <= fit_temperature(np.array([[0.0, 9.0], [0.0, 8.0]]), np.array([1, 1])) <= 20
    with pytest.raises(ConfigError, match="NaN"):
        fit_temperature(np.array([[0.0, np.nan]]), np.array([1]))
    with pytest.raises(ConfigError, match=r"got y_true \(3,\) and logits \(2, 2\)"):
        fit_temperature(np.zeros((2, 2)), np.zeros(3, int))
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        apply_temperature(np.zeros((2, 2)), 0)


def test_youden_threshold_hand_example():
    # ROC points: p >= 0.7 gives TPR 2/3, FPR 0 (J = 0.667); p >= 0.35 gives TPR 1, FPR 1/4 (J = 0.75).
    y = np.array([0, 0, 1, 1, 0, 1, 0])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.7, 0.3])
    # the best ROC threshold is 0.35; the next score below it is 0.3, so the middle of the gap: 0.325
    assert youden_threshold(y, p) == pytest.approx(0.325)
    # perfectly separated scores: the middle between the classes, not the edge of the positives
    assert youden_threshold([0, 1], [0.2, 0.9]) == pytest.approx(0.55)
    assert youden_threshold([0, 0, 1, 1], [0.0, 0.01, 0.999, 1.0]) == pytest.approx(0.5045)


def test_youden_threshold_needs_both_classes():
    with pytest.raises(DatasetError, match="needs both classes"):
        youden_threshold(np.ones(4, int), np.linspace(0, 1, 4))
    with pytest.raises(ConfigError, match="probs\\[:, 1\\]"):
        youden_threshold(np.array([0, 1]), np.full((2, 2), 0.5))
