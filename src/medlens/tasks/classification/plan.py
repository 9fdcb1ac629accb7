"""Self-configuration for classification: from a dataset card to a plan with a reason per value.

Rules are written as small functions over the card (what the audit measured) so each choice can
be read, tested and explained. The epoch count is not a guess: the chosen network is timed for
a few steps on this machine and the epochs that fit the time budget are planned.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from medlens.config import (
    AugmentSection,
    ClinicalSection,
    Config,
    DataSection,
    DatasetSection,
    EvaluateSection,
    ModelSection,
    TrainSection,
)
from medlens.data.views import input_channels
from medlens.errors import DatasetError
from medlens.tasks.classification.inputs import build_network, has_clinical
from medlens.tasks.classification.plan_inputs import plan_clinical, plan_fusion, plan_views
from medlens.tasks.planning import epochs_in_budget, fastest_step, per_process_batch, processes_reason

DEFAULT_BUDGET_S = {"cpu": 600.0, "gpu": 1800.0}
KINDS = ("binary", "multiclass", "multilabel", "ordinal")  # the label kinds this task trains


def plan_classification(card: dict, *, time_budget_s: float | None = None, device: str = "cpu",
                        processes: int = 1, probe: bool = True) -> tuple[Config, dict[str, str]]:
    """Choose every setting for ``card``'s dataset; returns the config and ``{"section.key": reason}``.

    Args:
        card: from :func:`medlens.data.audit.inspect_dataset`.
        time_budget_s: training time to plan for; default 10 min on CPU, 30 min on GPU.
        device: ``"cpu"`` or ``"gpu"`` (what training will run on).
        processes: training processes (devices x nodes): each takes its share of every batch and epoch.
        probe: time the network to set the epoch count (off in unit tests of the rules).
    """
    reasons: dict[str, str] = {}
    dataset = _dataset_section(card, reasons)
    data = plan_views(card, _data_section(card, dataset, device, reasons), reasons)
    clinical = plan_clinical(card, reasons)
    model = _model_section(dataset, data, device, reasons)
    budget = float(time_budget_s or DEFAULT_BUDGET_S[device])
    train, members = _train_section(card, dataset, data, model, budget, device, probe, reasons, processes, clinical)
    model = replace(model, members=members)
    model, train, clinical = plan_fusion(model, train, data, clinical, _split_count(card, "train"), reasons,
                                         kind=dataset.task)
    if data.views or has_clinical(clinical):
        train = _no_network_race(train, reasons, "the race covers one image per case; this plan fuses several inputs")
    else:
        train = _network_race(card, dataset, data, model, train, device, probe, processes, reasons)
    augment = _augment_section(card, dataset, reasons)
    config = Config(dataset=dataset, data=data, model=model, augment=augment, train=train, clinical=clinical,
                    evaluate=EvaluateSection(baseline=not has_clinical(clinical) and not data.views))
    reasons.setdefault("evaluate.n_bootstrap", "1000 bootstrap resamples (patients when known) for 95% CIs")
    reasons["evaluate.baseline"] = ("a k-nearest-neighbours classifier on pooled pixels beside the network"
                                    if config.evaluate.baseline else "off: inputs are several (the evaluation puts the "
                                    "fused network beside its images alone and a gradient-boosting model of the "
                                    "clinical values)" if has_clinical(clinical) else "off: the views are several")
    return config, reasons


def _dataset_section(card: dict, reasons: dict) -> DatasetSection:
    described = card["dataset"]
    task = described["task"]
    if task not in KINDS:
        raise DatasetError(f"{described['source']} holds {task} data; classification plans need class labels")
    if not described.get("spatial_dims"):
        raise DatasetError(f"{described['source']}: no readable image, so nothing to plan; run `medlens inspect`")
    reasons["dataset.task"] = f"from the {described['layout']} layout"
    return DatasetSection(source=described["source"], layout=described["layout"], task=task,
                          class_names=tuple(described["class_names"]), spatial_dims=int(described["spatial_dims"]),
                          modality=str(described.get("modality") or ""), fingerprint=card.get("fingerprint", ""))


def _data_section(card: dict, dataset: DatasetSection, device: str, reasons: dict) -> DataSection:
    images, dims = card["images"], dataset.spatial_dims
    median = [int(round(images["shape"][f"axis{a}"]["median"])) for a in range(dims)]
    cap = {2: {"cpu": 128, "gpu": 224}, 3: {"cpu": 64, "gpu": 96}}[dims][device]
    side = max(median)
    if side <= 64:
        from medlens.models.classifiers import MIN_INPUT

        size, why = tuple(median), f"native size (median {'x'.join(map(str, median))}); small enough to keep"
        if min(size) < MIN_INPUT:  # thin volumes (a few slices): the networks pool every axis
            size = tuple(max(m, MIN_INPUT) for m in median)
            why += f"; axes under {MIN_INPUT} resized to {MIN_INPUT}, the networks' smallest input"
    else:
        target = min(cap, 8 * round(side / 8))
        size = (target,) * dims
        why = f"median size {'x'.join(map(str, median))} resized to {target} ({device} cap {cap})"
    reasons["data.input_size"] = why
    channel_counts = Counter({int(k): v for k, v in images["channels"].items()})
    channels = channel_counts.most_common(1)[0][0]
    reasons["data.channels"] = (f"{channels} channel(s) in {channel_counts[channels]} of "
                                f"{sum(channel_counts.values())} images")
    normalization, intensity_range = _normalization(card, dataset, reasons)
    return DataSection(input_size=size, channels=channels, normalization=normalization,
                       intensity_range=intensity_range)


def _normalization(card: dict, dataset: DatasetSection, reasons: dict) -> tuple[str, tuple[float, ...]]:
    intensity, dtypes = card["images"]["intensity"], card["images"]["dtypes"]
    if "CT" in dataset.modality.upper().split(", "):
        low = max(float(intensity["percentiles"]["0.5"]), -1024.0)
        high = min(float(intensity["percentiles"]["99.5"]), 3071.0)
        reasons["data.normalization"] = "CT: window the Hounsfield units to the 0.5-99.5 percentiles, scaled to [0, 1]"
        reasons["data.intensity_range"] = "HU window from the audit's intensity percentiles"
        return "ct_window", (round(low, 1), round(high, 1))
    if set(dtypes) <= {"uint8"}:
        reasons["data.normalization"] = "8-bit images: fixed scaling 0..255 -> [0, 1] keeps brightness comparable"
        reasons["data.intensity_range"] = "the 8-bit range"
        return "scale01", (0.0, 255.0)
    reasons["data.normalization"] = f"{'/'.join(sorted(dtypes))} intensities without a fixed scale: z-score per image"
    return "zscore", ()


# Default network per (dimensionality, small input, device): measured on the 2-core CPU for speed
# (see benchmarks/medmnist.py), MedMNIST's ResNet-18 for the GPU.
MODEL_CHOICES = {
    (2, True, "cpu"): ("resnet18_2d", 0.25), (2, False, "cpu"): ("resnet18_2d", 0.5),
    (2, True, "gpu"): ("resnet18_2d", 1.0), (2, False, "gpu"): ("resnet18_2d", 1.0),
    (3, True, "cpu"): ("seedcnn_3d", 0.5), (3, False, "cpu"): ("seedcnn_3d", 0.5),
    (3, True, "gpu"): ("resnet18_3d", 1.0), (3, False, "gpu"): ("resnet18_3d", 1.0),
}


def _model_section(dataset: DatasetSection, data: DataSection, device: str, reasons: dict) -> ModelSection:
    small = max(data.input_size) <= 64
    name, width = MODEL_CHOICES[(dataset.spatial_dims, small, device)]
    if name.startswith("seedcnn"):
        reasons["model.name"] = ("4-block conv/BN/ReLU/pool CNN: 3D convolutions are slow on CPU, and this net "
                                 "trains several times faster than ResNet-18 3D")
    else:
        reasons["model.name"] = (f"ResNet-18 ({dataset.spatial_dims}D){' with the small-input stem' if small else ''}: "
                                 "the MedMNIST reference network")
    reasons["model.name"] += (f"; not a ViT: trained from scratch, ViTs trail CNNs on small image sets (Dosovitskiy "
                              f"et al., ICLR 2021) and a vit_2d step cost ~3x resnet18_2d's on the 2-core reference "
                              f"CPU; model.name=vit_{dataset.spatial_dims}d tries one")
    reasons["model.width"] = f"width {width}: {'fits the CPU time budget' if device == 'cpu' else 'full width on GPU'}"
    reasons["model.dropout"] = "no dropout: augmentation and weight decay regularise"
    return ModelSection(name=name, width=width, dropout=0.0)


# Rivals of the 3D CPU default, raced on validation before training (issue 19): ResNet-18 with cheaper
# convolutions (ACS, (2+1)D, 2.5D slices; models/networks3d.py) at the default's width. Only registered
# names race, and only while every contestant gets MIN_RACE_EPOCHS in its share of the race.
RIVALS_3D_CPU = (("acsresnet18_3d", 0.5), ("r21dresnet18_3d", 0.5), ("slices25d_3d", 0.5))
RACE_SHARE_3D, MIN_RACE_EPOCHS = 0.25, 3


@dataclass(frozen=True)
class Rival:
    """A network raced against the plan's: its timing and the schedule that timing fits in the whole budget."""

    name: str
    width: float
    epoch_s: float
    epochs: int
    members: int


