"""What classification hands the engine's training loop: preprocessed arrays, the module, the loaders, and
what is fitted once the best weights are back: the calibration (temperature, threshold) on validation, and the
out-of-distribution guard on the training images' features (thresholded on validation)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from medlens._files import write_json_atomic
from medlens.config import Config
from medlens.data.prepared import SplitData, prepare_split
from medlens.errors import DatasetError
from medlens.runs import json_safe
from medlens.tasks.base import Fit
from medlens.tasks.classification.inputs import attach_clinical, fit_clinical_logits, is_fused

CSV_METRICS = ("train_loss", "val_loss", "val_auc", "val_accuracy")


@dataclass
class HeldOut:
    """What :func:`finish` needs once training is over (``Fit.validation``): the validation split, and the
    training split's preprocessed, un-augmented ``images (N, C, *input_size)`` and ``labels (N,)`` or ``(N, L)``
    the guard is fitted on (the arrays the loader already holds: no second read)."""

    val: SplitData
    train_images: np.ndarray
    train_labels: np.ndarray
    clinical: object = None  # the ClinicalEncoder fitted on the training split (None without clinical inputs)


def prepare_fit(task, config: Config, dataset, cases: dict, *, world_size: int, log) -> Fit:
    """Preprocess train and val once into arrays; the module with a seeded model, loss weights and loaders."""
    from medlens.data.loading import EpochSampler, balanced_weights, make_loader
    from medlens.tasks.classification.module import ClassificationModule

    train = prepare_split(dataset, "train", cases["train"], config)
    val = prepare_split(dataset, "val", cases["val"], config)
    check_labels(config, train)
    encoder = attach_clinical(config, train, val)
    config = fit_monitor(config, val, log)
    torch.manual_seed(config.train.seed)
    model = task.build_model(config)
    fit_clinical_logits(model, config, train, log)
    module = ClassificationModule(model, config, class_weights(config, train.labels))
    t, workers = config.train, config.data.num_workers
    weights = balanced_weights(train.labels) if t.sampler == "weighted" else None
    loader = make_loader(train.images, train.labels, t.batch_size, sampler=EpochSampler(len(train.images), t.seed,
                                                                                        weights), num_workers=workers,
                         clinical=train.clinical)
    val_loader = make_loader(val.images, val.labels, max(t.batch_size, 256), num_workers=workers,
                             clinical=val.clinical)
    steps = -(-len(train.images) // (t.batch_size * max(world_size, 1)))
    # AUC saturates on small validation splits: ties go to the lower loss (ClassificationModule logs both as one)
    select_by = "val_auc_then_loss" if config.train.monitor == "val_auc" else config.train.monitor
    return Fit(module, loader, val_loader, config, steps, validation=HeldOut(val, train.images, train.labels, encoder),
               csv_metrics=CSV_METRICS + (("val_qwk",) if config.dataset.task == "ordinal" else ()),
               select_by=select_by)


def check_labels(config: Config, train: SplitData) -> None:
    """Every class needs training examples (multi-label: labels may be absent from a split)."""
    if train.labels.ndim != 1:
        return
    counts = np.bincount(train.labels, minlength=len(config.dataset.class_names))
    empty = [n for n, c in zip(config.dataset.class_names, counts) if c == 0]
    if empty:
        raise DatasetError(f"class(es) {', '.join(empty)} have no training example (train counts "
                           f"{dict(zip(config.dataset.class_names, counts.tolist()))}); add data or change the splits")


def fit_monitor(config: Config, val: SplitData, log) -> Config:
    """AUC is undefined on a validation split of one class: monitor the loss instead, and say so."""
    labels = val.labels if val.labels.ndim == 1 else val.labels.argmax(1)
    if config.train.monitor == "val_auc" and len(np.unique(labels)) < 2:
        log("warning: the validation split holds one class only, so AUC is undefined; monitoring val_loss")
        return replace(config, train=replace(config.train, monitor="val_loss"))
    return config


def class_weights(config: Config, labels: np.ndarray) -> torch.Tensor | None:
    """Inverse-frequency weights ``N / (K * n_k)`` for the weighted losses, else ``None``."""
    if config.train.loss not in ("weighted_ce", "focal"):
        return None
    k = len(config.dataset.class_names)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return torch.tensor(len(labels) / (k * np.maximum(counts, 1)), dtype=torch.float32)


def finish(run, config: Config, model, fit: Fit, log) -> str:
    """Fit the temperature and threshold on validation (``calibration.json``), score validation with CIs for
    the model card (``validation.json``), and fit the out-of-distribution guard (``ood_guard.safetensors``)."""
    from medlens.tasks.classification.calibrate import calibrate, validation_metrics
    from medlens.tasks.classification.ood import fit_model_guard, save_guard

    held: HeldOut = fit.validation
    if held.clinical is not None:
        write_json_atomic(run.clinical, held.clinical.to_dict())
    calibration = calibrate(model, config, held.val)
    write_json_atomic(run.calibration, calibration)
    write_json_atomic(run.validation, json_safe(validation_metrics(model, config, held.val, calibration)))
    if is_fused(config):  # the guard's features are one image's; several inputs (missing views) need their own
        return (f"temperature {calibration['temperature']:.3f}; no out-of-distribution guard: it is fitted on one "
                "image per case, and this network fuses several inputs")
    guard = fit_model_guard(model, held.train_images, held.train_labels, held.val.images)
    save_guard(guard, run.ood_guard)
    return (f"temperature {calibration['temperature']:.3f}; out-of-distribution guard: {guard.num_features} features, "
            f"threshold {guard.threshold:.3g} ({100 * guard.description['validation_flagged']:.0f}% of validation "
            "flagged)")
