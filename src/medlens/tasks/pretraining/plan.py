"""Self-configuration for contrastive pretraining: a dataset card -> a plan with a reason per value.

The preprocessing, network and input size are the classification planner's for the same data, so the
encoder learnt here is the one ``medlens train DATA --init-from RUN`` builds and fills. What differs is
pretraining's own: a larger batch (every other image of a batch is a negative for SimCLR), views made by
stronger augmentation, and epochs timed on this machine for the budget. Labels, if any, are ignored.
"""

from __future__ import annotations

import numpy as np

from medlens.config import AugmentSection, Config, DatasetSection, EvaluateSection, PretrainSection, TrainSection
from medlens.errors import DatasetError
from medlens.tasks.classification.plan import (
    DEFAULT_BUDGET_S,
    _data_section,
    _model_section,
    _split_count,
    time_training_step,
)
from medlens.tasks.planning import per_process_batch, processes_reason

MAX_EPOCHS = 200  # contrastive learning improves slowly over many epochs (SimCLR trains hundreds)
DEFAULT_EPOCHS = 30  # when the network is not timed (unit tests of the rules)


def plan_pretraining(card: dict, *, time_budget_s: float | None = None, device: str = "cpu", processes: int = 1,
                     probe: bool = True) -> tuple[Config, dict[str, str]]:
    """Choose every setting for pretraining an encoder on ``card``'s images; returns the config and
    ``{"section.key": reason}``.

    Args:
        card: from :func:`medlens.data.audit.inspect_dataset` (any data kind: labels are not used).
        time_budget_s: training time to plan for; default 10 min on CPU, 30 min on GPU.
        device: ``"cpu"`` or ``"gpu"``.
        processes: training processes (devices x nodes).
        probe: time the network to set the epoch count (off in unit tests of the rules).

    Raises:
        DatasetError: no readable image to plan from.
    """
    reasons: dict[str, str] = {}
    dataset = _dataset_section(card, reasons)
    data = _data_section(card, dataset, device, reasons)
    model = _model_section(dataset, data, device, reasons)
    reasons["model.name"] += "; the same network `medlens train DATA --init-from RUN` fine-tunes"
    budget = float(time_budget_s or DEFAULT_BUDGET_S[device])
    train = _train_section(card, dataset, data, model, budget, device, probe, processes, reasons)
    config = Config(dataset=dataset, data=data, model=model, augment=_augment_section(reasons), train=train,
                    pretrain=_pretrain_section(reasons), evaluate=EvaluateSection())
    reasons["evaluate.n_bootstrap"] = "1000 bootstrap resamples (patients when known) for the probe's 95% CI"
    return config, reasons


def _dataset_section(card: dict, reasons: dict) -> DatasetSection:
    described = card["dataset"]
    if not described.get("spatial_dims"):
        raise DatasetError(f"{described['source']}: no readable image, so nothing to plan; run `medlens inspect`")
    names = tuple(described.get("class_names") or ())
    reasons["dataset.task"] = "self-supervised pretraining: an encoder learnt from the images alone"
    reasons["dataset.class_names"] = ("not used for training; a k-nearest-neighbours probe on the learnt features "
                                      "scores them after training" if names else "images without labels")
    return DatasetSection(source=described["source"], layout=described["layout"], task="pretraining",
                          class_names=names, spatial_dims=int(described["spatial_dims"]),
                          modality=str(described.get("modality") or ""), fingerprint=card.get("fingerprint", ""))


