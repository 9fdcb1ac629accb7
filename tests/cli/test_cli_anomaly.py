"""``medlens train --task anomaly`` on the demo chest images (lesions are bright blobs): resume after SIGKILL."""

from __future__ import annotations

import pytest


@pytest.mark.e2e
def test_anomaly_resume_after_kill_gives_the_same_encoder_and_memory(kill_and_resume, demo_dir):
    # the memory bank is built after training from the best weights, so equal weights.pt means equal memory too
    kill_and_resume(["train", demo_dir / "classification.csv", "--task", "anomaly", "--normal", "normal",
                     "--set", "train.max_epochs=3", "--set", "train.patience=50", "--set", "anomaly.memory_size=300",
                     "--set", "data.input_size=[32,32]", "--no-progress"], "val_loss", 2)
