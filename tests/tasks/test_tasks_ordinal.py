"""Ordered grades: the cumulative-link loss, kappa and grade error, and the plan that picks them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from medlens.errors import ConfigError
from medlens.tasks.classification.metrics import (
    classification_metrics,
    format_metrics_table,
    ordinal_metrics,
    quick_qwk,
    weighted_kappa,
)
from medlens.tasks.classification.plan import plan_classification
from medlens.tasks.losses import build_loss
from tests.tasks.test_tasks_classification_plan import card

# 3 grades, rows = true grade, columns = predicted: [[2, 1, 0], [0, 2, 1], [1, 0, 1]] (8 cases).
# Quadratic weights (i - j)^2 / 4: observed sum 0.25 + 0.25 + 1 = 1.5; margins (3, 3, 2) both ways, so the
# chance-expected sum is (0.25*9 + 6 + 0.25*9 + 0.25*6 + 6 + 0.25*6) / 8 = 19.5 / 8: kappa 1 - 1.5 * 8 / 19.5 = 5/13.
# Absolute errors 1 + 1 + 2 over 8 cases: MAE 0.5.
GRADES_Y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
GRADES_PRED = np.array([0, 0, 1, 1, 1, 2, 2, 0])
GRADES_PROBS = np.eye(3)[GRADES_PRED] * 0.7 + 0.1  # each row's argmax is its predicted grade


# ---- metrics ----------------------------------------------------------------------------------

def test_kappa_and_grade_error_of_a_hand_worked_confusion():
    m = ordinal_metrics(GRADES_Y, GRADES_PROBS, n_boot=0)

    assert m["qwk"]["value"] == pytest.approx(5 / 13)
    assert m["mae"]["value"] == pytest.approx(0.5)
    assert math.isnan(m["qwk"]["ci_low"]) and math.isnan(m["mae"]["ci_high"])  # no resamples, no interval
    confusion = np.array([[[2, 1, 0], [0, 2, 1], [1, 0, 1]]], dtype=float)
    assert weighted_kappa(confusion)[0] == pytest.approx(5 / 13)


def test_perfect_and_chance_agreement():
    assert weighted_kappa(np.diag([3.0, 2.0, 4.0])[None])[0] == pytest.approx(1.0)
    assert weighted_kappa(np.full((1, 3, 3), 2.0))[0] == pytest.approx(0.0)  # prediction independent of truth
    assert math.isnan(weighted_kappa(np.array([[[5.0, 0], [0, 0]]]))[0])  # one grade everywhere: undefined


def test_weighted_counts_match_scikit_learn_with_sample_weights():
    rng = np.random.default_rng(3)
    y, pred, w = rng.integers(0, 5, 200), rng.integers(0, 5, 200), rng.integers(0, 4, 200)
    confusion = np.zeros((1, 5, 5))
    np.add.at(confusion[0], (y, pred), w)
    expected = cohen_kappa_score(y, pred, weights="quadratic", sample_weight=w)
    assert weighted_kappa(confusion)[0] == pytest.approx(expected)


def test_ordinal_metrics_sit_beside_accuracy_with_patient_intervals():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 120)
    probs = rng.dirichlet(np.ones(4), 120) + 2 * np.eye(4)[np.clip(y + rng.integers(-1, 2, 120), 0, 3)]
    probs /= probs.sum(axis=1, keepdims=True)
    patients = np.repeat(np.arange(60), 2)

    m = classification_metrics(y, probs, "ordinal", ["0", "0.5", "1", "2"], groups=patients, n_boot=200)

    pred = probs.argmax(axis=1)
    assert m["qwk"]["value"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    assert m["mae"]["value"] == pytest.approx(np.abs(y - pred).mean())
    assert m["accuracy"]["value"] == pytest.approx((y == pred).mean())  # the grade accuracy scores
    for key in ("qwk", "mae"):
        assert m[key]["ci_low"] < m[key]["value"] < m[key]["ci_high"]
    assert m["bootstrap"]["resampled"] == "group" and "argmax" in m["grade_rule"]
    assert "quadratic kappa" in format_metrics_table(m)
    assert "qwk" not in classification_metrics(y, probs, "multiclass", list("abcd"), n_boot=0)
    json.dumps(m)


def test_report_table_shows_kappa_and_grade_error_for_grades_only():
    from medlens.report.document import Table
    from medlens.tasks.classification.report import metrics_section

    def headline(task: str) -> tuple[dict[str, list[str]], str]:
        metrics = classification_metrics(GRADES_Y, GRADES_PROBS, task, ["0", "1", "2"], n_boot=50)
        section = metrics_section({"split": "test", "n_cases": 8, "metrics": metrics, "task": task})
        table = next(b for b in section.blocks if isinstance(b, Table) and b.key == "metrics")
        return {row[0]: row[1:] for row in table.rows}, " ".join(b for b in section.blocks if isinstance(b, str))

    rows, text = headline("ordinal")
    assert rows["quadratic weighted kappa"][0] == "0.3846"
    assert rows["mean absolute grade error (grade steps)"][0] == "0.5000"
    assert "kappa and grade error score the argmax" in text
    rows, _ = headline("multiclass")
    assert "quadratic weighted kappa" not in rows and "accuracy" in rows


def test_validation_kappa_matches_scikit_learn():
    rng = np.random.default_rng(1)
    y, probs = rng.integers(0, 5, 50), rng.dirichlet(np.ones(5), 50)
    assert quick_qwk(y, probs) == pytest.approx(cohen_kappa_score(y, probs.argmax(axis=1), weights="quadratic"))


def test_ordinal_metrics_refuse_labels_outside_the_grades():
    with pytest.raises(ConfigError, match=r"labels \[3\] outside 0..2"):
        ordinal_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3), n_boot=0)


# ---- loss -------------------------------------------------------------------------------------

def test_ordinal_loss_by_hand():
    loss = build_loss("ordinal_bce", targets="index")
    uniform = torch.zeros(2, 3)  # P(y > 0) = 2/3, P(y > 1) = 1/3

    # grade 1: "above 0" true (-log 2/3), "above 1" false (-log 2/3); grade 0: -log 1/3 - log 2/3
    assert loss(uniform[:1], torch.tensor([1])).item() == pytest.approx(-2 * math.log(2 / 3), rel=1e-5)
    assert loss(uniform[:1], torch.tensor([0])).item() == pytest.approx(-math.log(1 / 3) - math.log(2 / 3), rel=1e-5)
    assert loss(torch.tensor([[30.0, 0, 0], [0, 0, 30.0]]), torch.tensor([0, 2])).item() == pytest.approx(0, abs=1e-6)


def test_ordinal_loss_is_cross_entropy_for_two_grades():
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, -1.0]]), torch.tensor([0, 1, 1])
    expected = torch.nn.functional.cross_entropy(logits, target)
    assert build_loss("ordinal_bce", targets="index")(logits, target).item() == pytest.approx(expected.item())


def test_ordinal_loss_costs_more_the_further_the_grade():
    loss = build_loss("ordinal_bce", targets="index")
    one_off, two_off = torch.tensor([[0.0, 5.0, 0.0]]), torch.tensor([[0.0, 0.0, 5.0]])
    target = torch.tensor([0])

    assert loss(two_off, target) > loss(one_off, target) + 1.0
    ce = torch.nn.functional.cross_entropy
    assert ce(two_off, target).item() == pytest.approx(ce(one_off, target).item())  # what CE cannot tell apart


def test_ordinal_loss_gradient_moves_mass_towards_the_true_grade():
    logits = torch.zeros(1, 3, requires_grad=True)
    build_loss("ordinal_bce", targets="index")(logits, torch.tensor([1])).backward()

    # loss = -log P(y > 0) - log P(y <= 1); d/dz_j = 2 p_j - a_j - b_j with a, b the softmax over grades {1, 2}
    # and {0, 1}: at uniform logits 2/3 - (0, 1/2, 1/2) - (1/2, 1/2, 0) = (1/6, -1/3, 1/6)
    np.testing.assert_allclose(logits.grad[0].numpy(), [1 / 6, -1 / 3, 1 / 6], rtol=1e-5)
    stepped = torch.softmax(logits.detach() - 0.5 * logits.grad, dim=1)[0]
    assert stepped[1] > 1 / 3 > stepped[0]


def test_ordinal_loss_smooths_its_binary_targets():
    loss = build_loss("ordinal_bce", targets="index", label_smoothing=0.2)
    perfect = torch.tensor([[30.0, 0.0, 0.0]])
    assert loss(perfect, torch.tensor([0])).item() > 1.0  # targets 0.1, not 0: a sure answer is penalised


def test_ordinal_loss_refuses_a_single_grade():
    with pytest.raises(ConfigError, match="two or more grades"):
        build_loss("ordinal_bce", targets="index")(torch.zeros(2, 1), torch.tensor([0, 0]))


# ---- plan -------------------------------------------------------------------------------------

def test_plan_races_the_ordinal_loss_against_cross_entropy():
    grades = card(task="ordinal", class_names=("0", "1", "2", "3"), train={"0": 40, "1": 30, "2": 20, "3": 10})

    config, reasons = plan_classification(grades, time_budget_s=120.0, device="cpu", probe=False)

    assert config.train.loss == "ordinal_bce"
    assert config.train.race == ("train.loss=ce",) and config.train.race_share == pytest.approx(0.2)
    assert "P(grade > k)" in reasons["train.loss"] and "skewed 4.0:1" in reasons["train.loss"]
    assert "cross-entropy" in reasons["train.race"] and "20%" in reasons["train.race_share"]
    assert config.train.monitor == "val_qwk" and "kappa" in reasons["train.monitor"]


def test_plan_races_nothing_for_unordered_classes():
    config, _ = plan_classification(card(task="multiclass", class_names=("a", "b", "c"),
                                         train={"a": 10, "b": 10, "c": 10}),
                                    time_budget_s=120.0, device="cpu", probe=False)
    assert (config.train.loss, config.train.race, config.train.race_share) == ("ce", (), 0.0)


# ---- a run ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.e2e
def test_an_ordinal_run_reports_kappa_and_grade_error_with_intervals(tmp_path):
    from PIL import Image

    from tests.conftest import medlens_in_process

    rng = np.random.default_rng(0)
    for i in range(60):  # brightness rises with the grade
        grade = i % 3
        folder = tmp_path / "grades" / str(grade)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.normal(60 + 60 * grade, 15, (16, 16)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"case{i:02d}.png")
    run = tmp_path / "run"

    medlens_in_process("train", tmp_path / "grades", "--out", run, "--no-progress", "--set", "dataset.task=ordinal",
                       "--set", "train.loss=ordinal_bce", "--set", "train.max_epochs=2", "--set", "model.members=1",
                       "--set", "train.monitor=val_qwk")
    printed = medlens_in_process("evaluate", run, "--bootstrap", "50", "--no-baseline")

    epochs = (run / "metrics.csv").read_text().splitlines()
    assert "val_qwk" in epochs[0].split(",") and len(epochs) == 3  # the kappa the checkpoint was chosen by
    assert json.loads((run / "run.json").read_text())["monitor"] == "val_qwk"
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    for key in ("qwk", "mae"):
        entry = metrics[key]
        assert all(math.isfinite(entry[k]) for k in ("value", "ci_low", "ci_high"))
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    assert "argmax" in metrics["grade_rule"] and metrics["task"] == "ordinal"
    assert "quadratic kappa" in printed and "mean abs. error" in printed
    assert "quadratic weighted kappa" in (run / "report.md").read_text()


def test_kappa_as_monitor_is_refused_for_unordered_classes():
    from dataclasses import replace

    from medlens.errors import ConfigError
    from medlens.tasks.classification.task import ClassificationTask

    config, _ = plan_classification(card(task="multiclass", class_names=("a", "b", "c"),
                                         train={"a": 10, "b": 10, "c": 10}),
                                    time_budget_s=120.0, device="cpu", probe=False)
    with pytest.raises(ConfigError, match="kappa is logged for ordinal grades.*use val_auc"):
        ClassificationTask().check(replace(config, train=replace(config.train, monitor="val_qwk")))
