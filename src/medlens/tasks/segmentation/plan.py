"""Self-configuration for segmentation, after nnU-Net's rules (Isensee et al., Nature Methods 2021).

From the dataset card: a target spacing (the median; for strongly anisotropic data the coarse
axis keeps a finer spacing), the patch the network trains on (the median image, shrunk to fit
the memory budget), the network topology that patch allows (down-sample an axis while its
feature map stays >= 4 voxels and its spacing is not already much coarser than the others; 1-voxel
kernels across coarse axes), the normalisation (CT: clip to the foreground's 0.5-99.5
percentiles, then z-score with foreground statistics; anything else: z-score per image), and the
epochs that fit the time budget, measured by timing the network on this machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from medlens.config import (
    AugmentSection,
    Config,
    DataSection,
    DatasetSection,
    EvaluateSection,
    ModelSection,
    SegmentSection,
    TrainSection,
)
from medlens.errors import DatasetError
from medlens.tasks.planning import axis_stat, epochs_in_budget, processes_reason

DEFAULT_BUDGET_S = {"cpu": 1800.0, "gpu": 3600.0}
PATCH_VOXELS = {("cpu", 2): 256 * 256, ("cpu", 3): 40 * 56 * 48, ("gpu", 2): 512 * 512, ("gpu", 3): 128 ** 3}
BATCH_VOXELS = {("cpu", 2): 4 * 256 * 256, ("gpu", 2): 12 * 512 * 512}  # 3D trains with batch 2
BASE_FILTERS = {"cpu": 16, "gpu": 32}
MAX_FILTERS = {2: 512, 3: 320}
MIN_FEATURE_MAP = 4  # voxels per axis at the lowest resolution
MIN_PATCH = 4 * MIN_FEATURE_MAP  # a patch side allows at least two down-samplings (DynUNet needs 3 levels)
MAX_POOLS = 5
ANISOTROPY = 3.0  # nnU-Net: max/min spacing above this is "anisotropic"
ITERATIONS = {"cpu": 100, "gpu": 250}
TRANSFORMER_PAYS = 1.5  # SwinUNETR is used where a step costs at most this many DynUNet steps (GPU only)
SWIN_FEATURES = 48  # SwinUNETR's feature size in its paper (MONAI's default is 24)
# Below this many patch batches per process the plan trains with AdamW (lr 3e-3) instead of nnU-Net's SGD.
# Chosen on Hippocampus validation Dice, 2-core CPU, default plan otherwise: after 400 batches AdamW 0.846 and
# SGD 0.290; after 1200-1300 level (0.872 and 0.869); SGD's 7100 (55 minutes) match nnU-Net's published Dice.
ADAMW_BELOW_STEPS = 1000
ADAMW_EVIDENCE = "Hippocampus after 400 batches: 0.846 against 0.290; level from about 1250"
KINDS = ("segmentation",)  # the label kinds this task trains: masks


def plan_segmentation(card: dict, *, time_budget_s: float | None = None, device: str = "cpu",
                      processes: int = 1, probe: bool = True) -> tuple[Config, dict[str, str]]:
    """Choose every segmentation setting for ``card``'s dataset; returns the config and the reasons.

    Args:
        card: from :func:`medlens.data.audit.inspect_dataset` on a segmentation dataset.
        time_budget_s: training time to plan for; default 30 min on CPU, 60 min on GPU.
        device: ``"cpu"`` or ``"gpu"``.
        processes: training processes (devices x nodes): each draws its share of every epoch's patches.
        probe: time the network to set the epoch count (off in unit tests of the rules).
    """
    reasons: dict[str, str] = {}
    dataset = _dataset_section(card, reasons)
    data, steps = _data_section(card, dataset, device, reasons)
    model = _model_section(data, steps, dataset, device, reasons)
    data, model = choose_network(data, model, dataset, device, probe, reasons)
    segment = SegmentSection(iterations_per_epoch=ITERATIONS[device])
    reasons["segment.iterations_per_epoch"] = f"{ITERATIONS[device]} patch batches per epoch (nnU-Net: 250)"
    reasons["segment.foreground_fraction"] = "one patch in three is centred on a foreground voxel (nnU-Net)"
    reasons["segment.overlap"] = "sliding-window inference: half-patch overlap, Gaussian-weighted"
    reasons["segment.keep_largest"] = "keep only the largest component of a class if that raises validation Dice"
    budget = float(time_budget_s or DEFAULT_BUDGET_S[device])
    train = _train_section(card, dataset, data, model, segment, budget, device, probe, reasons, processes)
    train = _short_budget_optimizer(train, segment, reasons)
    train = _transformer_optimizer(train, model, reasons)
    augment = _augment_section(dataset, reasons)
    config = Config(dataset=dataset, data=data, model=model, augment=augment, train=train, segment=segment,
                    evaluate=EvaluateSection())
    reasons["evaluate.tta"] = "off: predict each image once; --tta (or true here) averages the 2^D mirrored copies"
    reasons.setdefault("evaluate.n_bootstrap", "1000 bootstrap resamples of cases (patients when known) for 95% CIs")
    return config, reasons


def _dataset_section(card: dict, reasons: dict) -> DatasetSection:
    described = card["dataset"]
    if described["task"] not in KINDS:
        raise DatasetError(f"{described['source']} is a {described['task']} dataset, not image + mask pairs")
    if not described.get("spatial_dims"):
        raise DatasetError(f"{described['source']}: no readable image, so nothing to plan; run `medlens inspect`")
    masks = card.get("masks") or {}
    declared = {int(v): name for v, name in (masks.get("declared_labels") or {}).items()}
    if declared and described.get("class_names"):
        values, names = sorted(declared), tuple(declared[v] for v in sorted(declared))
        reasons["dataset.label_values"] = "the labels the dataset declares"
    else:
        values = sorted({0, *(int(v) for v in masks.get("cases_with_label", {}))})
        names = tuple("background" if v == 0 else f"label_{v}" for v in values)
        reasons["dataset.label_values"] = "the values found in the masks; 0 is background"
    if len(values) < 2:
        raise DatasetError(f"{described['source']}: every mask holds background (0) only, so there is nothing to "
                           "segment; check that the masks are the right files")
    reasons["dataset.task"] = f"masks found ({described['layout']} layout)"
    reasons["dataset.class_names"] = "one class per mask value; index 0 is background"
    return DatasetSection(source=described["source"], layout=described["layout"], task="segmentation",
                          class_names=names, label_values=tuple(values), spatial_dims=int(described["spatial_dims"]),
                          modality=str(described.get("modality") or ""), fingerprint=card.get("fingerprint", ""))


def _data_section(card: dict, dataset: DatasetSection, device: str, reasons: dict) -> tuple[DataSection, list[int]]:
    images, dims = card["images"], dataset.spatial_dims
    spacing = target_spacing(images, dims, reasons)
    median_spacing = [axis_stat(images.get("spacing_mm"), a, "median", 1.0) for a in range(dims)]
    shape = [axis_stat(images["shape"], a, "median", 32) * median_spacing[a] / spacing[a] for a in range(dims)]
    channels = max(int(c) for c in images["channels"])
    patch, steps = patch_and_pools(shape, spacing, PATCH_VOXELS[(device, dims)])
    multiples = [2 ** k for k in pool_counts(steps, dims)]
    reasons["data.input_size"] = (f"training patch (voxels): the median image {[round(s) for s in shape]} at the "
                                  f"target spacing, rounded to a multiple of {multiples}, within "
                                  f"{PATCH_VOXELS[(device, dims)]} voxels on {device.upper()}; inference slides it")
    reasons["data.channels"] = "channels (modalities) of the images"
    normalization, low_high, stats = _normalization(card, dataset, reasons)
    return DataSection(input_size=tuple(patch), channels=channels, normalization=normalization,
                       intensity_range=low_high, foreground_stats=stats, target_spacing=tuple(spacing)), steps


def target_spacing(images: dict, dims: int, reasons: dict) -> list[float]:
    """The median spacing; on anisotropic data the coarse axis takes its 10th percentile (nnU-Net)."""
    summary = images.get("spacing_mm")
    if not images.get("spacing_known") or not summary:
        reasons["data.target_spacing"] = "the images carry no spacing: kept on their own grid (1 voxel = 1 unit)"
        return [1.0] * dims
    median = [axis_stat(summary, a, "median", 1.0) for a in range(dims)]
    coarse = int(np.argmax(median))
    if max(median) > ANISOTROPY * min(median):
        median[coarse] = axis_stat(summary, coarse, "p10", median[coarse])
        reasons["data.target_spacing"] = (f"median spacing; axis {coarse} is over {ANISOTROPY:g}x coarser than the "
                                          "finest, so it keeps its 10th-percentile spacing (nnU-Net); images are "
                                          "resampled linearly, masks by nearest neighbour")
    else:
        reasons["data.target_spacing"] = ("median spacing of the dataset (mm); images are resampled linearly, "
                                          "masks by nearest neighbour; equal grids are not touched")
    return [round(v, 4) for v in median]


def patch_and_pools(shape: list[float], spacing: list[float], budget: int) -> tuple[list[int], list[tuple]]:
    """The patch (voxels per axis) and the down-sampling steps (one stride tuple per step).

    Start from the median image shape; while the patch exceeds ``budget`` voxels, shrink the axis
    with the largest physical extent. Then see :func:`downsampling_steps`; the patch is rounded up
    to a multiple of each axis's total stride so that every level divides evenly.
    """
    patch = [max(float(s), MIN_PATCH) for s in shape]
    while math.prod(patch) > budget:
        extents = [p * s for p, s in zip(patch, spacing)]
        axis = int(np.argmax(extents))
        patch[axis] *= 0.9
    steps = downsampling_steps(patch, spacing)
    multiples = [2 ** k for k in pool_counts(steps, len(patch))]
    return [int(math.ceil(p / m - 1e-3) * m) for p, m in zip(patch, multiples)], steps  # float32 spacing noise


def pool_counts(steps: list[tuple[int, ...]], dims: int) -> list[int]:
    """How many times each axis is halved over ``steps``."""
    return [sum(step[a] == 2 for step in steps) for a in range(dims)]


def downsampling_steps(patch: list[float], spacing: list[float]) -> list[tuple[int, ...]]:
    """Per down-sampling step, the stride per axis: 2 on an axis whose feature map stays >=
    :data:`MIN_FEATURE_MAP` and whose spacing is not over twice the finest at that step (so a
    coarse axis waits until the fine axes have caught up), else 1; at most :data:`MAX_POOLS` steps."""
    steps, size, current = [], list(patch), list(spacing)
    for _ in range(MAX_POOLS):
        finest = min(current)
        step = tuple(2 if s / 2 >= MIN_FEATURE_MAP and c <= 2 * finest else 1 for s, c in zip(size, current))
        if max(step) == 1:
            break
        steps.append(step)
        size = [s / k for s, k in zip(size, step)]
        current = [c * k for c, k in zip(current, step)]
    return steps


def topology(steps: list[tuple[int, ...]], spacing: list[float]) -> tuple[tuple, tuple]:
    """Per level, the strides and kernels: level 0 has stride 1, then one level per down-sampling
    step; a kernel of 1 across an axis whose spacing is over twice the finest at that level (nnU-Net)."""
    strides = (tuple(1 for _ in spacing), *[tuple(step) for step in steps])
    kernels, current = [], list(spacing)
    for stride in strides:
        current = [c * s for c, s in zip(current, stride)]
        kernels.append(tuple(1 if c > 2 * min(current) else 3 for c in current))
    return strides, tuple(kernels)


def _normalization(card: dict, dataset: DatasetSection, reasons: dict) -> tuple[str, tuple, tuple]:
    foreground = (card.get("masks") or {}).get("foreground_intensity") or {}
    if dataset.modality.upper() == "CT" and foreground.get("percentiles"):
        pct = foreground["percentiles"]
        low, high = float(pct["0.5"]), float(pct["99.5"])
        stats = (round(float(foreground["mean"]), 4), round(max(float(foreground["std"]), 1e-6), 4))
        reasons["data.normalization"] = "CT: clip to the foreground's 0.5-99.5 percentiles, z-score with its mean/std"
        reasons["data.intensity_range"] = "0.5 and 99.5 percentiles of foreground intensities (HU)"
        reasons["data.foreground_stats"] = "mean and std of foreground intensities (HU)"
        return "ct_foreground", (round(low, 4), round(high, 4)), stats
    reasons["data.normalization"] = (f"{dataset.modality or 'non-CT'} intensities have no fixed scale: z-score per "
                                     "image and channel")
    return "zscore", (), ()


def _model_section(data: DataSection, steps: list[tuple], dataset: DatasetSection, device: str,
                   reasons: dict) -> ModelSection:
    dims = dataset.spatial_dims
    strides, kernels = topology(steps, list(data.target_spacing))
    base = BASE_FILTERS[device]
    filters = tuple(min(base * 2 ** k, MAX_FILTERS[dims]) for k in range(len(strides)))
    reasons["model.name"] = f"nnU-Net-style {dims}D U-Net (MONAI DynUNet) configured from patch and spacing"
    reasons["model.filters"] = f"{base} feature maps at full resolution, doubling per level (cap {MAX_FILTERS[dims]})"
    reasons["model.strides"] = (f"{len(strides) - 1} down-samplings: an axis stops when its feature map would fall "
                                f"below {MIN_FEATURE_MAP} voxels or its spacing is over twice the finest")
    reasons["model.kernels"] = "3 per axis; 1 across an axis much coarser than the others"
    reasons["model.deep_supervision"] = "loss on the two levels above the lowest as well (nnU-Net)"
    return ModelSection(name=f"dynunet_{dims}d", width=1.0, dropout=0.0, filters=filters, strides=strides,
                        kernels=kernels, deep_supervision=True)


def choose_network(data: DataSection, model: ModelSection, dataset: DatasetSection, device: str, probe: bool,
                   reasons: dict) -> tuple[DataSection, ModelSection]:
    """Keep the CNN, or take SwinUNETR where this GPU's timing says it pays.

    A transformer pays when one training step of SwinUNETR (on the patch rounded to multiples of
    32) costs at most :data:`TRANSFORMER_PAYS` times a DynUNet step, so it still gets at least 2/3
    of the CNN's epochs in the budget. On a CPU the rule alone decides, without timing: nnU-Net's
    CNN matched or beat SwinUNETR and UNETR on every dataset of Isensee et al. (MICCAI 2024) at far
    less compute, and a CPU budget buys few epochs.
    """
    cnn_reason = reasons["model.name"]
    if device != "gpu":
        reasons["model.name"] = (f"{cnn_reason}; no transformer on a CPU: SwinUNETR took 3-4x DynUNet's time per voxel "
                                 "on the 2-core reference machine, and transformers need long schedules to match a "
                                 "CNN (Isensee et al., MICCAI 2024); on a GPU the plan times SwinUNETR")
        return data, model
    if not probe:
        reasons["model.name"] = f"{cnn_reason}; SwinUNETR was not timed (no probe), so the CNN"
        return data, model
    import torch

    swin_data, swin_model = swin_candidate(data, dataset)
    dims = dataset.spatial_dims
    cnn_s, _ = time_segmentation_step(model, data, dataset, _batch_size(data, dims, device), device)
    try:
        swin_s, _ = time_segmentation_step(swin_model, swin_data, dataset, _batch_size(swin_data, dims, device), device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        reasons["model.name"] = (f"{cnn_reason}; not SwinUNETR: a training step on patch "
                                 f"{list(swin_data.input_size)} ran out of this GPU's memory")
        return data, model
    return cnn_or_swin((data, model, cnn_s), (swin_data, swin_model, swin_s), reasons)


def cnn_or_swin(cnn: tuple[DataSection, ModelSection, float], swin: tuple[DataSection, ModelSection, float],
                reasons: dict) -> tuple[DataSection, ModelSection]:
    """The CNN's or SwinUNETR's ``(data, model)``, given each one's ``(data, model, seconds per step)``."""
    (data, model, cnn_s), (swin_data, swin_model, swin_s) = cnn, swin
    timing = (f"one step of {swin_model.name} (patch {list(swin_data.input_size)}) took {swin_s * 1000:.0f} ms on "
              f"this GPU, {swin_s / cnn_s:.1f}x DynUNet's {cnn_s * 1000:.0f} ms")
    if swin_s > TRANSFORMER_PAYS * cnn_s:
        reasons["model.name"] += f"; not SwinUNETR: {timing}, over the {TRANSFORMER_PAYS:g}x it may cost"
        return data, model
    reasons["model.name"] = (f"MONAI SwinUNETR (Hatamizadeh et al., 2021): {timing}, within {TRANSFORMER_PAYS:g}x, "
                             "so its global attention costs at most a third of the CNN's epochs")
    reasons["model.filters"] = f"feature size {swin_model.filters[0]} (the SwinUNETR paper's); heads 3, 6, 12, 24"
    reasons["model.strides"] = reasons["model.kernels"] = "not used by SwinUNETR (2x2 patches, four 2x merges)"
    reasons["model.deep_supervision"] = "off: SwinUNETR has one output"
    reasons["data.input_size"] += f"; rounded to multiples of 32 for SwinUNETR: {list(swin_data.input_size)}"
    return swin_data, swin_model