def batch_size(input_size: tuple[int, ...], channels: int, train_n: int, device: str = "cpu") -> int:
    """The largest of 256, 128, ... 8 whose two views fit the input memory of a classification batch of 128
    28x28x28 images (~2.8 MB of float32) on CPU, 16 times that on GPU, and that leaves at least 4 steps per
    epoch (4 when not even 8 fit)."""
    voxels = int(np.prod(input_size)) * channels * 2
    budget = (32 * 28**3 if len(input_size) == 3 else 256 * 28**3 // 4) * (16 if device == "gpu" else 1)
    fitting = [b for b in (256, 128, 64, 32, 16, 8) if b * voxels <= budget] or [4]
    return max(min(fitting[0], 2 ** int(np.log2(max(train_n // 4, 1)))), min(8, fitting[0]))


def _train_section(card, dataset, data, model, budget_s, device, probe, processes, reasons) -> TrainSection:
    train_n = _split_count(card, "train")
    batch = batch_size(tuple(data.input_size), data.channels, train_n, device)
    reasons["train.batch_size"] = (f"{batch} images ({2 * batch} views) per step: SimCLR contrasts each view with "
                                   f"the {2 * batch - 2} other views of the batch, so bigger is better within memory "
                                   f"for {'x'.join(map(str, data.input_size))} inputs and {train_n} training images")
    batch = per_process_batch(batch, processes, reasons)
    reasons["train.processes"] = processes_reason(processes)
    epochs = _epochs(dataset, data, model, batch, train_n // max(processes, 1), budget_s, device, probe, reasons)
    reasons["train.optimizer"] = "AdamW: robust without per-dataset tuning at these batch sizes (no LARS needed)"
    reasons["train.lr"] = "1e-3 with cosine decay, per step"
    reasons["train.weight_decay"] = "1e-5: contrastive encoders are regularised by the views, not by shrinkage"
    reasons["train.monitor"] = "validation NT-Xent loss on fixed views: the only score without labels"
    reasons["train.patience"] = ("the whole schedule: the contrastive loss keeps falling slowly, so training stops "
                                 "at the planned epochs or the time budget")
    reasons["train.time_budget_s"] = "hard stop; the epoch count above was planned to fit it"
    reasons["train.precision"] = "mixed precision on GPU, 32-bit on CPU"
    return TrainSection(max_epochs=epochs, batch_size=batch, optimizer="adamw", lr=1e-3, weight_decay=1e-5,
                        schedule="cosine", patience=epochs, monitor="val_loss", time_budget_s=round(budget_s, 1),
                        precision="auto", processes=processes)


def _epochs(dataset, data, model, batch, train_n, budget_s, device, probe, reasons) -> int:
    """Epochs that fit 85% of the budget, from a timed step of the network on ``2 * batch`` images (both views)."""
    steps = max(-(-train_n // batch), 1)
    if not probe:
        reasons["train.max_epochs"] = "default (the network was not timed)"
        return DEFAULT_EPOCHS
    step_s = time_training_step(model, data, dataset, 2 * batch, device)
    epoch_s = steps * step_s * 1.25 + 0.5  # view augmentation, validation, checkpoints and logs
    epochs = int(np.clip(int(0.85 * budget_s // epoch_s), 1, MAX_EPOCHS))
    reasons["train.max_epochs"] = (f"{epoch_s:.1f} s per epoch measured here ({steps} steps of {step_s * 1000:.0f} "
                                   f"ms for {2 * batch} views); {epochs} epochs fit 85% of the {budget_s:.0f} s "
                                   f"budget (1..{MAX_EPOCHS})")
    return epochs


def _augment_section(reasons: dict) -> AugmentSection:
    """The views' augmentations after the random crop: SimCLR's recipe with medical stand-ins for colour."""
    reasons["augment.flip_axes"] = "left-right mirroring (axis 0): the same anatomy seen from the other side"
    reasons["augment.rotate_deg"] = "15 degrees: positioning varies between acquisitions"
    reasons["augment.scale"] = "+/-10% zoom on top of the random crop"
    reasons["augment.translate"] = "none: the random crop already moves the field of view"
    reasons["augment.intensity"] = ("+/-30% brightness/contrast: the grey-scale stand-in for SimCLR's colour "
                                    "distortion (no colour jitter, no grey-scale conversion on medical images)")
    reasons["augment.gamma"] = "gamma in [0.7, 1.3]: scanners and windowing differ in their intensity curves"
    reasons["augment.noise_std"] = "Gaussian noise of 0.05: the encoder must not rely on pixel-level texture"
    reasons["augment.probability"] = "each transform on 80% of the views (SimCLR's colour distortion rate)"
    return AugmentSection(flip_axes=(0,), rotate_deg=15.0, scale=0.1, translate=0.0, intensity=0.3, gamma=0.3,
                          noise_std=0.05, probability=0.8)


def _pretrain_section(reasons: dict) -> PretrainSection:
    reasons["pretrain.method"] = "SimCLR (Chen et al. 2020): two views of an image attract, other images repel"
    reasons["pretrain.temperature"] = "0.1: sharper than MONAI's 0.5 default, as SimCLR found best for small batches"
    reasons["pretrain.projection_dim"] = "128 (SimCLR): the loss sees this projection, the encoder keeps more"
    reasons["pretrain.crop_scale"] = ("views are crops of at least half of each axis (a quarter of the area in 2D), "
                                      "resized back: the encoder must recognise a part as the whole")
    return PretrainSection(method="simclr", temperature=0.1, projection_dim=128, crop_scale=0.5)
