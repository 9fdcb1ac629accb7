"""Task-independent statistics: bootstrap confidence intervals and probability calibration.

- :mod:`~medlens.evaluation.bootstrap`: :func:`bootstrap_ci`, row or patient (cluster) resampling.
- :mod:`~medlens.evaluation.calibration`: ECE, temperature scaling, Youden's threshold.

Each task's own metrics live in its package: :mod:`medlens.tasks.classification.metrics` (accuracy,
AUC, per-class figures with CIs), :mod:`medlens.tasks.segmentation.metrics` (Dice, IoU, HD95, MSD
with the empty-mask rules).
"""

from __future__ import annotations

from medlens.evaluation.arrays import to_numpy
from medlens.evaluation.bootstrap import bootstrap_ci
from medlens.evaluation.calibration import (
                                            apply_temperature,
                                            expected_calibration_error,
                                            fit_temperature,
                                            youden_threshold,
)

__all__ = ["apply_temperature", "bootstrap_ci", "expected_calibration_error", "fit_temperature", "to_numpy",
           "youden_threshold"]
