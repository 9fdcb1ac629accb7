"""Classification: one class per image (binary, multi-class, ordinal) or several labels (multi-label).

=============  ==============================================================================
plan.py        the plan rules: input size, normalisation, network, imbalance, epochs that fit the budget
module.py      the LightningModule: loss, batch augmentation, ensembles, transfer-learning schedule
fit.py         data and loaders for the engine; the calibration hook (temperature, threshold)
calibrate.py   temperature scaling and the Youden threshold on validation
ood.py         the out-of-distribution guard: input and stage statistics, Mahalanobis per block, threshold, file
evaluate.py    metrics with CIs, calibration, the MedMNIST protocol, the k-NN baseline, Grad-CAM gallery
metrics.py     the classification metrics with bootstrap CIs; baseline.py the k-NN baseline
report.py      the report's evaluation sections (plots.py draws ROC / PR, confusion, reliability)
predict.py     one image: preprocess, score, calibrate, decide
outputs.py     what ``Predictor``, the service and ``medlens predict`` return
explain.py     Grad-CAM of a class and the randomisation test
task.py        :class:`ClassificationTask`, the object the registry holds
=============  ==============================================================================
"""

from __future__ import annotations

from medlens.tasks.classification.task import ClassificationTask
from medlens.tasks.registry import TASKS, register_task

if "classification" not in TASKS:
    register_task(ClassificationTask())

__all__ = ["ClassificationTask"]
