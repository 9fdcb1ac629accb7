"""Self-configuration for detection, from the card's box statistics.

The grid: the median spacing (a PNG pixel counts as 1 mm), coarsened while the image is larger than the
device's pixel budget but never so far that the smallest objects (the smallest class's 25th percentile side)
fall below :data:`MIN_OBJECT` voxels. The patch: the median image on that grid (capped by the budget),
rounded up to what the network divides. The feature pyramid: from stride 4 (or 8 when even the small
objects are large) with enough levels that the anchors, doubling per level, reach the large objects (the
largest class's 95th percentile). The anchors: three shapes at the finest level, the small objects' size
times the boxes' 25th, 50th and 75th percentile aspect. Epochs: what the time budget allows, timed here.
"""

from __future__ import annotations

import math
import time

import numpy as np

from medlens.config import (
    AugmentSection,
    Config,
    DataSection,
    DatasetSection,
    DetectSection,
    EvaluateSection,
    ModelSection,
    TrainSection,
)
from medlens.errors import DatasetError
from medlens.tasks.planning import axis_stat, epochs_in_budget, per_process_batch, processes_reason

KINDS = ("detection",)
DEFAULT_BUDGET_S = {"cpu": 1500.0, "gpu": 3600.0}
GRID_VOXELS = {("cpu", 2): 320 * 256, ("cpu", 3): 96 * 96 * 64, ("gpu", 2): 800 * 800, ("gpu", 3): 160 ** 3}
PATCH_VOXELS = {("cpu", 2): 512 * 512, ("cpu", 3): 96 * 96 * 64, ("gpu", 2): 1024 * 1024, ("gpu", 3): 128 ** 3}
BATCH = {("cpu", 2): 8, ("cpu", 3): 2, ("gpu", 2): 16, ("gpu", 3): 4}
FILTERS = (32, 64, 128, 256)
MIN_OBJECT = 12.0  # voxels: the smallest objects' side on the planned grid
MAX_LEVELS = 5
ASPECT_SPREAD = 1.25  # anchors of three aspects when the boxes' 75th / 25th percentile shapes differ more


def plan_detection(card: dict, *, time_budget_s: float | None = None, device: str = "cpu", processes: int = 1,
                   probe: bool = True) -> tuple[Config, dict[str, str]]:
    """Choose every detection setting for ``card``'s dataset; returns the config and the reasons.

    Args:
        card: from :func:`medlens.data.audit.inspect_dataset` on a detection dataset (with ``card["boxes"]``).
        time_budget_s: training time to plan for; default 25 min on CPU, 60 min on GPU.
        device: ``"cpu"`` or ``"gpu"``.
        processes: training processes (devices x nodes).
        probe: time the network to set the epoch count (off in unit tests of the rules).
    """
    reasons: dict[str, str] = {}
    dataset = _dataset_section(card, reasons)
    dims = dataset.spatial_dims
    small, large, aspects = box_sizes(card, dims)
    data, zoom = _data_section(card, dataset, small, device, reasons)
    detect, model = _network(small * zoom, large * zoom, aspects, dims, reasons)
    data = _fit_patch(data, model, detect, reasons)
    budget = float(time_budget_s or DEFAULT_BUDGET_S[device])
    train = _train_section(card, dataset, data, model, detect, budget, device, probe, processes, reasons)
    augment = _augment_section(dims, reasons)
    reasons["evaluate.n_bootstrap"] = "1000 bootstrap resamples of images (patients when known) for 95% CIs"
    config = Config(dataset=dataset, data=data, model=model, augment=augment, train=train, detect=detect,
                    evaluate=EvaluateSection())
    return config, reasons


