"""Post-training calibration: temperature and threshold from the validation split."""

from __future__ import annotations

import numpy as np
import torch

from medlens.config import Config, DatasetSection
from medlens.data.prepared import SplitData
from medlens.tasks.classification.calibrate import calibrate
from medlens.types import Case


def split(images: np.ndarray, labels: np.ndarray) -> SplitData:
    cases = [Case(case_id=f"c{i}", images=()) for i in range(len(labels))]
    return SplitData("val", cases, images.astype(np.float32), labels)


def scorer(scale: float) -> torch.nn.Module:
    """Logits (-scale * x, scale * x) from the single input value x."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2, bias=False))
    model[1].weight.data = torch.tensor([[-scale], [scale]])
    return model


CONFIG = Config(dataset=DatasetSection(task="binary", class_names=("neg", "pos"), spatial_dims=2))


def test_error_free_validation_never_sharpens_the_probabilities():
    x = np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0]).reshape(-1, 1, 1)
    result = calibrate(scorer(1.0), CONFIG, split(x, np.array([0, 0, 0, 1, 1, 1])))
    assert result["temperature"] == 1.0 and "not applied" in result["note"]
    assert abs(result["threshold"] - 0.5) < 1e-6  # the middle between the classes' scores


def test_overconfident_scores_with_errors_get_a_temperature_above_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    labels = (rng.random(400) < 1 / (1 + np.exp(-2 * x))).astype(np.int64)  # true logit gap 2x
    result = calibrate(scorer(5.0), CONFIG, split(x.reshape(-1, 1, 1), labels))  # model gap 10x
    assert 3.5 < result["temperature"] < 7.0 and "note" not in result
    assert result["threshold_rule"] == "Youden J on validation"
