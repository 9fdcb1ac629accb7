"""The time budget is a hard stop: the planners never plan more epochs than fit, and training stops at the
budget mid-epoch if need be, validated and checkpointed, with ``run.json`` and the report saying so."""

from __future__ import annotations

import json
import time

import pytest
import torch

from medlens.engine.callbacks import TimeBudget
from medlens.engine.train import train
from medlens.report.run_sections import budget_line
from medlens.tasks import load_model
from medlens.tasks.planning import epochs_in_budget

# 128x128 inputs through a full-width ResNet-18, one image a step: each step takes ~40 ms or more on a CPU, so
# the ~100 training images of the demo set make an epoch at least twice as long as the budget
SLOW_STEPS = ["data.input_size=[128, 128]", "model.width=1.0", "model.members=1", "train.batch_size=1",
              "train.max_epochs=4", "train.patience=50", "train.ema_fraction=0"]
BUDGET_S = 1.5


# ---- planning -------------------------------------------------------------------------------------------------

def test_epochs_in_budget_plans_what_fits_with_no_floor_above_one():
    assert epochs_in_budget(100.0, 10.0, most=100) == (8, "8 epochs fit 85% of the 100 s budget (1..100)")
    assert epochs_in_budget(100.0, 0.5, most=100)[0] == 100  # 170 fit; capped
    assert epochs_in_budget(15.0, 6.0, most=100)[0] == 2  # the old floor of 3 would have run 18+ s
    assert epochs_in_budget(10.0, 8.0, most=100, share=0.9)[0] == 1


def test_epochs_in_budget_plans_one_epoch_cut_short_when_none_fits():
    epochs, why = epochs_in_budget(10.0, 34.0, most=100)

    assert epochs == 1
    assert "not even one epoch fits 85% of the 10 s budget" in why
    assert "stops it mid-epoch (after about 25% of its steps)" in why  # 0.85 * 10 / 34


# ---- the clock ------------------------------------------------------------------------------------------------

def test_a_resumed_run_counts_the_time_its_checkpoint_had_used():
    clock = TimeBudget(60.0, started=time.perf_counter() - 2.0)  # this process began its work 2 s ago

    clock.load_state_dict({"used_s": 50.0, "epochs_completed": 4})  # what the checkpoint recorded

    assert clock.used_s() == pytest.approx(52.0, abs=0.5)
    assert clock.epochs_completed == 4
    assert clock.state_dict()["used_s"] == pytest.approx(52.0, abs=0.5)
    assert clock.summary()["stopped"] is False and clock.summary()["stopped_at_s"] is None


# ---- training -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cut_run(demo_dir, tmp_path_factory):
    """The demo classifier with a budget shorter than its first epoch; returns (run folder, printed lines)."""
    printed: list[str] = []
    run = train(demo_dir / "classification.csv", out=tmp_path_factory.mktemp("budget") / "run", overrides=SLOW_STEPS,
                time_budget_s=BUDGET_S, progress_bar=False, log=printed.append)
    return run, printed


@pytest.mark.e2e
def test_a_budget_shorter_than_one_epoch_stops_mid_epoch_and_says_so(cut_run):
    run, printed = cut_run
    info = json.loads(run.info.read_text())
    rows = run.read_epoch_rows()

    assert info["status"] == "finished" and info["stopped_by"] == "time_budget"
    budget = info["budget"]
    assert budget["mid_epoch"] is True and budget["epochs_completed"] == 0 and budget["stopped"] is True
    # at the end of the first step past the budget (how far past depends on the CPU's load), then the validation
    # and the checkpoints of the cut epoch
    assert BUDGET_S <= budget["stopped_at_s"] <= budget["used_s"]
    assert len(rows) == 1 and rows[0]["val_auc"] != ""  # the cut epoch was validated
    assert any("stopped training mid-epoch, after 0 whole epoch(s)" in line for line in printed)


@pytest.mark.e2e
def test_the_cut_run_keeps_a_checkpoint_and_weights_that_load(cut_run):
    run, _ = cut_run
    info = json.loads(run.info.read_text())
    config = run.read_config()

    assert info["best_checkpoint"] == "best.ckpt" and run.best_checkpoint.is_file()  # none existed before the stop
    assert info["best_score"] is not None
    model = load_model(run, config)
    with torch.no_grad():
        logits = model(torch.rand(2, config.data.channels, *config.data.input_size))
    assert logits.shape == (2, len(config.dataset.class_names)) and torch.isfinite(logits).all()


@pytest.mark.e2e
def test_the_report_says_the_budget_cut_an_epoch(cut_run):
    run, _ = cut_run

    line = budget_line(json.loads(run.info.read_text()))

    assert line.startswith(f"The {BUDGET_S:g} s time budget stopped training mid-epoch")
    assert "0 whole epoch(s)" in line
    assert "mid-epoch" in (run.root / "report.md").read_text()


def test_the_report_says_nothing_of_a_budget_that_did_not_stop_training():
    assert budget_line({"budget": {"budget_s": 60, "used_s": 20.0, "stopped": False, "stopped_at_s": None,
                                   "mid_epoch": False, "epochs_completed": 5}}) == ""
    assert budget_line({}) == ""  # runs written before the budget was recorded
    assert budget_line({"budget": {"budget_s": 60, "used_s": 60.4, "stopped": True, "stopped_at_s": 60.1,
                                   "mid_epoch": False, "epochs_completed": 5}}).startswith(
        "The 60 s time budget stopped training after 5 whole epoch(s)")