def _dataset_section(card: dict, reasons: dict) -> DatasetSection:
    described = card["dataset"]
    if described["task"] not in KINDS:
        raise DatasetError(f"{described['source']} is a {described['task']} dataset, not images with boxes")
    if not described.get("spatial_dims"):
        raise DatasetError(f"{described['source']}: no readable image, so nothing to plan; run `medlens inspect`")
    from_masks = bool(described.get("meta", {}).get("boxes_from_masks"))
    reasons["dataset.task"] = f"boxes found ({described['layout']} layout)" + (
        ", one per connected component of each mask label" if from_masks else "")
    reasons["dataset.class_names"] = "the box labels, in the order the annotations declare"
    if from_masks:
        reasons["dataset.boxes_from_masks"] = "--boxes-from-masks: boxes around each label's connected components"
    return DatasetSection(source=described["source"], layout=described["layout"], task="detection",
                          class_names=tuple(described["class_names"]), spatial_dims=int(described["spatial_dims"]),
                          modality=str(described.get("modality") or ""), fingerprint=card.get("fingerprint", ""),
                          boxes_from_masks=from_masks)


def box_sizes(card: dict, dims: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """From ``card["boxes"]``: the small objects' sides ``(D,)`` (the smallest class's 25th percentiles), the
    large objects' sides ``(D,)`` (the largest class's 95th percentiles), and three relative shapes ``(D,)``
    (sides over their geometric mean at the 25th, 50th and 75th percentile), all in original voxels.

    Raises:
        DatasetError: the card has no box statistics (no image with a box).
    """
    classes = (card.get("boxes") or {}).get("per_class") or {}
    sides = {name: c["size_vox"] for name, c in classes.items() if c.get("boxes")}
    if not sides:
        raise DatasetError(f"{card['dataset']['source']}: no image has a box, so there is nothing to detect; check "
                           "the annotation files (or use --boxes-from-masks on a segmentation dataset)")
    quantile = lambda stats, q: np.asarray([stats[f"axis{a}"][f"p{q}"] for a in range(dims)], float)  # noqa: E731
    small = min((quantile(s, 25) for s in sides.values()), key=lambda v: float(np.prod(v)))
    large = max((quantile(s, 95) for s in sides.values()), key=lambda v: float(np.prod(v)))
    aspects = []
    for q in (25, 50, 75):
        shape = np.mean([quantile(s, q) for s in sides.values()], axis=0)
        aspects.append(shape / float(np.prod(shape)) ** (1 / dims))
    return np.maximum(small, 1.0), np.maximum(large, 1.0), aspects


def _data_section(card, dataset: DatasetSection, small: np.ndarray, device: str,
                  reasons: dict) -> tuple[DataSection, float]:
    images, dims = card["images"], dataset.spatial_dims
    spacing = np.asarray([axis_stat(images.get("spacing_mm"), a, "median", 1.0) for a in range(dims)])
    if not images.get("spacing_known", True):
        spacing = np.ones(dims)
    shape = np.asarray([axis_stat(images["shape"], a, "median", 64) for a in range(dims)])
    budget = GRID_VOXELS[(device, dims)]
    fit = (budget / float(np.prod(shape))) ** (1 / dims)  # the zoom that makes the median image fill the budget
    keep_small = MIN_OBJECT / float(np.min(small))
    # coarsen to the budget, but not below the small objects' need; enlarge (<= 2x) only within the budget
    zoom = float(np.clip(max(min(1.0, fit), keep_small), 0.05, max(1.0, min(2.0, fit))))
    target = tuple(round(float(s / zoom), 4) for s in spacing)
    reasons["data.target_spacing"] = (
        f"the median spacing {[round(float(s), 3) for s in spacing]} scaled by {zoom:.2f}: the median image "
        f"{[int(s) for s in shape]} becomes {[round(float(s * zoom)) for s in shape]}, within {budget} voxels on "
        f"{device.upper()} while the smallest objects keep >= {MIN_OBJECT:.0f} voxels (a pixel without spacing "
        "counts as 1 mm)")
    channels = max(int(c) for c in images["channels"])
    reasons["data.channels"] = "channels of the images"
    reasons["data.normalization"] = "z-score per image and channel"
    grid = tuple(int(round(float(s * zoom))) for s in shape)
    patch_cap = PATCH_VOXELS[(device, dims)]
    side = patch_cap ** (1 / dims)
    patch = tuple(int(min(g, side * 1.5)) for g in grid)
    while math.prod(patch) > patch_cap:
        patch = tuple(max(int(p * 0.9), 16) for p in patch)
    data = DataSection(input_size=patch, channels=channels, normalization="zscore", target_spacing=target)
    return data, zoom


def _network(small: np.ndarray, large: np.ndarray, aspects: list[np.ndarray], dims: int,
             reasons: dict) -> tuple[DetectSection, ModelSection]:
    size = float(np.prod(small)) ** (1 / dims)
    top = float(np.prod(large)) ** (1 / dims)
    first = 1 if size < 24 else 2
    levels = int(np.clip(math.ceil(math.log2(max(top / size, 1.0))) + 1, 2, MAX_LEVELS - first + 1))
    returned = tuple(range(first, first + levels - 1))
    spread = float(np.max(aspects[2] / aspects[0]))
    if spread > ASPECT_SPREAD:
        anchors = tuple(tuple(round(float(size * r), 1) for r in ratio) for ratio in aspects)
        shapes = "the boxes' 25th / 50th / 75th percentile aspect"
    else:
        anchors = tuple(tuple(round(float(size * r * 2 ** (k / 3)), 1) for r in aspects[1]) for k in range(3))
        shapes = "the median aspect at 1, 2^(1/3) and 2^(2/3) times (the boxes are alike in shape)"
    stride = 2 ** (first + 1)
    reasons["detect.anchors"] = (f"three shapes at the finest level (stride {stride}): the small objects' side "
                                 f"{size:.0f} voxels on the planned grid, {shapes}; each coarser level doubles them")
    reasons["detect.returned_layers"] = (f"pyramid levels from stride {stride}, {levels} in all, so anchors reach "
                                         f"{size * 2 ** (levels - 1):.0f} voxels (large objects: {top:.0f})")
    reasons["detect.fpn_channels"] = "64 channels in the pyramid and the heads"
    reasons["detect.iterations_per_epoch"] = "one pass over the training images per epoch"
    reasons["detect.positive_fraction"] = "half the patches of images larger than a patch are centred on a box"
    reasons["detect.score_threshold"] = "keep boxes scored 0.05 or more (low, so mAP and FROC see the whole curve)"
    reasons["detect.nms_iou"] = "per-class non-maximum suppression above IoU 0.5"
    reasons["detect.max_detections"] = "at most 100 boxes per image (COCO's limit)"
    reasons["detect.froc_iou"] = "a detection counts as a hit for FROC at IoU >= 0.1 (MONAI's LUNA16 evaluation)"
    reasons["model.name"] = f"MONAI RetinaNet ({dims}D) on a ResNet with a feature pyramid, trained from scratch"
    filters = FILTERS[:max(returned)]
    reasons["model.filters"] = f"ResNet layer channels {list(filters)}, one residual block each"
    detect = DetectSection(anchors=anchors, returned_layers=returned)
    return detect, ModelSection(name=f"retinanet_{dims}d", filters=filters)


def _fit_patch(data: DataSection, model: ModelSection, detect: DetectSection, reasons: dict) -> DataSection:
    from medlens.models.detectors import network_multiple

    multiple = network_multiple(len(data.input_size), detect.returned_layers)
    patch = tuple(max(-(-p // m) * m, m) for p, m in zip(data.input_size, multiple))
    reasons["data.input_size"] = (f"training patch: the median image on the planned grid, within the device's "
                                  f"budget, rounded up to a multiple of {list(multiple)} (the coarsest level's "
                                  "stride); larger images are predicted by sliding windows")
    return DataSection(**{**data.__dict__, "input_size": patch})


def _train_section(card, dataset, data, model, detect, budget_s, device, probe, processes, reasons) -> TrainSection:
    dims = dataset.spatial_dims
    batch = per_process_batch(BATCH[(device, dims)], processes, reasons)
    reasons.setdefault("train.batch_size", f"{batch} patches per step on {device.upper()}")
    train_images = max(int(round(card["dataset"].get("num_readable", 10) * 0.64)), 1)
    steps = max(math.ceil(train_images / (batch * processes)), 1)
    epochs = _epochs(card, data, model, detect, dataset, batch, steps, budget_s, device, probe, reasons)
    patience = max(15, epochs // 3)
    reasons["train.patience"] = f"stop when validation mAP has not improved for {patience} epochs"
    reasons["train.lr"] = "AdamW 1e-3 with a cosine schedule"
    reasons["train.monitor"] = ("validation mAP over IoU 0.5:0.95 chooses the best checkpoint (mAP@0.5 saturates "
                                "on easy sets, and the tighter boxes are the better model)")
    reasons["train.time_budget_s"] = "hard stop: training ends at this time even mid-plan"
    reasons["train.processes"] = processes_reason(processes)
    return TrainSection(max_epochs=epochs, batch_size=batch, optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                        schedule="cosine", patience=patience, monitor="val_map",
                        time_budget_s=budget_s, processes=processes)


def _epochs(card, data, model, detect, dataset, batch, steps, budget_s, device, probe, reasons) -> int:
    if not probe:
        reasons["train.max_epochs"] = "default (the network was not timed)"
        return 40
    step_s, forward_s = time_detection_step(model, data, detect, dataset, batch, device)
    val_images = max(int(round(card["dataset"].get("num_readable", 10) * 0.16)), 1)
    epoch_s = steps * step_s * 1.1 + val_images * forward_s
    epochs, fits = epochs_in_budget(budget_s, epoch_s, most=1000)
    reasons["train.max_epochs"] = (f"{epoch_s:.0f} s per epoch measured here ({steps} steps of {step_s * 1000:.0f} ms "
                                   f"+ validation); {fits}")
    return epochs


def time_detection_step(model: ModelSection, data: DataSection, detect: DetectSection, dataset: DatasetSection,
                        batch: int, device: str, repeats: int = 2, warmup: int = 1) -> tuple[float, float]:
    """Seconds per training step (random boxes) and per forward pass of one patch (fastest of ``repeats``)."""
    import torch

    from medlens.tasks.detection.task import build_network

    torch_device = torch.device("cuda" if device == "gpu" else "cpu")
    config = Config(dataset=dataset, data=data, model=model, detect=detect)
    net = build_network(config).to(torch_device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, data.channels, *data.input_size, device=torch_device)
    side = torch.tensor([float(s) for s in data.input_size], device=torch_device)
    box = torch.cat([side * 0.3, side * 0.6])[None]
    targets = [{"box": box, "label": torch.zeros(1, dtype=torch.long, device=torch_device)}] * batch
    train_times, forward_times = [], []
    for i in range(repeats + warmup):
        start = time.perf_counter()
        net.train()
        optimizer.zero_grad()
        losses = net(x, targets)
        (losses["classification"] + losses["box_regression"]).backward()
        optimizer.step()
        middle = time.perf_counter()
        net.eval()
        with torch.no_grad():
            net(x[:1], use_inferer=False)
        if i >= warmup:
            train_times.append(middle - start)
            forward_times.append(time.perf_counter() - middle)
    return float(min(train_times)), float(min(forward_times))


def _augment_section(dims: int, reasons: dict) -> AugmentSection:
    reasons["augment.flip_axes"] = "mirror along every axis (boxes mirrored with the image); remove an axis if " \
                                   "anatomy forbids it"
    reasons["augment.intensity"] = "+/-10% intensity scale and shift"
    reasons["augment.noise_std"] = "Gaussian noise, 0.05 standard deviations"
    reasons["augment.probability"] = "each intensity transform applied to half the patches"
    return AugmentSection(flip_axes=tuple(range(dims)), intensity=0.1, noise_std=0.05, probability=0.5)
