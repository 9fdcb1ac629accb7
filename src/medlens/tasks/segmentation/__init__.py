"""Segmentation: a label map per image, 2D or 3D, after nnU-Net's rules.

=============  ==============================================================================
plan.py        the plan rules: target spacing, patch, DynUNet topology, normalisation, epochs
module.py      the LightningModule: Dice + CE with deep supervision, whole-case validation
fit.py         patches and volumes for the engine; the post-processing hook (keep-largest, chosen on val)
postprocess.py keep-largest-connected-component, and choosing it per class on validation
infer.py       one image: preprocess, sliding windows, back to the input's grid
evaluate.py    Dice / IoU / HD95 / MSD / sizes per case with CIs; the overlays' cases
metrics.py     the segmentation metrics and their empty-mask rules
report.py      the report's evaluation sections
outputs.py     what ``Predictor``, the service and ``medlens predict`` return
explain.py     region Grad-CAM of a predicted class
task.py        :class:`SegmentationTask`, the object the registry holds
=============  ==============================================================================
"""

from __future__ import annotations

from medlens.tasks.registry import TASKS, register_task
from medlens.tasks.segmentation.task import SegmentationTask

if "segmentation" not in TASKS:
    register_task(SegmentationTask())

__all__ = ["SegmentationTask"]
