"""Self-supervised pretraining: an encoder learnt from images alone (SimCLR), for fine-tuning later.

=============  ==============================================================================
views.py       two augmented views of a batch: random resized crops, then medical augmentations
module.py      the LightningModule: encoder -> projection MLP -> NT-Xent (MONAI's ContrastiveLoss)
=============  ==============================================================================
"""
