"""Real data in CI: a short Decathlon Hippocampus training must segment both structures on held-out cases."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets")
HIPPOCAMPUS = DATA / "seg3d" / "Task04_Hippocampus"
# Mean Dice per class on the 52 held-out cases after 400 patch batches with AdamW (measured 0.843 / 0.846;
# nnU-Net's SGD needs more steps to start: 0.0 / 0.59 after the same 400, so a plan that fits fewer than 1000 takes
# AdamW itself; the test plans for the default budget, hence sets it; the 55-min SGD plan gives 0.898 / 0.878)
THRESHOLD = 0.80


@pytest.mark.realdata
@pytest.mark.skipif(not HIPPOCAMPUS.exists(), reason=f"{HIPPOCAMPUS} not present (set MEDLENS_DATA_DIR)")
def test_short_hippocampus_training_segments_both_structures(cli, tmp_path):
    run = tmp_path / "hippocampus"
    result = cli("train", HIPPOCAMPUS, "--out", run, "--set", "train.max_epochs=4", "--set",
                 "segment.iterations_per_epoch=100", "--set", "train.patience=50", "--set", "train.optimizer=adamw",
                 "--set", "train.lr=0.003", "--no-progress")
    assert result.rc == 0, result.err
    result = cli("evaluate", run, "--bootstrap", "200")
    assert result.rc == 0, result.err
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["n_cases"] == 52  # 20% of the 260 training cases, locked away before training
    for name in ("Anterior", "Posterior"):
        stats = doc["metrics"]["per_class"][name]
        assert stats["dice"]["value"] >= THRESHOLD, (name, stats["dice"])
        assert stats["missed"] == 0 and stats["hd95_mm"]["value"] < 10
