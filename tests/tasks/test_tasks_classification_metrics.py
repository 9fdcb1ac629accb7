"""classification_metrics, bootstrap_ci and format_metrics_table on hand-worked examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medlens.errors import ConfigError
from medlens.evaluation import bootstrap_ci
from medlens.evaluation.bootstrap import group_index, resample_weights
from medlens.tasks.classification.metrics import auc_plan, classification_metrics, format_metrics_table, weighted_auc
from medlens.types import Task

# Binary: 4 negatives, 6 positives. At 0.5: TP 4 (0.9 0.8 0.7 0.55), FN 2 (0.3 0.45), FP 1 (0.6), TN 3.
# AUC: positives beat 4 + 4 + 2 + 4 + 3 + 3 = 20 of the 6 * 4 = 24 pairs.
BIN_Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
BIN_P1 = np.array([0.1, 0.4, 0.6, 0.2, 0.9, 0.8, 0.3, 0.7, 0.55, 0.45])
BIN_PROBS = np.stack([1 - BIN_P1, BIN_P1], axis=1)

# 3-class: rows = true class, columns = predicted: [[2, 1, 0], [0, 2, 1], [1, 0, 1]].
MC_Y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
MC_PROBS = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.1, 0.8, 0.1],
                     [0.2, 0.6, 0.2], [0.1, 0.3, 0.6], [0.2, 0.1, 0.7], [0.5, 0.1, 0.4]])

# Multi-label, 2 labels. Label 0: TP 2, FN 1, FP 0, TN 2, AUC 1. Label 1: TP 1, FN 1, FP 1, TN 2, AUC 5/6.
ML_Y = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0]])
ML_PROBS = np.array([[0.9, 0.2], [0.4, 0.7], [0.3, 0.6], [0.2, 0.4], [0.6, 0.1]])


def values(entry: dict) -> float:
    return entry["value"]


def test_binary_hand_example():
    m = classification_metrics(BIN_Y, BIN_PROBS, Task.BINARY, ["normal", "lesion"], n_boot=200)
    assert values(m["accuracy"]) == pytest.approx(0.7)
    assert values(m["balanced_accuracy"]) == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert values(m["auc"]) == pytest.approx(20 / 24)
    lesion, normal = m["per_class"]["lesion"], m["per_class"]["normal"]
    assert values(lesion["precision"]) == pytest.approx(4 / 5)
    assert values(lesion["recall"]) == pytest.approx(4 / 6)
    assert values(lesion["specificity"]) == pytest.approx(3 / 4)
    assert values(lesion["f1"]) == pytest.approx(8 / 11)
    assert values(normal["precision"]) == pytest.approx(3 / 5)   # negative predictive value
    assert values(normal["recall"]) == pytest.approx(3 / 4)
    assert values(normal["f1"]) == pytest.approx(6 / 9)
    assert (lesion["support"], normal["support"]) == (6, 4)
    assert m["confusion_matrix"]["counts"] == [[3, 1], [2, 4]]
    np.testing.assert_allclose(m["confusion_matrix"]["normalized"], [[0.75, 0.25], [1 / 3, 2 / 3]])
    assert (m["n"], m["n_groups"], m["threshold"], m["task"]) == (10, 10, 0.5, "binary")
    json.dumps(m)


def test_binary_threshold_moves_the_operating_point():
    m = classification_metrics(BIN_Y, BIN_PROBS, "binary", ["normal", "lesion"], threshold=0.3, n_boot=0)
    assert m["confusion_matrix"]["counts"] == [[2, 2], [0, 6]]
    assert values(m["accuracy"]) == pytest.approx(0.8)
    assert values(m["auc"]) == pytest.approx(20 / 24)        # threshold-free
    assert math.isnan(m["accuracy"]["ci_low"])                # n_boot=0: no interval


def test_multiclass_hand_example():
    m = classification_metrics(MC_Y, MC_PROBS, Task.MULTICLASS, ["a", "b", "c"], n_boot=100)
    assert m["confusion_matrix"]["counts"] == [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
    assert values(m["accuracy"]) == pytest.approx(5 / 8)
    assert values(m["balanced_accuracy"]) == pytest.approx(11 / 18)
    expected = {"a": (2 / 3, 2 / 3, 4 / 5, 2 / 3), "b": (2 / 3, 2 / 3, 4 / 5, 2 / 3), "c": (1 / 2, 1 / 2, 5 / 6, 1 / 2)}
    for name, (precision, recall, specificity, f1) in expected.items():
        row = m["per_class"][name]
        assert [values(row[k]) for k in ("precision", "recall", "specificity", "f1")] == pytest.approx(
            [precision, recall, specificity, f1])
    macro = roc_auc_score(MC_Y, MC_PROBS, multi_class="ovr", average="macro")
    assert values(m["auc"]) == pytest.approx(macro)
    assert values(m["per_class"]["a"]["auc"]) == pytest.approx(roc_auc_score(MC_Y == 0, MC_PROBS[:, 0]))
    assert m["threshold"] is None


def test_ordinal_is_scored_as_multiclass():
    a = classification_metrics(MC_Y, MC_PROBS, "ordinal", ["a", "b", "c"], n_boot=50)
    b = classification_metrics(MC_Y, MC_PROBS, "multiclass", ["a", "b", "c"], n_boot=50)
    assert a["accuracy"] == b["accuracy"] and a["per_class"] == b["per_class"]


def test_multilabel_per_label_values():
    m = classification_metrics(ML_Y, ML_PROBS, Task.MULTILABEL, ["effusion", "mass"], n_boot=50)
    eff, mass = m["per_class"]["effusion"], m["per_class"]["mass"]
    assert [values(eff[k]) for k in ("precision", "recall", "specificity", "f1", "auc")] == pytest.approx(
        [1.0, 2 / 3, 1.0, 0.8, 1.0])
    assert [values(mass[k]) for k in ("precision", "recall", "specificity", "f1", "auc")] == pytest.approx(
        [0.5, 0.5, 2 / 3, 0.5, 5 / 6])
    assert values(m["accuracy"]) == pytest.approx((4 / 5 + 3 / 5) / 2)
    assert values(m["balanced_accuracy"]) == pytest.approx(((2 / 3 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert values(m["auc"]) == pytest.approx((1 + 5 / 6) / 2)
    assert m["confusion_matrix"]["per_label"]["effusion"]["counts"] == [[2, 0], [1, 2]]
    assert m["confusion_matrix"]["per_label"]["mass"]["counts"] == [[2, 1], [1, 1]]


def test_multilabel_per_label_thresholds():
    m = classification_metrics(ML_Y, ML_PROBS, "multilabel", ["effusion", "mass"], threshold=[0.35, 0.5], n_boot=0)
    assert m["confusion_matrix"]["per_label"]["effusion"]["counts"] == [[2, 0], [0, 3]]
    assert m["threshold"] == [0.35, 0.5]


def test_absent_class_is_left_out_of_macro_auc_with_a_note():
    y = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],
                      [0.3, 0.4, 0.3], [0.5, 0.2, 0.3], [0.1, 0.6, 0.3]])
    m = classification_metrics(y, probs, "multiclass", ["a", "b", "c"], n_boot=100)
    assert math.isnan(values(m["per_class"]["c"]["auc"]))
    assert math.isnan(values(m["per_class"]["c"]["recall"]))
    expected = (roc_auc_score(y == 0, probs[:, 0]) + roc_auc_score(y == 1, probs[:, 1])) / 2
    assert values(m["auc"]) == pytest.approx(expected)
    assert any("'c' is absent from y_true" in note for note in m["notes"])
    assert m["per_class"]["c"]["support"] == 0


def test_cis_bracket_the_value_and_match_bootstrap_ci_with_the_same_seed():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, 300), 0, 1).round(2)   # rounding makes ties
    probs = np.stack([1 - p1, p1], axis=1)
    groups = rng.integers(0, 120, 300)
    m = classification_metrics(y, probs, "binary", ["neg", "pos"], groups=groups, n_boot=300, seed=3)
    for key in ("accuracy", "balanced_accuracy", "auc"):
        assert m[key]["ci_low"] < m[key]["value"] < m[key]["ci_high"]
    value, low, high = bootstrap_ci(lambda t, s: roc_auc_score(t, s), y, p1, groups=groups, n_boot=300, seed=3)
    assert (value, low, high) == pytest.approx((m["auc"]["value"], m["auc"]["ci_low"], m["auc"]["ci_high"]))
    assert m["n_groups"] == len(np.unique(groups)) and m["bootstrap"]["resampled"] == "group"


def test_weighted_auc_equals_sklearn_on_replicated_rows():
    rng = np.random.default_rng(2)
    truth, scores = rng.random(80) < 0.3, rng.integers(0, 10, 80) / 10     # many ties
    weights = rng.integers(0, 4, size=(5, 80))
    got = weighted_auc(weights.astype(float), auc_plan(truth, scores))
    for b in range(5):
        take = np.repeat(np.arange(80), weights[b])
        assert got[b] == pytest.approx(roc_auc_score(truth[take], scores[take]))


@pytest.mark.parametrize("probs, match", [
    (np.full((8, 2), 0.5), "class_names lists 3"),
    (np.c_[MC_PROBS[:, :2], np.full(8, np.nan)], "NaN"),
    (MC_PROBS * 10 - 3, "logits"),
    (MC_PROBS[:5], r"y_true has shape \(8,\) but probs has shape \(5, 3\)"),
])
def test_bad_inputs_are_refused(probs, match):
    with pytest.raises(ConfigError, match=match):
        classification_metrics(MC_Y, probs, "multiclass", ["a", "b", "c"], n_boot=0)


def test_bad_task_threshold_and_labels_are_refused():
    with pytest.raises(ConfigError, match=r"expects probs of shape \(N, 2\)"):
        classification_metrics(BIN_Y, BIN_P1[:, None], "binary", ["lesion"], n_boot=0)
    with pytest.raises(ConfigError, match="threshold` does not apply"):
        classification_metrics(MC_Y, MC_PROBS, "multiclass", ["a", "b", "c"], threshold=0.5)
    with pytest.raises(ConfigError, match="labels \\[3\\] outside 0..2"):
        classification_metrics(np.r_[MC_Y[:-1], 3], MC_PROBS, "multiclass", ["a", "b", "c"])
    with pytest.raises(ConfigError, match="must be distinct"):
        classification_metrics(MC_Y, MC_PROBS, "multiclass", ["a", "b", "a"])
    with pytest.raises(ConfigError, match="segmentation"):
        classification_metrics(MC_Y, MC_PROBS, "segmentation", ["a", "b", "c"])


def test_bootstrap_ci_width_of_a_proportion():
    x = np.zeros(400)
    x[:120] = 1                                    # p = 0.3
    value, low, high = bootstrap_ci(np.mean, x, n_boot=2000, seed=0)
    expected = 2 * 1.96 * math.sqrt(0.3 * 0.7 / 400)
    assert value == 0.3 and low < value < high
    assert (high - low) == pytest.approx(expected, rel=0.2)


def test_bootstrap_ci_is_deterministic_for_a_seed():
    x = np.random.default_rng(0).random(100)
    assert bootstrap_ci(np.mean, x, seed=5, n_boot=200) == bootstrap_ci(np.mean, x, seed=5, n_boot=200)
    assert bootstrap_ci(np.mean, x, seed=5, n_boot=200) != bootstrap_ci(np.mean, x, seed=6, n_boot=200)


def test_group_bootstrap_draws_whole_groups():
    groups = np.repeat(np.arange(50), 4)           # 50 patients with 4 images each

    def whole_groups_only(g):
        counts = np.bincount(g)
        return float(np.all(counts % 4 == 0))

    assert bootstrap_ci(whole_groups_only, groups, groups=groups, n_boot=200) == (1.0, 1.0, 1.0)
    assert bootstrap_ci(whole_groups_only, groups, n_boot=200)[1:] == (0.0, 0.0)


def test_group_bootstrap_widens_the_ci_of_duplicated_rows():
    x = np.repeat((np.random.default_rng(0).random(200) < 0.3).astype(float), 4)
    groups = np.repeat(np.arange(200), 4)
    _, low_rows, high_rows = bootstrap_ci(np.mean, x, n_boot=1000)
    _, low_groups, high_groups = bootstrap_ci(np.mean, x, groups=groups, n_boot=1000)
    assert (high_groups - low_groups) / (high_rows - low_rows) == pytest.approx(2.0, rel=0.2)


def test_bootstrap_skips_undefined_resamples():
    x = np.zeros(10)
    x[0] = 1                                       # ~35% of resamples miss the only positive

    def mean_of_positive_samples(a):
        if a.sum() == 0:
            raise ValueError("undefined without a positive")
        return a.mean()

    value, low, high = bootstrap_ci(mean_of_positive_samples, x, n_boot=500)
    assert value == 0.1 and low >= 0.1 and high > low


def test_bootstrap_ci_is_nan_when_most_resamples_are_undefined():
    x = np.array([1.0, 0.0, 0.0])                  # P(exactly one 1 in a resample) = 4/9 < 1/2
    value, low, high = bootstrap_ci(lambda a: a.mean() if a.sum() == 1 else float("nan"), x, n_boot=500)
    assert value == pytest.approx(1 / 3) and math.isnan(low) and math.isnan(high)


def test_unknown_patients_are_groups_of_their_own():
    index, n_groups = group_index(["p1", None, "p1", None, "p2"], 5)
    assert n_groups == 4 and index[0] == index[2] and index[1] != index[3]
    with pytest.raises(ConfigError, match="one group"):
        next(resample_weights(5, groups=["p1", "p2"]))


def test_format_metrics_table_shows_the_numbers():
    m = classification_metrics(BIN_Y, BIN_PROBS, "binary", ["normal", "lesion"], n_boot=200)
    table = format_metrics_table(m, title="PneumoniaMNIST test")
    assert table.startswith("PneumoniaMNIST test")
    acc = m["accuracy"]
    assert f"0.700 [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]" in table
    assert "0.833" in table                        # AUC 20/24
    lesion_row = next(line for line in table.splitlines() if line.strip().startswith("lesion"))
    assert lesion_row.split() == ["lesion", "0.800", "0.667", "0.750", "0.727", "0.833", "6"]
    assert "n/a" in format_metrics_table(classification_metrics(
        np.array([0, 0, 1, 1, 0, 1]), np.full((6, 3), 1 / 3), "multiclass", ["a", "b", "c"], n_boot=0))


def test_bootstrap_ci_with_no_resample_gives_the_value_and_a_nan_interval():
    from medlens.evaluation import bootstrap_ci

    value, low, high = bootstrap_ci(np.mean, np.arange(5.0), n_boot=0)
    assert value == 2.0 and math.isnan(low) and math.isnan(high)
