"""Self-configuration for contrastive pretraining: a dataset card -> a plan with a reason per value.

The preprocessing, network and input size are the classification planner's for the same data, so the
encoder learnt here is the one ``medlens train DATA --init-from RUN`` builds and fills. What differs is
pretraining's own: a larger batch (every other image of a batch is a negative for SimCLR), views made by
stronger augmentation, and a batch and epochs timed on this machine for the budget. Labels, if any, are ignored.

The batch is chosen for steps, not negatives (:func:`budget_batch`): the largest that memory allows and that
still leaves 300 optimisation steps in the budget, at least 32. Measured on the shared 2-core CPU (one thread,
the CPU plan's ResNet-18 2D width 0.25, 28x28, temperature 0.2 unless said; VALIDATION splits only; fine-tuning
with 10% of the training labels, all layers, 12 epochs on PneumoniaMNIST, 40 on BreastMNIST, final val AUC):

- PneumoniaMNIST, the old rule (batch 256, temperature 0.1): 5 steps in 150 s, NT-Xent 6.04 -> 6.04 (nothing learnt).
- PneumoniaMNIST, batch 64, 54 steps (~150 s): loss 4.78 -> 4.42; fine-tuned 0.9910 (scratch 0.9904).
- PneumoniaMNIST, batch 32, 476 steps (~6 min): loss 4.06 -> 3.10; k-NN probe balanced accuracy 0.907 (random
  init 0.838); fine-tuned 0.9945 (scratch 0.9904; 0.9926 vs 0.9447 after 3 epochs). Validation is near its ceiling.
- BreastMNIST, batch 32, 913 steps (~4 min): loss 3.95 -> 2.15; k-NN probe AUC 0.840 (random init 0.671);
  fine-tuned over 3 label draws 0.805 / 0.885 / 0.828 (mean 0.839), scratch 0.666 / 0.731 / 0.780 (mean 0.726).
- ``medlens pretrain pneumoniamnist.npz --time-budget 5m`` with this rule: batch 32, 444 steps planned from a
  364 ms step; under others' load (~2 s a step) the budget stopped it at 149 steps, and its k-NN probe was below
  random initialisation (val accuracy 0.885 vs 0.945): SimCLR needs a few hundred steps before it helps.
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
TARGET_STEPS = 300  # optimisation steps the batch is chosen to leave in the budget (see budget_batch)
SMALLEST_BATCH = 32  # 62 negatives per view: below this NT-Xent has too few images to contrast with
UNTIMED_BATCH = 64  # the batch when the network is not timed


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
    epoch (4 when not even 8 fit): the most a step may take, before the budget is asked (:func:`budget_batch`)."""
    voxels = int(np.prod(input_size)) * channels * 2
    budget = (32 * 28**3 if len(input_size) == 3 else 256 * 28**3 // 4) * (16 if device == "gpu" else 1)
    fitting = [b for b in (256, 128, 64, 32, 16, 8) if b * voxels <= budget] or [4]
    return max(min(fitting[0], 2 ** int(np.log2(max(train_n // 4, 1)))), min(8, fitting[0]))


def budget_batch(largest: int, step_s_per_image: float, budget_s: float) -> int:
    """The largest batch (``largest``, halved down to :data:`SMALLEST_BATCH`) whose timed steps still give
    :data:`TARGET_STEPS` optimisation steps within 85% of the budget; the smallest when none does.

    Args:
        largest: the memory's limit, from :func:`batch_size`.
        step_s_per_image: seconds of one training step per image (both views), timed here.
        budget_s: the training budget.
    """
    batch = largest
    while batch > min(SMALLEST_BATCH, largest) and _steps_in(budget_s, batch * step_s_per_image) < TARGET_STEPS:
        batch //= 2
    return batch


def _steps_in(budget_s: float, step_s: float) -> int:
    """Optimisation steps that fit 85% of the budget, a step costing ``step_s`` plus 25% for the views,
    validation, checkpoints and logs."""
    return int(0.85 * budget_s // (step_s * 1.25))


def _train_section(card, dataset, data, model, budget_s, device, probe, processes, reasons) -> TrainSection:
    train_n = _split_count(card, "train")
    largest = batch_size(tuple(data.input_size), data.channels, train_n, device)
    batch, epochs = _batch_and_epochs(dataset, data, model, largest, train_n, budget_s, device, probe, reasons)
    batch = per_process_batch(batch, processes, reasons)
    reasons["train.processes"] = processes_reason(processes)
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


def _batch_and_epochs(dataset, data, model, largest, train_n, budget_s, device, probe, reasons) -> tuple[int, int]:
    """The batch (:func:`budget_batch` from a timed step of both views) and the epochs that fit 85% of the
    budget; without timing, the memory's batch capped at :data:`UNTIMED_BATCH` and :data:`DEFAULT_EPOCHS`."""
    size = "x".join(map(str, data.input_size))
    if not probe:
        batch = min(largest, UNTIMED_BATCH)
        reasons["train.batch_size"] = (f"{batch} images ({2 * batch} views) per step: at most {UNTIMED_BATCH} (the "
                                       f"network was not timed) and what memory allows for {size} inputs and "
                                       f"{train_n} training images")
        reasons["train.max_epochs"] = "default (the network was not timed)"
        return batch, DEFAULT_EPOCHS
    small = min(SMALLEST_BATCH, largest)
    per_image = time_training_step(model, data, dataset, 2 * small, device) / small
    batch = budget_batch(largest, per_image, budget_s)
    step_s = per_image * batch if batch == small else time_training_step(model, data, dataset, 2 * batch, device)
    steps = max(-(-train_n // batch), 1)
    epochs = int(np.clip(_steps_in(budget_s, step_s) // steps, 1, MAX_EPOCHS))
    cut = (f"; not even one epoch fits, so the budget stops it mid-epoch (after about "
           f"{_steps_in(budget_s, step_s) / steps:.0%} of its steps)" if _steps_in(budget_s, step_s) < steps else "")
    reasons["train.batch_size"] = (
        f"{batch} images ({2 * batch} views) per step: the largest batch (of at most {largest} for memory with "
        f"{size} inputs) that still gives {TARGET_STEPS} optimisation steps in the budget ({SMALLEST_BATCH} at "
        f"least): within CPU minutes steps matter more than negatives (measured: docs/guide/pretraining.md)")
    reasons["train.max_epochs"] = (f"{steps} steps of {step_s * 1000:.0f} ms ({2 * batch} views) per epoch, measured "
                                   f"here; {epochs} epochs ({epochs * steps} steps) fit 85% of the {budget_s:.0f} s "
                                   f"budget (1..{MAX_EPOCHS}){cut}")
    return batch, epochs


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
    reasons["pretrain.temperature"] = ("0.2: within SimCLR's 0.1-0.2 for batches of 32-256 (sharper than MONAI's 0.5 "
                                       "default); the measured CPU runs used it (0.1 was not compared)")
    reasons["pretrain.projection_dim"] = "128 (SimCLR): the loss sees this projection, the encoder keeps more"
    reasons["pretrain.crop_scale"] = ("views are crops of at least half of each axis (a quarter of the area in 2D), "
                                      "resized back: the encoder must recognise a part as the whole")
    return PretrainSection(method="simclr", temperature=0.2, projection_dim=128, crop_scale=0.5)
