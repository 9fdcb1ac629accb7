"""Multi-view / clinical fusion: several images of a case, and its clinical values, into one classifier.

>>> model = build_fusion_classifier("seedcnn_2d", in_channels=3, views=3, num_classes=2, input_size=(28, 28),
...                                 clinical_absent=encoder.absent_vector(config.clinical))
>>> logits = model(torch.zeros(8, 3, 28, 28), clinical)   # x (B, V*C, *S), clinical (B, Fc) -> (8, 2)

Each of the ``V`` views (channels ``[v*C, (v+1)*C)`` of the input) goes through a registry backbone
(:data:`medlens.models.CLASSIFIERS`), one shared by every view or one per view, giving features
``(B, V, F)``. The views are pooled (concatenation with a presence flag per view, or attention: a
learnt score per view, softmax over the views the case has), the clinical vector joins (an MLP
embedding concatenated before the fusion layer, or FiLM: a scale and shift of the fused features,
Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018), and the same
``Dropout -> Linear`` head as :class:`~medlens.models.Classifier` gives the logits. ``residual`` is the
concatenation plus a linear map of the clinical values alone added to the logits (``clinical_logits``, set
from a logistic regression fitted on the training split and kept fixed) with the head starting at zero: the
network starts as that regression, and the images (and their interactions with the clinical values) learn
what it leaves, the way a radiologist reads images beside a risk score. For few cases, where an image
network alone barely learns. A fusion layer
(``Linear -> ReLU``) sits between the pooled features and the head so that the logits can depend on
an interaction of the views and the clinical values, not only on a sum of each source's evidence.

A view whose channels are all NaN is missing (that is how a case without it travels through the
loaders): its pixels are set to 0 before the encoder and its features take no part in the fusion.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import nn

from medlens.errors import ConfigError
from medlens.models.classifiers import Backbone, _is_whole, build_classifier

ViewEncoder = Literal["shared", "separate"]
ViewPooling = Literal["concat", "attention"]
ClinicalFusion = Literal["concat", "film", "residual"]

ENCODERS, POOLINGS, CLINICAL_FUSIONS = ("shared", "separate"), ("concat", "attention"), ("concat", "film", "residual")
CLINICAL_EMBEDDING = 32  # width of the clinical MLP embedding (concat fusion)
ENCODER_PREFIX = "encoders"  # parameters under it are the backbone; everything else is trained from scratch


class FusionClassifier(nn.Module):
    """View encoders, view pooling, clinical fusion and a ``Dropout -> Linear`` head.

    ``(B, V*C, *spatial)`` images (and ``(B, Fc)`` clinical values) -> logits ``(B, num_classes)``.

    Args:
        backbones: one :class:`~medlens.models.classifiers.Backbone` (shared by every view) or ``views`` of
            them (one per view), each mapping ``(B, C, *spatial)`` to ``(B, F)``.
        name: registry key of the backbone, e.g. ``"seedcnn_2d"``.
        views: ``V``.
        view_channels: ``C``, channels of one view.
        num_classes: number of logits ``K``.
        input_size: spatial size of the images.
        dropout: dropout probability before the final linear layer.
        pooling: ``"concat"`` or ``"attention"``.
        clinical_absent: ``(Fc,)`` encoding of a record with every clinical value missing (used when
            ``forward`` gets no clinical values); empty for a network without clinical inputs.
        clinical_fusion: ``"concat"``, ``"film"`` or ``"residual"``.

    Attributes:
        name, spatial_dims, num_classes, input_size: as for a :class:`~medlens.models.Classifier`.
        in_channels: ``V * C``, channels of the network input; ``views``, ``view_channels``: ``V`` and ``C``.
        encoder, pooling, clinical_fusion: the choices the network was built with.
        clinical_features: ``Fc`` (0: no clinical inputs); ``clinical_absent``: its ``(Fc,)`` buffer.
        num_features: ``F_fused``, the features the head sees (``forward_features``).
        cam_layers: one dotted module name per view, for Grad-CAM. With a shared encoder every entry
            names the same layer, whose output holds the ``B * V`` views batch-major (row ``b * V + v``),
            so one Grad-CAM call gives one map per view.
        cam_layer: ``cam_layers[0]``.
        head_prefix: ``"head"``, the final ``Dropout -> Linear``.
    """

    head_prefix = "head"

    def __init__(
        self, backbones: Sequence[Backbone], *, name: str, views: int, view_channels: int, num_classes: int,
        input_size: Sequence[int], dropout: float = 0.0, pooling: ViewPooling = "concat",
        clinical_absent: Sequence[float] = (), clinical_fusion: ClinicalFusion = "concat",
    ) -> None:
        super().__init__()
        if len(backbones) not in (1, views):
            raise ValueError(f"{name}: {len(backbones)} backbones for {views} views; give 1 (shared) or {views}")
        self.name, self.input_size = name, tuple(input_size)
        self.spatial_dims, self.num_classes = len(self.input_size), num_classes
        self.views, self.view_channels, self.in_channels = views, view_channels, views * view_channels
        self.encoder = "shared" if len(backbones) == 1 else "separate"
        self.pooling, self.clinical_fusion = pooling, clinical_fusion
        self.encoders = nn.ModuleList([b.module for b in backbones])
        view_features = backbones[0].num_features
        self.num_features = view_features
        self.register_buffer("clinical_absent", torch.as_tensor(clinical_absent, dtype=torch.float32).reshape(-1))
        self.clinical_features = int(self.clinical_absent.numel())
        pooled = view_features * views + views if pooling == "concat" else view_features
        if pooling == "attention":
            self.attention = nn.Linear(view_features, 1)
        if self.clinical_features and clinical_fusion in ("concat", "residual"):
            self.clinical_embedding = nn.Sequential(nn.Linear(self.clinical_features, CLINICAL_EMBEDDING), nn.ReLU())
            pooled += CLINICAL_EMBEDDING
        self.fusion = nn.Sequential(nn.Linear(pooled, self.num_features), nn.ReLU())
        if self.clinical_features and clinical_fusion == "film":
            self.film = nn.Linear(self.clinical_features, 2 * self.num_features)
            nn.init.zeros_(self.film.weight)  # starts as the identity: features * (1 + 0) + 0
            nn.init.zeros_(self.film.bias)
        self.head = nn.Sequential(
            OrderedDict(dropout=nn.Dropout(dropout), fc=nn.Linear(self.num_features, num_classes))
        )
        self.residual = bool(self.clinical_features) and clinical_fusion == "residual"
        if self.residual:  # the network starts as the clinical regression (set_clinical_logits), kept fixed
            self.clinical_logits = nn.Linear(self.clinical_features, num_classes)
            self.clinical_logits.requires_grad_(False)
            nn.init.zeros_(self.clinical_logits.weight)
            nn.init.zeros_(self.clinical_logits.bias)
            nn.init.zeros_(self.head.fc.weight)
            nn.init.zeros_(self.head.fc.bias)
        shared = self.encoder == "shared"
        self.cam_layers = [f"{ENCODER_PREFIX}.{0 if shared else v}.{backbones[0].cam_layer}" for v in range(views)]
        self.cam_layer = self.cam_layers[0]
        if any(layer not in dict(self.named_modules()) for layer in self.cam_layers):
            raise ValueError(f"{name}: cam_layers {self.cam_layers} are not modules of the network")

    def forward_features(self, x: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        """Fused features ``(B, num_features)`` of images ``(B, V*C, *spatial)`` and clinical values ``(B, Fc)``."""
        views = x.reshape(-1, self.views, self.view_channels, *x.shape[2:])  # (B, V, C, *S)
        nan = torch.isnan(views)
        present = ~nan.flatten(2).all(-1)  # (B, V)
        features = self._encode(views.masked_fill(nan, 0.0))
        return self._fuse(self._pool(features, present), self._clinical(clinical, features))

    def forward(self, x: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, num_classes)``; ``clinical=None``: every clinical value missing."""
        logits = self.head(self.forward_features(x, clinical))
        if self.residual:
            logits = logits + self.clinical_logits(self._clinical(clinical, logits)).to(logits.dtype)
        return logits

    @torch.no_grad()
    def set_clinical_logits(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """``residual``: the clinical values' own logits, ``weight (num_classes, Fc)`` and ``bias (num_classes,)``."""
        self.clinical_logits.weight.copy_(weight)
        self.clinical_logits.bias.copy_(bias)

    def member_logits(self, x: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(1, B, num_classes)``: a single network is an ensemble of one (see :mod:`.ensemble`)."""
        return self(x, clinical)[None]

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters trained from scratch: the head and the fusion layers (everything but the view encoders).

        Training with a frozen backbone (``train.freeze_epochs``) trains these, as the fusion layers
        have no pretrained weights.
        """
        return (p for n, p in self.named_parameters() if not n.startswith(f"{ENCODER_PREFIX}."))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the view encoders."""
        return (p for n, p in self.named_parameters() if n.startswith(f"{ENCODER_PREFIX}."))

    def _encode(self, views: torch.Tensor) -> torch.Tensor:
        """Features ``(B, V, F)`` of views ``(B, V, C, *S)``."""
        if self.encoder == "shared":
            # one call over the B * V views (row b * V + v): one batch-norm batch, one Grad-CAM map per view
            features = self.encoders[0](views.reshape(-1, *views.shape[2:]))
            return features.reshape(-1, self.views, features.shape[-1])
        return torch.stack([encoder(views[:, v]) for v, encoder in enumerate(self.encoders)], dim=1)

    def _pool(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``(B, V*F + V)`` (concat: missing views zeroed, presence flags) or ``(B, F)`` (attention)."""
        flags = present.to(features.dtype)
        if self.pooling == "concat":
            return torch.cat([(features * flags[..., None]).flatten(1), flags], dim=1)
        scores = self.attention(features).squeeze(-1)  # bfloat16 under autocast, whatever the features are
        scores = scores.masked_fill(~present, torch.finfo(scores.dtype).min)
        # a case without any view has uniform weights here, which the flags then zero
        weights = torch.softmax(scores, dim=1) * flags
        return (weights[..., None] * features).sum(dim=1)

    def _clinical(self, clinical: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor | None:
        """Clinical values ``(B, Fc)`` in the features' dtype (the absent vector when ``None``), or ``None``."""
        if not self.clinical_features:
            if clinical is not None:
                raise ConfigError(f"`{self.name}` was built without clinical inputs, got clinical values "
                                  f"{tuple(clinical.shape)}; build it with clinical_absent=... or pass None")
            return None
        if clinical is None:
            return self.clinical_absent.to(features.dtype).expand(features.shape[0], -1)
        # a traced graph fixes the width anyway; comparing traced sizes would only warn
        if not torch.jit.is_tracing() and (clinical.ndim != 2 or clinical.shape[1] != self.clinical_features):
            raise ConfigError(f"`{self.name}` takes clinical values (B, {self.clinical_features}), got "
                              f"{tuple(clinical.shape)}; encode them with the run's clinical encoder")
        return clinical.to(features.dtype)

    def _fuse(self, pooled: torch.Tensor, clinical: torch.Tensor | None) -> torch.Tensor:
        """``(B, num_features)`` from pooled image features and clinical values."""
        if clinical is not None and self.clinical_fusion in ("concat", "residual"):
            pooled = torch.cat([pooled, self.clinical_embedding(clinical)], dim=1)
        fused = self.fusion(pooled)
        if clinical is not None and self.clinical_fusion == "film":
            gamma, beta = self.film(clinical).chunk(2, dim=1)
            fused = fused * (1 + gamma) + beta
        return fused


def build_fusion_classifier(
    name: str, *, in_channels: int, views: int, num_classes: int, input_size: Sequence[int],
    width: float = 1.0, dropout: float = 0.0, encoder: ViewEncoder = "shared", pooling: ViewPooling = "concat",
    clinical_absent: Sequence[float] = (), clinical_fusion: ClinicalFusion = "concat",
) -> FusionClassifier:
    """Build a fusion classifier over a registered backbone.

    Args:
        name: registry classifier (``"seedcnn_2d"``, ``"resnet18_3d"``...; see ``CLASSIFIERS.names()``).
        in_channels: channels of the network input, ``V * C`` (``medlens.data.views.input_channels``).
        views: ``V`` >= 1.
        num_classes: number of logits.
        input_size: spatial size of every view, without the channel axis.
        width, dropout: as for :func:`~medlens.models.build_classifier`.
        encoder: ``"shared"`` (one backbone for every view) or ``"separate"`` (one per view).
        pooling: ``"concat"`` or ``"attention"``.
        clinical_absent: ``(Fc,)`` encoding of a record with every clinical value missing
            (``ClinicalEncoder.absent_vector``); empty: no clinical inputs.
        clinical_fusion: ``"concat"`` (MLP embedding concatenated), ``"film"`` (scale and shift) or
            ``"residual"`` (concatenated, plus the clinical values' own fixed logits; see the module docstring).

    Returns:
        A :class:`FusionClassifier` mapping ``(B, in_channels, *input_size)`` and ``(B, Fc)`` to ``(B, num_classes)``.

    Raises:
        ConfigError: bad views, channels not divisible by the views, an unknown encoder / pooling /
            clinical fusion, non-finite clinical_absent, or anything :func:`build_classifier` refuses.
    """
    _check_choice(name, "encoder", encoder, ENCODERS, "model.view_encoder")
    _check_choice(name, "pooling", pooling, POOLINGS, "model.view_pooling")
    _check_choice(name, "clinical_fusion", clinical_fusion, CLINICAL_FUSIONS, "clinical.fusion")
    view_channels = _view_channels(name, in_channels, views)
    absent = _check_absent(name, clinical_absent)
    count = 1 if encoder == "shared" else views
    backbones = []
    for _ in range(count):
        single = build_classifier(name, in_channels=view_channels, num_classes=num_classes, input_size=input_size,
                                  width=width, dropout=dropout)
        backbones.append(Backbone(single.backbone, single.num_features, single.cam_layer.removeprefix("backbone.")))
    return FusionClassifier(
        backbones, name=name, views=views, view_channels=view_channels, num_classes=num_classes,
        input_size=single.input_size, dropout=dropout, pooling=pooling, clinical_absent=absent,
        clinical_fusion=clinical_fusion,
    )


def _check_choice(name: str, label: str, value: object, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{label}={value!r} for `{name}`: choose {' or '.join(choices)} (config key `{key}`)")


def _view_channels(name: str, in_channels: int, views: int) -> int:
    """``C``, after checking ``views`` and that ``in_channels`` holds ``views`` views of equal channels."""
    for label, value in (("views", views), ("in_channels", in_channels)):
        if not _is_whole(value) or value < 1:
            raise ConfigError(f"{label} must be a whole number >= 1, got {value!r} for `{name}`")
    if in_channels % views:
        raise ConfigError(f"in_channels={in_channels} is not divisible by views={views} for `{name}`: the input "
                          f"holds V views of C channels each (V * C); set in_channels to views * data.channels")
    return int(in_channels) // int(views)


def _check_absent(name: str, clinical_absent: Sequence[float]) -> tuple[float, ...]:
    values = tuple(clinical_absent.tolist() if hasattr(clinical_absent, "tolist") else clinical_absent)
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ConfigError(f"clinical_absent must be finite numbers (the encoding of a record with every value "
                          f"missing), got {values!r} for `{name}`; use ClinicalEncoder.absent_vector")
    return tuple(float(v) for v in values)
