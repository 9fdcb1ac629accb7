"""Anomaly detection: one-class models trained on the normal cases of class-labelled data, 2D or 3D.

=============  ==============================================================================
plan.py        the plan rules: the classification planner's preprocessing (8-bit images z-scored per image)
               and encoder, then the method, the memory size, the false-positive rate and the encoder's epochs
cases.py       the one-class rule: normal train fits, normal val thresholds, abnormal cases evaluate only
gaussian.py    the default method: a Gaussian of the encoder's deepest-stage statistics and the nearest
               normal image: images -> scores
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

Why ``gaussian_knn`` on per-image z-scores is the default: validation AUROC (normal vs abnormal validation
cases; everything fitted on normal training images only), one SimCLR encoder per dataset and normalisation
trained by ``medlens train DATA --task anomaly --time-budget 5m --set data.normalization=...`` (69-100 epochs),
each scored by every candidate (2026-12-04, CPU; ``python benchmarks/anomaly_candidates.py RUN...``).
PneumoniaMNIST: 135 normal / 389 pneumonia; BreastMNIST: 57 normal or benign / 21 malignant (a small split:
+/-0.1).

==============================================  ==================  ==================
candidate                                       fixed 0..255 scale  z-score per image
                                                Pneumonia / Breast  Pneumonia / Breast
==============================================  ==================  ==================
gaussian_knn (sum of the two terms below)       0.923 / 0.758       **0.957 / 0.743**
Gaussian, deepest stage, channel means + sds    0.924 / 0.609       0.957 / 0.652
nearest normal image, pooled, L2-normalised     0.801 / 0.839       0.813 / 0.771
pixel 1-NN (the issue's floor)                  0.767 / 0.756       0.942 / 0.649
==============================================  ==================  ==================

gaussian_knn has the best mean in both columns (0.841 and 0.850) and no dataset far below the best single
method; the per-image z-score has the better mean, and a one-class model should not see an acquisition's
brightness and contrast. A test figure was seen before this choice, in a throwaway script (no project command
reproduces it): pixel 1-NN on per-image z-scores scored well above the issue's floor on PneumoniaMNIST's test
split.

An earlier comparison (2026-12-03, weaker encoders: 41 and 3 epochs) had made ``gaussian`` the default, and
showed PatchCore ranking pneumonia *below* normal (0.333): a diffuse opacity leaves each patch close to some
normal patch, and normal lungs' fine structure gives the largest patch distances; a whole-image statistic sees
the change.
"""

from __future__ import annotations

from medlens.tasks.anomaly.task import AnomalyTask
from medlens.tasks.registry import TASKS, register_task

if "anomaly" not in TASKS:
    register_task(AnomalyTask())

__all__ = ["AnomalyTask"]
