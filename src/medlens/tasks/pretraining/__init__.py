"""Self-supervised pretraining: an encoder learnt from images alone (SimCLR), for fine-tuning later.

=============  ==============================================================================
plan.py        the plan rules: classification's preprocessing and network, a big batch, epochs for the budget
views.py       two augmented views of a batch: random resized crops, then medical augmentations
module.py      the LightningModule: encoder -> projection MLP -> NT-Xent (MONAI's ContrastiveLoss)
fit.py         the images of the train and val splits for the engine; ``pretrain.json``
evaluate.py    a k-nearest-neighbours probe on the frozen features, when the data have class labels
report.py      the report's pretraining sections and the comparison table
task.py        :class:`PretrainingTask`, the object the registry holds
=============  ==============================================================================
"""

from __future__ import annotations

from medlens.tasks.pretraining.task import PretrainingTask
from medlens.tasks.registry import TASKS, register_task

if "pretraining" not in TASKS:
    register_task(PretrainingTask())

__all__ = ["PretrainingTask"]