def swin_candidate(data: DataSection, dataset: DatasetSection) -> tuple[DataSection, ModelSection]:
    """SwinUNETR on the plan's patch rounded to multiples of 32 (one side at least 64, as it needs)."""
    from medlens.models.segmenters import SWIN_MULTIPLE

    patch = [max(SWIN_MULTIPLE, round(p / SWIN_MULTIPLE) * SWIN_MULTIPLE) for p in data.input_size]
    if max(patch) == SWIN_MULTIPLE:
        patch[int(np.argmax(data.input_size))] = 2 * SWIN_MULTIPLE
    model = ModelSection(name=f"swinunetr_{dataset.spatial_dims}d", width=1.0, dropout=0.0, filters=(SWIN_FEATURES,),
                         strides=(), kernels=(), deep_supervision=False)
    return replace(data, input_size=tuple(patch)), model


def steps_per_epoch(segment: SegmentSection, processes: int) -> int:
    """Optimisation steps of one epoch in each process: each draws its share of the epoch's patch batches."""
    return math.ceil(segment.iterations_per_epoch / processes)


def _short_budget_optimizer(train: TrainSection, segment: SegmentSection, reasons: dict) -> TrainSection:
    """AdamW at 3e-3 where the budget fits fewer than ``ADAMW_BELOW_STEPS`` patch batches: nnU-Net's SGD
    (momentum 0.99, lr 0.01) is tuned for 250 000 steps and is still starting after a few hundred."""
    steps = train.max_epochs * steps_per_epoch(segment, train.processes)
    if steps >= ADAMW_BELOW_STEPS:
        return train
    reasons["train.optimizer"] = (f"AdamW: the budget fits {steps} patch batches, fewer than {ADAMW_BELOW_STEPS}"
                                  + (" in each process" if train.processes > 1 else "") + ", "
                                  f"where AdamW led nnU-Net's SGD on validation Dice ({ADAMW_EVIDENCE})")
    reasons["train.lr"] = "0.003 with polynomial decay (AdamW's rate for short training)"
    reasons["train.momentum"] = "unused: AdamW keeps its own decays"
    return replace(train, optimizer="adamw", lr=3e-3)


