"""Cases of several inputs for classification: views encoded apart and clinical values beside the images.

A plan with ``data.fusion: views`` and named ``data.views``, or with clinical columns, trains a
:class:`~medlens.models.fusion.FusionClassifier`; any other plan trains a registry classifier as before.
Batches of such a plan are ``(images, clinical, labels)``: ``images (B, V * C, *input_size)`` with a view a
case lacks all-NaN, ``clinical (B, F)`` encoded by :class:`~medlens.data.clinical.ClinicalEncoder`.
"""

from __future__ import annotations

import numpy as np
import torch

from medlens.config import ClinicalSection, Config, DataSection, ModelSection
from medlens.data.views import view_count

__all__ = ["view_count"]  # re-exported: the tasks ask this module how many views a plan encodes apart


def has_clinical(clinical: ClinicalSection) -> bool:
    return bool(clinical.numeric or clinical.categorical)


def is_fused(config: Config) -> bool:
    """Whether the plan's network fuses several inputs (views encoded apart, or clinical values)."""
    return view_count(config.data) > 1 or has_clinical(config.clinical)


def build_network(model: ModelSection, data: DataSection, num_classes: int, clinical: ClinicalSection):
    """One network of the plan: a registry classifier, or a fusion network when the inputs are several.

    Returns:
        ``(B, V * C, *input_size)`` images (and ``(B, F)`` clinical values) -> logits ``(B, num_classes)``.
    """
    from medlens.data.clinical import absent_vector
    from medlens.models import build_classifier
    from medlens.models.fusion import build_fusion_classifier
    from medlens.models.norms import with_norm

    views = view_count(data)
    if views == 1 and not has_clinical(clinical):
        net = build_classifier(model.name, in_channels=data.channels, num_classes=num_classes,
                               input_size=tuple(data.input_size), width=model.width, dropout=model.dropout)
    else:
        net = build_fusion_classifier(model.name, in_channels=data.channels * views, views=views,
                                      num_classes=num_classes, input_size=tuple(data.input_size), width=model.width,
                                      dropout=model.dropout, encoder=model.view_encoder, pooling=model.view_pooling,
                                      clinical_absent=tuple(absent_vector(clinical)) if has_clinical(clinical) else (),
                                      clinical_fusion=clinical.fusion)
    return with_norm(net, model.norm)


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(images, clinical or None, labels)`` of a batch ``(images, labels)`` or ``(images, clinical, labels)``."""
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    return batch[0], None, batch[1]


def view_presence(x: torch.Tensor, views: int) -> torch.Tensor:
    """``(B, V)`` bool: which views of ``x (B, V * C, *S)`` a case has (a missing one is all-NaN)."""
    grouped = x.reshape(x.shape[0], views, -1)
    return ~torch.isnan(grouped).all(dim=2)


def with_absent_views(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``x (B, V * C, *S)`` with every view that ``present (B, V)`` marks absent set to NaN (a new tensor)."""
    b, v = present.shape
    mask = present.reshape(b, v, 1).expand(b, v, x[0].numel() // v).reshape(x.shape)
    return torch.where(mask, x, torch.full_like(x, float("nan")))


def withhold_inputs(present: torch.Tensor, clinical: torch.Tensor | None, absent: torch.Tensor | None,
                    rate: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Modality dropout: each present view, and each case's clinical record, withheld with chance ``rate``.

    A case always keeps at least one view it has (the first, when the draw took them all), so the network
    learns to predict from any subset of its inputs, as it must when a view or a value is missing later.

    Args:
        present: ``(B, V)`` bool, the views each case has.
        clinical: ``(B, F)`` encoded clinical values, or ``None``.
        absent: ``(F,)`` the encoding of a record with every value missing.
    """
    if rate <= 0:
        return present, clinical
    drop = torch.rand(present.shape, generator=generator, device=present.device) < rate
    kept = present & ~drop
    emptied = ~kept.any(dim=1) & present.any(dim=1)
    first = torch.zeros_like(present)
    first[torch.arange(len(present), device=present.device), present.float().argmax(dim=1)] = True
    kept = torch.where(emptied[:, None], first, kept)
    if clinical is not None and absent is not None:
        gone = torch.rand(len(clinical), generator=generator, device=clinical.device) < rate
        clinical = torch.where(gone[:, None], absent.to(clinical).expand_as(clinical), clinical)
    return kept, clinical


def missing_views(images: np.ndarray, names: tuple[str, ...]) -> list[list[str]]:
    """For each case of ``images (N, V * C, *S)``, the names of the views it lacks (all-NaN)."""
    if len(names) <= 1:
        return [[] for _ in range(len(images))]
    absent = np.stack([np.isnan(images[i].reshape(len(names), -1)).all(axis=1) for i in range(len(images))]) \
        if len(images) else np.zeros((0, len(names)), dtype=bool)
    return [[n for n, gone in zip(names, row) if gone] for row in absent]


def attach_clinical(config: Config, train, *others):
    """Fit the clinical encoder on ``train``'s cases and set ``clinical (N, F)`` on every split given.

    Args:
        train, others: :class:`~medlens.data.prepared.SplitData`.

    Returns:
        The fitted :class:`~medlens.data.clinical.ClinicalEncoder`, or ``None`` when the plan has no clinical input.
    """
    from medlens.data.clinical import ClinicalEncoder

    if not has_clinical(config.clinical):
        return None
    encoder = ClinicalEncoder.fit(config.clinical, train.cases)
    for split in (train, *others):
        split.clinical = encoder.encode(split.cases)
    return encoder


def fit_clinical_logits(model, config: Config, train, log) -> None:
    """``clinical.fusion: residual``: set the network's clinical logits from a logistic regression fitted on the
    training split's encoded clinical values (``train.clinical (N, F)``, ``train.labels (N,)``); the image path,
    whose head starts at zero, then learns what the regression leaves."""
    if config.clinical.fusion != "residual" or train.clinical is None:
        return
    from sklearn.linear_model import LogisticRegression

    regression = LogisticRegression(C=1.0, max_iter=2000).fit(train.clinical, train.labels)
    weight, bias = regression.coef_, regression.intercept_
    if len(config.dataset.class_names) == 2:  # one log-odds w.x + b: logits (-(w.x + b) / 2, (w.x + b) / 2)
        weight, bias = np.concatenate([-weight, weight]) / 2, np.concatenate([-bias, bias]) / 2
    for member in getattr(model, "members", [model]):  # an Ensemble's members, or the one network
        member.set_clinical_logits(torch.as_tensor(weight, dtype=torch.float32),
                                   torch.as_tensor(bias, dtype=torch.float32))
    score = regression.score(train.clinical, train.labels)
    log(f"clinical values: a logistic regression on {len(train.labels)} training cases (training accuracy "
        f"{score:.3f}) gives the network's starting logits; the images learn what it leaves")


def read_clinical(path):
    """The encoder a run or bundle saved (``clinical.json``); ``None`` when there is none."""
    from pathlib import Path

    from medlens._files import read_json
    from medlens.data.clinical import ClinicalEncoder

    doc = read_json(Path(path)) if Path(path).exists() else None
    return ClinicalEncoder.from_dict(doc) if doc else None
