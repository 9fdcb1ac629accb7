"""Self-configuration for anomaly detection: from a class-labelled dataset card and the normal class(es) to a
plan with a reason per value.

Input size and encoder come from the classification planner for the same data (the same images, the same
network a classifier would get), and its preprocessing, except that 8-bit images are z-scored per image; then
the anomaly settings: the method, the memory size (bounded as the data grow), the false-positive rate the
threshold is set at, and the epochs of encoder training timed on this machine for the budget.
"""

from __future__ import annotations

import math
from dataclasses import replace

from medlens.config import AnomalySection, AugmentSection, Config, DataSection, TrainSection
from medlens.errors import ConfigError, DatasetError
from medlens.tasks.planning import epochs_in_budget, fastest_step, per_process_batch, processes_reason

CLASS_KINDS = ("binary", "multiclass", "ordinal")  # one class per case: normal or not is decided by it
MEMORY_FRACTION = 0.1  # PatchCore keeps 1-10% of the patch features; 10% on these small images
MEMORY_CAP = {"cpu": 4096, "gpu": 16384}  # memory vectors at most, whatever the data size
TRAIN_SHARE = 0.75  # of the budget for encoder training; the rest builds the memory and scores validation
MAX_EPOCHS = 100


def plan_anomaly(card: dict, *, time_budget_s: float | None = None, device: str = "cpu", processes: int = 1,
                 probe: bool = True, normal: tuple[str, ...] = ()) -> tuple[Config, dict[str, str]]:
    """Choose every setting for a one-class anomaly run on ``card``'s dataset.

    Args:
        card: from :func:`medlens.data.audit.inspect_dataset` (class-labelled data).
        normal: the class name(s) that are normal (``--normal``); every other class is evaluation only.
        time_budget_s, device, processes, probe: as for classification plans.

    Returns:
        ``(config, {"section.key": reason})`` with ``dataset.task = "anomaly"``.

    Raises:
        ConfigError: no normal class given, or one that is not a class of the data.
        DatasetError: data without one class per case, or no normal training case.
    """
    from medlens.tasks.classification.plan import DEFAULT_BUDGET_S, plan_classification

    described = card["dataset"]
    check_normal(described, normal)
    normal_train = normal_training_count(card, normal)
    base, reasons = plan_classification(card, time_budget_s=time_budget_s, device=device, processes=processes,
                                        probe=False)
    reasons = {k: v for k, v in reasons.items() if k.split(".")[0] in ("dataset", "data", "model", "augment")}
    others = ", ".join(c for c in described["class_names"] if c not in normal)
    reasons["dataset.task"] = (f"anomaly: trained on the normal class(es) {', '.join(normal)} only; {others} used "
                               "for evaluation only")
    budget = float(time_budget_s or DEFAULT_BUDGET_S[device])
    config = Config(dataset=replace(base.dataset, task="anomaly"), data=_data(base.data, reasons),
                    model=replace(base.model, members=1, dropout=0.0), augment=_augment(base.augment, reasons))
    anomaly = _anomaly_section(config, normal, normal_train, device, reasons)
    config = replace(config, anomaly=anomaly)
    train = _train_section(config, normal_train, budget, device, probe, processes, reasons)
    reasons.pop("model.members", None)
    reasons.pop("model.dropout", None)
    reasons["pretrain.method"] = ("the encoder (gaussian_knn, gaussian, patchcore) learns from the normal training "
                                  "images by SimCLR (unless --init-from gives it weights to start from); the "
                                  "autoencoder ignores pretrain.*")
    reasons["evaluate.n_bootstrap"] = "1000 bootstrap resamples (patients when known) for 95% CIs"
    return replace(config, train=train), reasons


