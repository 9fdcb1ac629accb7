"""Anomaly detection: one-class models trained on the normal cases of class-labelled data, 2D or 3D.

=============  ==============================================================================
plan.py        the plan rules: the classification planner's preprocessing and encoder, then the method,
               the memory size, the false-positive rate and the encoder's epochs
cases.py       the one-class rule: normal train fits, normal val thresholds, abnormal cases evaluate only
models.py      PatchCore (encoder + memory bank) and MONAI's AutoEncoder: images -> anomaly maps
memory.py      greedy k-center coreset and chunked nearest-memory distances
module.py      the autoencoder's LightningModule (PatchCore's encoder trains by SimCLR, tasks/pretraining)
fit.py         normal images for the engine; the memory bank and the threshold once training ends
threshold.py   the threshold at a false-positive rate of the normal validation scores
infer.py       maps, scores and patch features over arrays of images
metrics.py     AUROC, AUPRC, sensitivity, specificity with bootstrap CIs; pixel-level AUROC
evaluate.py    a split scored, per-case CSV, evidence for the report
report.py      the report's evaluation section and the comparison table
outputs.py     what ``Predictor``, the service and ``medlens predict`` return
explain.py     the anomaly map as the explanation
task.py        :class:`AnomalyTask`, the object the registry holds
=============  ==============================================================================
"""

from __future__ import annotations

from medlens.tasks.anomaly.task import AnomalyTask
from medlens.tasks.registry import TASKS, register_task

if "anomaly" not in TASKS:
    register_task(AnomalyTask())

__all__ = ["AnomalyTask"]
