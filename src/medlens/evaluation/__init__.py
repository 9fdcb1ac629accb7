"""Evaluation of classifiers and segmenters: metrics with confidence intervals, calibration, baselines.

- :mod:`~medlens.evaluation.classification`: :func:`classification_metrics` (one JSON-ready
  dict with bootstrap intervals) and :func:`format_metrics_table`.
- :mod:`~medlens.evaluation.bootstrap`: :func:`bootstrap_ci`, row or patient (cluster) resampling.
- :mod:`~medlens.evaluation.calibration`: ECE, temperature scaling, Youden's threshold.
- :mod:`~medlens.evaluation.baseline`: MedMNIST's own metrics and the k-NN pixel baseline.
- :mod:`~medlens.evaluation.segmentation`: :func:`case_metrics` (per-class Dice, IoU, HD95 and MSD
  in mm, sizes in ml / mm², written-down empty-mask rules), :func:`summarize_segmentation`
  (bootstrap intervals) and :func:`format_segmentation_table`.
"""

from __future__ import annotations

from medlens.evaluation.baseline import knn_baseline, medmnist_metrics
from medlens.evaluation.bootstrap import bootstrap_ci
from medlens.evaluation.calibration import (apply_temperature, expected_calibration_error, fit_temperature,
                                            youden_threshold)
from medlens.evaluation.classification import classification_metrics, format_metrics_table
from medlens.evaluation.segmentation import case_metrics, format_segmentation_table, summarize_segmentation

__all__ = [
    "apply_temperature",
    "bootstrap_ci",
    "classification_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "format_metrics_table",
    "knn_baseline",
    "medmnist_metrics",
    "youden_threshold",
    "case_metrics",
    "format_segmentation_table",
    "summarize_segmentation",
]