def check_normal(described: dict, normal: tuple[str, ...]) -> None:
    """``normal`` must name classes of the data, and leave the data labelled one class per case."""
    names = list(described.get("class_names") or [])
    if described["task"] not in CLASS_KINDS:
        raise DatasetError(f"{described['source']} holds {described['task']} data; anomaly detection needs one "
                           "class label per case (class folders, a CSV label column or a MedMNIST .npz) to tell "
                           "normal cases from the others")
    if not normal:
        raise ConfigError(f"anomaly detection needs the normal class: add --normal CLASS (one of {', '.join(names)})")
    unknown = [n for n in normal if n not in names]
    if unknown:
        raise ConfigError(f"--normal {', '.join(unknown)}: no such class in {described['source']}; the classes are "
                          f"{', '.join(names)}")
    if len(set(normal)) == len(names) > 1:  # one class of normal images alone is what --normal opened
        raise ConfigError(f"--normal names every class ({', '.join(names)}): nothing would be anomalous; name only "
                          "the normal class(es)")


def normal_training_count(card: dict, normal: tuple[str, ...]) -> int:
    """Normal cases the training split holds (estimated as 64% of all when splits are made later).

    Raises:
        DatasetError: none.
    """
    counts = card["counts"]
    if "train" in counts["by_split"]:
        n, where = sum(counts["by_split"]["train"].get(c, 0) for c in normal), "the training split"
    else:
        total = sum(counts["total"].get(c, 0) for c in normal)
        n, where = int(total * 0.64), f"{total} in all, of which ~64% go to training"
    if n < 1:
        raise DatasetError(f"no normal training case ({', '.join(normal)}: {where}); an anomaly model learns "
                           "normal images only, so the training split needs some: add them or change the splits")
    return n


def _data(data: DataSection, reasons: dict) -> DataSection:
    """Per-image z-scores instead of the fixed 8-bit scaling; CT windows (absolute units) are kept."""
    if data.normalization != "scale01":
        return data
    reasons["data.normalization"] = (
        "z-score per image: a one-class model flags whatever differs from its normal images, and the brightness "
        "and contrast an acquisition sets (exposure, gain) would count as such. Chosen on validation AUROC "
        "(gaussian_knn, 5-minute encoders): PneumoniaMNIST 0.923 -> 0.957 (135 normal / 389 pneumonia), "
        "BreastMNIST 0.758 -> 0.743 (57 / 21 cases: +/-0.1); mean 0.841 -> 0.850")
    reasons.pop("data.intensity_range", None)
    return replace(data, normalization="zscore", intensity_range=())


def _augment(augment: AugmentSection, reasons: dict) -> AugmentSection:
    reasons["augment.probability"] = ("the classification recipe: the encoder's self-supervised views are augmented "
                                      "copies of normal images (no colour jitter)")
    return augment


def _anomaly_section(config: Config, normal: tuple[str, ...], normal_train: int, device: str,
                     reasons: dict) -> AnomalySection:
    reasons["anomaly.normal"] = "--normal"
    reasons["anomaly.method"] = (
        "gaussian_knn: a Gaussian of normal images' channel means and sds at the encoder's deepest stage (Mahalanobis "
        "distance, Rippel et al. 2020) plus the distance to the nearest normal training image's pooled feature "
        "(Bergman et al. 2020), each term divided by its median on normal validation cases. Chosen on validation "
        "AUROC, 5-minute SimCLR encoders, per-image z-scores: PneumoniaMNIST 0.957, BreastMNIST 0.743 (gaussian "
        "alone 0.957 / 0.652; nearest image alone 0.813 / 0.771): the Gaussian sees an image far from the bulk of "
        "the normal ones, the nearest image one unlike any single normal image. Both judge the whole image, and "
        "these changes are diffuse. anomaly.method=patchcore keeps a memory of normal patch features (small local "
        f"anomalies); anomaly.method=autoencoder (model.name=autoencoder_{config.dataset.spatial_dims}d) to compare")
    reasons["anomaly.fpr"] = "5% of normal validation cases may score above the threshold (set it with --set)"
    reasons["anomaly.neighbours"] = "patchcore: distance to the single nearest normal patch (PatchCore's score)"
    patches = math.prod(patch_grid(config))
    features = normal_train * patches
    size = max(1, min(max(math.ceil(MEMORY_FRACTION * features), normal_train), MEMORY_CAP[device]))
    reasons["anomaly.memory_size"] = (f"gaussian_knn: every normal training image (~{normal_train}); patchcore: "
                                      f"{MEMORY_FRACTION:.0%} of the ~{features} normal patch features ({patches} "
                                      f"per image); the larger, at most {MEMORY_CAP[device]} on {device} (a coreset "
                                      "beyond) so memory and scoring time stay bounded as data grow")
    return AnomalySection(normal=tuple(normal), method="gaussian_knn", fpr=0.05, memory_size=size, neighbours=1)


