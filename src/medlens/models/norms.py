"""Which normalisation a network's layers use: batch norm as built, or group norm in its place.

>>> net = with_norm(build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(28, 28)), "group")

Group norm normalises each example over groups of its own channels, so an example's output (and gradient)
no longer depends on the rest of its batch: what DP-SGD's per-example gradients need, and what
``model.norm: group`` in a plan asks for. The replacement is Opacus's (``ModuleValidator.fix``):
``GroupNorm(gcd(32, C), C)`` with the batch norm's ``affine``, under the same module name, so a state dict
saved from a group-norm network loads into the network this builds.
"""

from __future__ import annotations

import math

from torch import nn

NORMS = ("batch", "group")


def with_norm(model: nn.Module, norm: str) -> nn.Module:
    """``model`` with every batch-norm layer replaced by group norm when ``norm == "group"`` (in place; returned).

    Args:
        model: any network.
        norm: ``"batch"`` (unchanged) or ``"group"``.

    Raises:
        ValueError: another ``norm``.
    """
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}: choose one of {', '.join(NORMS)}")
    if norm == "batch":
        return model
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                groups = math.gcd(32, child.num_features)
                setattr(module, child_name, nn.GroupNorm(groups, child.num_features, affine=child.affine))
    return model