def _transformer_optimizer(train: TrainSection, model: ModelSection, reasons: dict) -> TrainSection:
    if not model.name.startswith("swinunetr"):
        return train
    reasons["train.optimizer"] = "AdamW, as SwinUNETR was trained (Hatamizadeh et al.), not nnU-Net's SGD"
    reasons["train.lr"] = "1e-4 with polynomial decay, weight decay 1e-5 (SwinUNETR)"
    reasons["train.momentum"] = "unused: AdamW keeps its own decays"
    return replace(train, optimizer="adamw", lr=1e-4, weight_decay=1e-5)


def _batch_size(data: DataSection, dims: int, device: str) -> int:
    if dims == 3:
        return 2
    return int(np.clip(BATCH_VOXELS[(device, 2)] // math.prod(data.input_size), 2, 32))


def _train_section(card, dataset, data, model, segment, budget_s, device, probe, reasons,
                   processes: int = 1) -> TrainSection:
    batch = _batch_size(data, dataset.spatial_dims, device)
    reasons["train.batch_size"] = (f"{batch} patches per step (nnU-Net uses at least 2)"
                                   + (" in each process" if processes > 1 else ""))
    reasons["train.processes"] = processes_reason(processes)
    reasons["train.optimizer"] = "SGD with Nesterov momentum (nnU-Net)"
    reasons["train.momentum"] = "0.99 (nnU-Net)"
    reasons["train.lr"] = "0.01 with polynomial decay (nnU-Net)"
    reasons["train.loss"] = "Dice + cross-entropy (nnU-Net)"
    reasons["train.monitor"] = "mean foreground Dice of sliding-window predictions on the validation cases"
    epochs = _epochs(card, data, model, dataset, segment, batch, budget_s, device, probe, reasons, processes)
    patience = max(10, epochs // 3)
    reasons["train.patience"] = f"stop when validation Dice has not improved for {patience} epochs"
    reasons["train.time_budget_s"] = "hard stop: training ends at this time even mid-plan"
    return TrainSection(max_epochs=epochs, batch_size=batch, optimizer="sgd", lr=0.01, momentum=0.99,
                        weight_decay=3e-5, schedule="poly", loss="dice_ce", sampler="shuffle", patience=patience,
                        monitor="val_dice", time_budget_s=budget_s, processes=processes)


def _epochs(card, data, model, dataset, segment, batch, budget_s, device, probe, reasons, processes: int = 1) -> int:
    if not probe:
        reasons["train.max_epochs"] = "default (the network was not timed)"
        return 50
    step_s, forward_s = time_segmentation_step(model, data, dataset, batch, device)
    val_cases = max(int(round(card["dataset"].get("num_readable", 10) * 0.16)), 1)
    median = [axis_stat(card["images"]["shape"], a, "median", 32) for a in range(dataset.spatial_dims)]
    windows = math.prod(max(1, math.ceil(m / (p * (1 - segment.overlap)))) for m, p in zip(median, data.input_size))
    steps = steps_per_epoch(segment, processes)
    epoch_s = steps * step_s * 1.1 + val_cases * windows * forward_s / segment.sw_batch_size
    epochs, fits = epochs_in_budget(budget_s, epoch_s, most=1000)
    reasons["train.max_epochs"] = (f"{epoch_s:.0f} s per epoch measured here ({steps} steps of "
                                   f"{step_s * 1000:.0f} ms + validation); {fits}")
    return epochs


def time_segmentation_step(model: ModelSection, data: DataSection, dataset: DatasetSection, batch: int,
                           device: str, repeats: int = 3, warmup: int = 2) -> tuple[float, float]:
    """Seconds per training step and per forward pass of ``sw_batch_size`` patches (fastest of ``repeats``)."""
    import torch

    from medlens.models import build_segmenter

    torch_device = torch.device("cuda" if device == "gpu" else "cpu")
    k = len(dataset.class_names)
    net = build_segmenter(model.name, in_channels=data.channels, num_classes=k, filters=model.filters,
                          strides=model.strides, kernels=model.kernels, input_size=data.input_size).to(torch_device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, data.channels, *data.input_size, device=torch_device)
    y = torch.randint(0, k, (batch, *data.input_size), device=torch_device)
    train_times, forward_times = [], []
    for i in range(repeats + warmup):
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        _sync(torch_device)
        middle = time.perf_counter()
        with torch.no_grad():
            net(x)
        _sync(torch_device)
        if i >= warmup:
            train_times.append(middle - start)
            forward_times.append(time.perf_counter() - middle)
    return float(min(train_times)), float(min(forward_times))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _augment_section(dataset: DatasetSection, reasons: dict) -> AugmentSection:
    dims = dataset.spatial_dims
    reasons["augment.flip_axes"] = "mirror along every axis (nnU-Net); remove an axis if anatomy forbids it"
    reasons["augment.rotate_deg"] = "rotations up to 15 degrees"
    reasons["augment.scale"] = "+/-15% zoom"
    reasons["augment.gamma"] = "gamma 0.7-1.3 on intensities"
    reasons["augment.noise_std"] = "Gaussian noise, 0.1 standard deviations"
    reasons["augment.elastic"] = "elastic deformation off by default (costly on CPU); e.g. 0.05 to turn it on"
    reasons["augment.probability"] = "each transform applied to 20-30% of patches"
    return AugmentSection(flip_axes=tuple(range(dims)), rotate_deg=15.0, scale=0.15, translate=0.0,
                          intensity=0.1, noise_std=0.1, gamma=0.3, elastic=0.0, probability=0.25)