def patch_grid(config: Config) -> tuple[int, ...]:
    """The grid of patch features the plan's encoder gives for one image."""
    from medlens.tasks.anomaly.task import AnomalyTask

    return AnomalyTask().build_model(replace(config, anomaly=replace(config.anomaly, method="patchcore",
                                                                      memory_size=1))).grid


def _train_section(config: Config, normal_train: int, budget_s: float, device: str, probe: bool, processes: int,
                   reasons: dict) -> TrainSection:
    batch = int(min(64, max(8, 2 ** int(math.log2(max(normal_train, 16) / 8)))))
    reasons["train.batch_size"] = f"{batch}: ~8 steps per epoch or more; every other view in a batch is a negative"
    batch = per_process_batch(batch, processes, reasons)
    reasons["train.processes"] = processes_reason(processes)
    steps = max(normal_train // (batch * processes), 1)
    epochs = _epochs(config, batch, steps, budget_s, device, probe, reasons)
    reasons["train.monitor"] = "the encoder's self-supervised loss on normal validation images"
    reasons["train.lr"] = "1e-3 with cosine decay, per step (AdamW)"
    reasons["train.patience"] = "stop when the validation loss has not improved for a quarter of the epochs"
    reasons["train.time_budget_s"] = "hard stop; the epochs above were planned to fit it"
    return TrainSection(max_epochs=epochs, batch_size=batch, optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                        schedule="cosine", patience=max(3, epochs // 4), monitor="val_loss",
                        time_budget_s=round(budget_s, 1), processes=processes)


def _epochs(config: Config, batch: int, steps: int, budget_s: float, device: str, probe: bool, reasons: dict) -> int:
    if not probe:
        reasons["train.max_epochs"] = "default (the network was not timed)"
        return 10
    step_s = time_step(config, batch, device)
    epoch_s = steps * step_s * 1.15 + 0.5
    epochs, fits = epochs_in_budget(budget_s, epoch_s, most=MAX_EPOCHS, share=TRAIN_SHARE)
    reasons["train.max_epochs"] = (f"{epoch_s:.1f} s per epoch measured here ({steps} steps of {step_s * 1000:.0f} ms, "
                                   f"two views per image for the encoder); {fits}; the rest builds the memory")
    return epochs


def time_step(config: Config, batch: int, device: str, repeats: int = 3, warmup: int = 1) -> float:
    """Seconds per training step of the planned network on random input (the fastest of ``repeats``)."""
    import torch

    from medlens.tasks.anomaly.task import AnomalyTask

    torch_device = torch.device("cuda" if device == "gpu" else "cpu")
    config = replace(config, anomaly=replace(config.anomaly, memory_size=1))
    net = AnomalyTask().build_model(config).to(torch_device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch * (2 if config.anomaly.method != "autoencoder" else 1), config.data.channels,
                    *config.data.input_size, device=torch_device)

    def step():
        optimizer.zero_grad()
        out = net.reconstruct(x) if config.anomaly.method == "autoencoder" else net.forward_features(x)
        out.float().pow(2).mean().backward()
        optimizer.step()

    return fastest_step(step, cuda=torch_device.type == "cuda", repeats=repeats, warmup=warmup)
