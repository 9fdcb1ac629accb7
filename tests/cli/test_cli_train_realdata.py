"""Real data in CI: a short PneumoniaMNIST training must reach test AUC >= 0.90 (official splits)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets")
PNEUMONIA = DATA / "medmnist" / "pneumoniamnist.npz"


@pytest.mark.realdata
@pytest.mark.skipif(not PNEUMONIA.exists(), reason=f"{PNEUMONIA} not present (set MEDLENS_DATA_DIR)")
def test_short_pneumoniamnist_training_reaches_test_auc_090(cli, tmp_path):
    run = tmp_path / "pneumonia"
    result = cli("train", PNEUMONIA, "--out", run, "--time-budget", "90s", "--set", "train.max_epochs=2",
                 "--no-progress")
    assert result.rc == 0, result.err
    assert "leakage.duplicates" in result.out  # the audit warns about the official files' cross-split copies
    result = cli("evaluate", run, "--bootstrap", "200", "--no-baseline")
    assert result.rc == 0, result.err
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["n_cases"] == 624
    assert doc["metrics"]["auc"]["value"] >= 0.90, doc["metrics"]["auc"]
    assert doc["medmnist_protocol"]["auc"] >= 0.90
