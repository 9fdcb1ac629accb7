"""A deep ensemble: M classifiers of one architecture trained side by side, predictions averaged.

Lakshminarayanan et al., "Simple and Scalable Predictive Uncertainty Estimation using Deep
Ensembles", NeurIPS 2017: members that differ only in their random initialisation (and are
trained on the same data) make different errors, so their average is more accurate and better
calibrated than any one of them. It pays most on small datasets, where a single network's test
score swings with its seed.

>>> ensemble = Ensemble([build_classifier("resnet18_2d", ...) for _ in range(3)])
>>> ensemble(x)                 # (B, K): the members' mean logits
>>> ensemble.member_logits(x)   # (3, B, K): each member's own logits, one loss each in training

An ``Ensemble`` is one ``nn.Module`` with the :class:`~medlens.models.Classifier` interface, so
checkpoints, calibration, TorchScript / ONNX export and the service take it as they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from medlens.models.classifiers import Classifier


class Ensemble(nn.Module):
    """``members`` (same name, channels, classes and input size) behind one ``forward``.

    Attributes:
        members: the classifiers, ``nn.ModuleList`` (weights ``members.<i>.<name>``).
        name, spatial_dims, in_channels, num_classes, input_size: those of the members.
        cam_layer: the first member's layer (:func:`medlens.explain.compute_cams` averages the
            maps of every member's own ``cam_layer``).
    """

    def __init__(self, members: Sequence[Classifier]):
        super().__init__()
        if len(members) < 2 or len({(m.name, m.in_channels, m.num_classes, m.input_size) for m in members}) != 1:
            raise ValueError("an Ensemble needs two or more classifiers of one architecture, channels, classes "
                             "and input size")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.name, self.input_size, self.spatial_dims = first.name, first.input_size, first.spatial_dims
        self.in_channels, self.num_classes = first.in_channels, first.num_classes
        self.cam_layer = f"members.0.{first.cam_layer}"

    def member_logits(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """Every member's logits ``(M, B, num_classes)`` of images ``(B, C, *spatial)`` (and the members' other
        inputs, such as clinical values ``(B, F)``)."""
        return torch.stack([member(x, *inputs) for member in self.members])

    def forward(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """The members' mean logits ``(B, num_classes)``."""
        return self.member_logits(x, *inputs).mean(dim=0)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Every member's head (frozen-backbone transfer learning trains these only)."""
        return (p for member in self.members for p in member.head_parameters())

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return (p for member in self.members for p in member.backbone_parameters())
