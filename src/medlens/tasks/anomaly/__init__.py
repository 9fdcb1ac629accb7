"""Anomaly detection: one-class models trained on the normal cases of class-labelled data, 2D or 3D.

=============  ==============================================================================
plan.py        the plan rules: the classification planner's preprocessing and encoder, then the method,
               the memory size, the false-positive rate and the encoder's epochs
cases.py       the one-class rule: normal train fits, normal val thresholds, abnormal cases evaluate only
gaussian.py    the default method: a Gaussian of the encoder's deepest-stage statistics: images -> scores
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

Why ``gaussian`` is the default: validation AUROC (normal vs abnormal validation cases; everything fitted on
normal training images only; test never looked at), one SimCLR encoder per dataset scored by each candidate
(script and figures of 2026-12-03, CPU). PneumoniaMNIST: encoder of the default 600 s plan (41 epochs), 135
normal / 389 pneumonia. BreastMNIST: encoder of a 4-minute run on a loaded machine (3 epochs), 57 normal or
benign / 21 malignant (a small split: +/-0.1).

==============================================  =========  ======  =====
candidate                                       Pneumonia  Breast  mean
==============================================  =========  ======  =====
Gaussian, deepest stage, channel means + sds    0.952      0.808   0.880
Gaussian, all four stages summed                0.940      0.749   0.845
k-NN (k=1) on the pooled, L2-normalised output  0.901      0.773   0.837
PatchCore, map maximum (the former default)     0.333      0.818   0.576
PatchCore, map mean                             0.323      0.829   0.576
Gaussian, deepest stage, untrained encoder      0.831      0.755   0.793
pixel 1-NN (the issue's floor)                  0.767      0.756   0.762
==============================================  =========  ======  =====

PatchCore ranks pneumonia *below* normal: a diffuse opacity leaves each patch close to some normal patch, and
normal lungs' fine structure gives the largest patch distances; a whole-image statistic sees the change.
"""

from __future__ import annotations

from medlens.tasks.anomaly.task import AnomalyTask
from medlens.tasks.registry import TASKS, register_task

if "anomaly" not in TASKS:
    register_task(AnomalyTask())

__all__ = ["AnomalyTask"]
