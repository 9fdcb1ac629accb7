"""What an anomaly run hands the engine's training loop, and its calibration hook.

Training sees normal training images only: the encoder (methods gaussian and patchcore) learns from them by
contrastive self-supervision (SimCLR, :class:`~medlens.tasks.pretraining.module.ContrastiveModule`), unless
``--init-from`` gave it weights to start from; the autoencoder learns to reconstruct them. Once the best weights
are back, :func:`finish` fits the Gaussians (and the nearest-image memory) or fills PatchCore's memory bank from
the same normal training images, and sets the threshold (and ``gaussian_knn``'s term scales) on normal
validation images alone (``calibration.json``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medlens._files import write_json_atomic
from medlens.config import Config
from medlens.data.prepared import SplitData, prepare_split
from medlens.tasks.anomaly.cases import OneClassCases, one_class_cases
from medlens.tasks.base import Fit

CSV_METRICS = ("train_loss", "val_loss")


@dataclass
class OneClassData:
    """The preprocessed normal images :func:`finish` needs: ``fit`` (normal train), ``threshold`` (normal val)."""

    cases: OneClassCases
    fit: SplitData
    threshold: SplitData


def prepare_fit(task, config: Config, dataset, cases: dict, *, world_size: int, log) -> Fit:
    """Normal train and val images; the module (SimCLR on the encoder, or the autoencoder) and loaders."""
    import torch

    from medlens.data.loading import EpochSampler, make_loader

    roles = one_class_cases(cases, config)
    log(f"one-class split: {len(roles.fit)} normal training cases fit the model, {len(roles.threshold)} normal "
        f"validation cases set the threshold; {len(roles.held_out)} abnormal train/val cases are left out")
    data = OneClassData(roles, prepare_split(dataset, "train", roles.fit, config),
                        prepare_split(dataset, "val", roles.threshold, config))
    torch.manual_seed(config.train.seed)
    model = task.build_model(config)
    t, workers = config.train, config.data.num_workers
    steps = max(len(data.fit.images) // (t.batch_size * max(world_size, 1)), 1)
    module = _module(model, config, steps)
    loader = make_loader(data.fit.images, None, t.batch_size, sampler=EpochSampler(len(data.fit.images), t.seed),
                         num_workers=workers)
    val_loader = make_loader(data.threshold.images, None, max(t.batch_size, 2), num_workers=workers)
    return Fit(module, loader, val_loader, config, steps, validation=data, csv_metrics=CSV_METRICS)


def _module(model, config: Config, steps: int):
    if config.anomaly.method == "autoencoder":
        from medlens.tasks.anomaly.module import AutoencoderModule

        return AutoencoderModule(model, config)
    from medlens.tasks.pretraining.module import ContrastiveModule

    return ContrastiveModule(model, config, steps_per_epoch=steps)


def finish(run, config: Config, model, fit: Fit, log) -> str:
    """Fill the memory bank (PatchCore; weights saved again), then the threshold on normal validation scores."""
    from medlens.models.weights import save_atomic

    data: OneClassData = fit.validation
    if config.anomaly.method in ("gaussian", "gaussian_knn"):
        from medlens.tasks.anomaly.gaussian import fit_normal_gaussians, scale_terms

        fitted = fit_normal_gaussians(model, data.fit.images, seed=config.train.seed)
        log(f"gaussian: fitted to the encoder's deepest-stage statistics of {fitted} normal training images")
        if model.has_memory:
            scales = scale_terms(model, data.threshold.images)
            log(f"nearest normal image: {min(fitted, model.memory.shape[0])} pooled features in memory; score = "
                f"Mahalanobis / {scales[0]:.4g} + nearest-image distance / {scales[1]:.4g} (each term's median over "
                f"the {len(data.threshold.images)} normal validation cases)")
        save_atomic(model.state_dict(), run.weights)
    if config.anomaly.method == "patchcore":
        distinct = fill_memory(model, data.fit.images, seed=config.train.seed)
        save_atomic(model.state_dict(), run.weights)
        log(f"memory bank: {distinct} of {model.memory.shape[0]} slots from the coreset of "
            f"{len(data.fit.images)} normal training images' patch features")
    calibration = calibrate(model, config, data.threshold)
    write_json_atomic(run.calibration, calibration)
    return (f"threshold {calibration['threshold']:.4g} ({calibration['normal_above']:.1%} of "
            f"{calibration['fitted_cases']} normal validation cases above it)")


def fill_memory(model, images: np.ndarray, *, seed: int) -> int:
    """The coreset of the patch features of ``images`` into ``model.memory``; returns the distinct rows kept.

    The coreset draws from at most ``CANDIDATES_PER_SLOT`` features per memory slot, so only that many are
    gathered, an equal random share of each image's patches (929 volumes of 14^3 patches would be 1 GB).
    """
    import math

    from medlens.tasks.anomaly.infer import patch_features
    from medlens.tasks.anomaly.memory import CANDIDATES_PER_SLOT

    per_image = math.ceil(CANDIDATES_PER_SLOT * model.memory.shape[0] / max(len(images), 1))
    return model.fill_memory(patch_features(model, images, per_image=per_image, seed=seed), seed=seed)


def calibrate(model, config: Config, normal_val: SplitData) -> dict:
    """``calibration.json``: the threshold at ``anomaly.fpr`` of the normal validation scores, and the share above."""
    from medlens.tasks.anomaly.infer import anomaly_maps, scores_of
    from medlens.tasks.anomaly.threshold import share_above, threshold_at_fpr

    scores = scores_of(anomaly_maps(model, normal_val.images))
    threshold = threshold_at_fpr(scores, config.anomaly.fpr)
    return {"threshold": threshold, "temperature": 1.0, "fpr": config.anomaly.fpr,
            "threshold_rule": f"the {1 - config.anomaly.fpr:.0%} quantile of normal validation scores "
                              f"(anomaly.fpr={config.anomaly.fpr})",
            "fitted_on": f"{len(scores)} normal validation cases", "fitted_cases": len(scores),
            "normal_above": share_above(scores, threshold),
            "normal_scores": {"min": float(scores.min()), "median": float(np.median(scores)),
                              "max": float(scores.max())}}