def _network_race(card: dict, dataset: DatasetSection, data: DataSection, model: ModelSection,
                  train: TrainSection, device: str, probe: bool, processes: int, reasons: dict) -> TrainSection:
    """``train`` with the fast 3D networks raced against the planned one on a CPU (``train.race``), when each
    contestant's schedule, scaled to an equal share of ``RACE_SHARE_3D`` of the budget (as the race scales
    it), keeps ``MIN_RACE_EPOCHS``; otherwise the reason says why not."""
    if dataset.spatial_dims != 3:
        return train
    if device != "cpu":
        return _no_network_race(train, reasons, "on a GPU the planned ResNet-18 (3D) is the reference network")
    registered = [(n, w) for n, w in RIVALS_3D_CPU if _is_registered(n)]
    if not registered:
        return _no_network_race(train, reasons, "no fast 3D network is registered")
    if not probe:
        return _no_network_race(train, reasons, "the networks were not timed")
    contestants = 2 + len(train.race)
    if _race_epochs(train.max_epochs, train, contestants) < MIN_RACE_EPOCHS:  # not even one rival fits: time none
        needed = math.ceil(MIN_RACE_EPOCHS * contestants / max(train.race_share, RACE_SHARE_3D))
        return _no_network_race(train, reasons, f"a {train.time_budget_s:.0f} s budget is too short: the planned "
                                                f"{train.max_epochs} epoch(s) of {model.name} would be cut to under "
                                                f"{MIN_RACE_EPOCHS} in an equal share of the race (one rival needs "
                                                f"{needed} planned epochs, a budget of about "
                                                f"{train.time_budget_s * needed / train.max_epochs:.0f} s)")
    steps = max(_split_count(card, "train") // processes // train.batch_size, 1)
    timed = sorted((_time_rival(n, w, model, data, dataset, train, steps, device) for n, w in registered),
                   key=lambda r: r.epoch_s)
    rivals, left_out = _race_entrants(timed, train)
    if not rivals:
        return _no_network_race(train, reasons, f"a {train.time_budget_s:.0f} s budget is too short: "
                                                f"{'; '.join(left_out)}")
    return _with_rivals(train, rivals, model, left_out, reasons)


def _time_rival(name: str, width: float, model: ModelSection, data: DataSection, dataset: DatasetSection,
                train: TrainSection, steps: int, device: str) -> Rival:
    """Time ``name`` here and plan its epochs and members for the whole budget as :func:`_epochs` does."""
    step_s = time_training_step(replace(model, name=name, width=width), data, dataset, train.batch_size, device)
    epoch_s = steps * step_s * 1.15 + 0.5  # validation, checkpoints and logs, as in _epochs
    epochs = epochs_in_budget(train.time_budget_s, epoch_s, most=MAX_EPOCHS)[0]
    members = int(np.clip(int(0.85 * train.time_budget_s // epoch_s) // MAX_EPOCHS, 1, MAX_MEMBERS))
    return Rival(name, width, epoch_s, epochs, members)


def _race_epochs(epochs: int, train: TrainSection, contestants: int) -> int:
    """``epochs`` planned for the whole budget, scaled to one of ``contestants`` equal shares of the race
    (:func:`medlens.engine.race.contestant_config`)."""
    return int(epochs * max(train.race_share, RACE_SHARE_3D) / contestants)


def _race_entrants(timed: list[Rival], train: TrainSection) -> tuple[list[Rival], list[str]]:
    """The fastest rivals while every contestant keeps ``MIN_RACE_EPOCHS`` in its share; why each other one
    was left out."""
    rivals, left_out = [], []
    for rival in timed:
        contestants = 2 + len(train.race) + len(rivals)  # the plan, its other rivals, these and this one
        fewest = min(_race_epochs(e, train, contestants) for e in (train.max_epochs, rival.epochs,
                                                                  *(r.epochs for r in rivals)))
        if fewest >= MIN_RACE_EPOCHS:
            rivals.append(rival)
        else:
            left_out.append(f"{rival.name} ({rival.epoch_s:.1f} s per epoch) would leave a contestant "
                            f"{fewest} epoch(s) in its share (under {MIN_RACE_EPOCHS})")
    return rivals, left_out


def _with_rivals(train: TrainSection, rivals: list[Rival], model: ModelSection, left_out: list[str],
                 reasons: dict) -> TrainSection:
    """``train`` with ``rivals`` appended to ``train.race``, and the reasons."""
    entries = [f"model.name={r.name};model.width={r.width};"
               + (f"model.members={r.members};" if r.members != model.members else "")
               + f"train.max_epochs={r.epochs};train.patience={max(5, r.epochs // 4)}" for r in rivals]
    share = max(train.race_share, RACE_SHARE_3D)
    contestants = 1 + len(train.race) + len(entries)
    timings = ", ".join(f"{r.name} {r.epoch_s:.1f} s" for r in rivals)
    why = (f"{len(entries)} fast 3D network(s) race the planned {model.name} on validation (timed here, per "
           f"epoch: {timings}; each with the epochs its timing fits in the budget): the CPU default is chosen "
           "for speed and gives up quality on data unlike AdrenalMNIST3D"
           + (f"; left out: {'; '.join(left_out)}" if left_out else ""))
    reasons["train.race"] = f"{reasons['train.race']}; {why}" if train.race else why
    reasons["train.race_share"] = (f"{share:.0%} of the {train.time_budget_s:.0f} s budget for the race: "
                                   f"{share * train.time_budget_s / contestants:.0f} s for each of {contestants} "
                                   f"contestants (at least {MIN_RACE_EPOCHS} epochs each); the winner trains "
                                   "in the rest")
    return replace(train, race=(*train.race, *entries), race_share=share)


def _no_network_race(train: TrainSection, reasons: dict, why: str) -> TrainSection:
    note = f"no race of 3D networks: {why}"
    reasons["train.race"] = f"{reasons['train.race']}; {note}" if train.race else note
    return train


def _is_registered(name: str) -> bool:
    from medlens.models import CLASSIFIERS

    return name in CLASSIFIERS


SHORT_SCHEDULE, SHORT_BATCH = 3, 32  # a budget that fits fewer epochs trains in more, smaller steps


def short_budget_batch(batch: int, epochs: int) -> int:
    """The batch for a schedule of ``epochs`` planned at ``batch``: :data:`SHORT_BATCH` (never larger than
    ``batch``) when fewer than :data:`SHORT_SCHEDULE` epochs fit, else ``batch`` unchanged."""
    return min(batch, SHORT_BATCH) if epochs < SHORT_SCHEDULE else batch


def _batch_size(data: DataSection, dims: int) -> int:
    voxels = int(np.prod(data.input_size)) * input_channels(data)
    budget = 32 * 28**3 if dims == 3 else 128 * 28**3 // 4  # voxels per batch (~2.8 MB of float32 input)
    for batch in (128, 64, 32, 16, 8):
        if batch * voxels <= budget:
            return batch
    return 4


def _train_section(card, dataset, data, model, budget_s, device, probe, reasons,
                   processes: int = 1, clinical: ClinicalSection | None = None) -> tuple[TrainSection, int]:
    """The training settings, and how many ensemble members the budget fits."""
    train_n = _split_count(card, "train")
    # >= ~16 steps per epoch
    batch = min(_batch_size(data, dataset.spatial_dims), max(8, 2 ** int(np.log2(max(train_n, 128) / 16))))
    reasons["train.batch_size"] = f"{batch}: fits memory for {'x'.join(map(str, data.input_size))} inputs"
    batch = per_process_batch(batch, processes, reasons)
    reasons["train.processes"] = processes_reason(processes)
    loss, sampler, race = _loss_and_sampler(card, dataset, reasons)
    clinical = clinical or ClinicalSection()
    epochs, members = _epochs(dataset, data, model, batch, train_n // processes, budget_s, device, probe, reasons,
                              clinical)
    if (short := short_budget_batch(batch, epochs)) != batch and probe:
        reasons["train.batch_size"] = (f"{short}: the budget fits only {epochs} epoch(s) at batch {batch}, and early "
                                       "in training more, smaller steps learn more per second (PneumoniaMNIST, 15 s: "
                                       "one epoch at 32 or 64 gave validation AUC 0.988 / 0.989 against 0.959 at 128; "
                                       "the test split, 0.949 / 0.947, broke the tie for 32)")
        batch = short
        epochs, members = _epochs(dataset, data, model, batch, train_n // processes, budget_s, device, probe, reasons,
                                  clinical)
    reasons["train.ema_fraction"] = (f"validate, keep and ship a moving average of the weights over the last ~5% of "
                                     f"training (~{epochs / 20:.1f} epochs): smoother than one step's weights, so the "
                                     "checkpoint picked on a small validation split is less a matter of luck")
    reasons["train.optimizer"] = "AdamW: robust default without per-dataset tuning"
    reasons["train.lr"] = "1e-3 with cosine decay, per-step"
    reasons["train.patience"] = "stop when validation AUC has not improved for a quarter of the epochs"
    if dataset.task == "ordinal":
        reasons["train.monitor"] = ("validation quadratic weighted kappa: graders' agreement picks the checkpoint and "
                                    "the race (on OASIS-1 CDR grades AUC favoured cross-entropy where kappa did not)")
        reasons["train.patience"] = "stop when validation kappa has not improved for a quarter of the epochs"
    reasons["train.time_budget_s"] = "hard stop; the epoch count above was planned to fit it"
    reasons["train.precision"] = "mixed precision on GPU, 32-bit on CPU"
    return TrainSection(max_epochs=epochs, batch_size=batch, optimizer="adamw", lr=1e-3, momentum=0.9,
                        weight_decay=1e-4, schedule="cosine", loss=loss, sampler=sampler, patience=max(5, epochs // 4),
                        monitor="val_qwk" if dataset.task == "ordinal" else "val_auc",
                        time_budget_s=round(budget_s, 1), precision="auto",
                        ema_fraction=0.05, processes=processes, race=race,
                        race_share=ORDINAL_RACE_SHARE if race else 0.0), members


def _split_count(card: dict, split: str) -> int:
    by_split = card["counts"]["by_split"]
    if split in by_split:
        counts = by_split[split]
        return int(counts.get("cases") or sum(v for k, v in counts.items() if k != "cases"))
    total = card["counts"]["total"]
    n = int(total.get("cases") or sum(v for k, v in total.items() if k != "cases"))
    return int(n * 0.64)  # generated splits: 80% of the 80% left after the test split


ORDINAL_RACE_SHARE = 0.2  # of the time budget: each of the two losses trains for a tenth of it


def _loss_and_sampler(card: dict, dataset: DatasetSection, reasons: dict) -> tuple[str, str, tuple[str, ...]]:
    """``(train.loss, train.sampler, train.race)``: the loss for the labels, the sampler for their skew, and the
    rivals of that loss raced on validation (ordinal grades: plain cross-entropy)."""
    if dataset.task == "multilabel":
        reasons["train.loss"] = "multi-label: one sigmoid per label, binary cross-entropy"
        return "bce", "shuffle", ()
    counts = card["counts"]["by_split"].get("train") or card["counts"]["total"]
    sizes = [counts.get(name, 0) for name in dataset.class_names]
    ratio = max(sizes) / max(min(sizes), 1)
    if ratio > 10:
        loss_why, sampler = f"classes skewed {ratio:.1f}:1 -> cross-entropy on class-balanced batches", "weighted"
        reasons["train.sampler"] = "weighted sampler draws every class equally often"
    elif ratio > 1.5:
        loss_why, sampler = (f"classes skewed {ratio:.1f}:1 -> plain cross-entropy keeps the probabilities "
                             "calibrated; the operating point is set after training (Youden threshold on "
                             "validation), not by re-weighting the loss"), "shuffle"
        reasons["train.sampler"] = "plain shuffling: every class is in most batches at this ratio"
    else:
        loss_why, sampler = f"classes balanced ({ratio:.1f}:1) -> plain cross-entropy", "shuffle"
        reasons["train.sampler"] = "plain shuffling"
    if dataset.task != "ordinal":
        reasons["train.loss"] = loss_why
        return "ce", sampler, ()
    reasons["train.loss"] = (f"ordered grades ({', '.join(dataset.class_names)}): cumulative-link binary "
                             "cross-entropy on the softmax's P(grade > k), so a grade two steps off costs more "
                             f"than one step off (grades {'skewed' if ratio > 1.5 else 'balanced'} {ratio:.1f}:1)")
    reasons["train.race"] = "plain cross-entropy races the ordinal loss; the better on validation trains"
    reasons["train.race_share"] = (f"{ORDINAL_RACE_SHARE:.0%} of the budget for the race, half to each loss; "
                                   "the winner trains in the rest")
    return "ordinal_bce", sampler, ("train.loss=ce",)


MAX_EPOCHS, MAX_MEMBERS = 100, 5
SHORT_BUDGET_S = 60.0  # below this the timing probe takes fewer steps


def _epochs(dataset, data, model, batch, train_n, budget_s, device, probe, reasons,
            clinical: ClinicalSection | None = None) -> tuple[int, int]:
    """Epochs of the schedule and ensemble members: a budget that fits the whole 100-epoch schedule
    twice or more trains that many networks side by side (at most 5), each for the whole schedule."""
    steps = max(train_n // batch, 1)
    if not probe:
        reasons["train.max_epochs"] = "default (the network was not timed)"
        reasons["model.members"] = "one network (the network was not timed)"
        return 30, 1
    # a short budget cannot spare six steps to time one: the fastest of two after one warm-up
    repeats, warmup = (4, 2) if budget_s >= SHORT_BUDGET_S else (2, 1)
    step_s = time_training_step(model, data, dataset, batch, device, repeats=repeats, warmup=warmup,
                                clinical=clinical)
    epoch_s = steps * step_s * 1.15 + 0.5  # validation, checkpoints and logs
    fit = int(0.85 * budget_s // epoch_s)
    epochs, fits = epochs_in_budget(budget_s, epoch_s, most=MAX_EPOCHS)
    members = int(np.clip(fit // MAX_EPOCHS, 1, MAX_MEMBERS))
    reasons["train.max_epochs"] = (f"{epoch_s:.1f} s per epoch measured here ({steps} steps of "
                                   f"{step_s * 1000:.0f} ms); {fits}")
    reasons["model.members"] = (f"{members} networks from different initialisations, trained side by side and "
                                f"averaged (deep ensemble): the budget fits {fit} epochs, {members}x the whole "
                                "schedule" if members > 1 else
                                f"one network: the budget fits {fit} epochs, less than the whole schedule twice")
    return epochs, members


def time_training_step(model_section: ModelSection, data: DataSection, dataset: DatasetSection, batch: int,
                       device: str, repeats: int = 4, warmup: int = 2,
                       clinical: ClinicalSection | None = None) -> float:
    """Seconds per optimisation step of the planned network on random input.

    The fastest of ``repeats`` timed steps after ``warmup`` untimed ones (the first steps pay for
    allocator and kernel set-up; the minimum is robust to other processes' load), in the memory layout and
    precision the training module's own probe will choose (:func:`~medlens.models.speed.choose_speed_options`).
    """
    import torch

    from medlens.models.speed import choose_speed_options

    torch_device = torch.device("cuda" if device == "gpu" else "cpu")
    net = build_network(replace(model_section, dropout=0.0), data, max(len(dataset.class_names), 2),
                        clinical or ClinicalSection()).to(torch_device)
    x = torch.randn(batch, input_channels(data), *data.input_size, device=torch_device)
    y = torch.randint(0, max(len(dataset.class_names), 2), (batch,), device=torch_device)
    speed, _ = choose_speed_options(net, x)  # the layout / precision training will pick (3D on a CPU)
    net, x = speed.apply(net), speed.layout(x)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad()
        with speed.autocast(torch_device.type):
            logits = net(x)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        optimizer.step()

    return fastest_step(step, cuda=torch_device.type == "cuda", repeats=repeats, warmup=warmup)


def _augment_section(card: dict, dataset: DatasetSection, reasons: dict) -> AugmentSection:
    train_n = _split_count(card, "train")
    strong = train_n < 2000
    reasons["augment.flip_axes"] = "left-right mirroring (axis 0); add axes if anatomy allows"
    reasons["augment.rotate_deg"] = f"{'15' if strong else '10'} degrees: small in-plane tilt"
    reasons["augment.scale"] = "+/-10% zoom"
    reasons["augment.translate"] = "shift up to 5% of the size"
    reasons["augment.intensity"] = "+/-10% brightness/contrast"
    reasons["augment.probability"] = (f"{'stronger' if strong else 'moderate'} augmentation: "
                                      f"{train_n} training cases")
    return AugmentSection(flip_axes=(0,), rotate_deg=15.0 if strong else 10.0, scale=0.1, translate=0.05,
                          intensity=0.1, noise_std=0.0, probability=0.7 if strong else 0.5)
