"""Detection: labelled boxes per image, 2D or 3D, with MONAI's RetinaNet.

=============  ==============================================================================
plan.py        the plan rules: grid, patch, pyramid levels and anchors from the box statistics, epochs
prepare.py     images to the plan's grid with their boxes; training patches (box-centred, flipped)
module.py      the LightningModule: RetinaNet's losses, whole-image validation by mAP@0.5
fit.py         images for the engine; the display threshold (best F1 on validation)
infer.py       one image: preprocess, whole or sliding windows, boxes back to the input's grid
metrics.py     COCO mAP, per-class AP, recall at K, FROC, by object size, with bootstrap CIs
evaluate.py    the split's images through the detector, scored; evidence for the report
report.py      the report's evaluation sections (tables, PR and FROC curves, galleries)
files.py       box tables (voxels, world mm), 3D Slicer markups, overlays
outputs.py     what ``Predictor``, the service and ``medlens predict`` return
explain.py     the detector's class-score map
task.py        :class:`DetectionTask`, the object the registry holds
=============  ==============================================================================
"""

from __future__ import annotations

from medlens.tasks.detection.task import DetectionTask
from medlens.tasks.registry import TASKS, register_task

if "detection" not in TASKS:
    register_task(DetectionTask())

__all__ = ["DetectionTask"]
