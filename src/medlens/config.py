"""Configuration: frozen dataclasses hold every default; YAML and ``--set`` override; validated once.

A :class:`Config` has one section per stage. ``plan`` fills it from the data and writes it as a
readable YAML file where every value carries a one-line reason as a comment; the user may edit it::

    train:
      max_epochs: 24        # 4.1 s per epoch measured; fits the 120 s budget

Below the CLI nothing handles raw dicts: :func:`config_from_dict` converts and checks every value
(unknown keys fail with a "did you mean" suggestion).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from medlens.errors import ConfigError


@dataclass(frozen=True)
class DatasetSection:
    """Facts about the data the plan was made for (written by ``plan``, read by training)."""

    source: str = ""
    image_root: str = ""  # folder a CSV manifest's paths are relative to, when not the CSV's folder
    allow_outside_root: bool = False  # follow manifest paths that leave the dataset folder / image_root
    boxes_from_masks: bool = False  # detection: one box per connected component of each label of a mask dataset
    skip_unreadable: bool = False  # leave out files no reader opens (listed in the card and report) instead of refusing
    series_rules: tuple[str, ...] = ()  # NAME=REGEX per series read from each DICOM study of a CSV's study column
    layout: str = ""
    task: typing.Literal["binary", "multiclass", "multilabel", "ordinal", "segmentation", "detection", "anomaly",
                         "pretraining"] = "binary"
    class_names: tuple[str, ...] = ()
    label_values: tuple[int, ...] = ()  # segmentation: the mask value of each class (index 0 = background)
    spatial_dims: int = 2
    modality: str = ""
    fingerprint: str = ""
    splits: str = ""  # a splits file; empty = the dataset's own splits, or generated ones
    fold: int = 0


@dataclass(frozen=True)
class DataSection:
    """Preprocessing: what every image becomes before the network sees it."""

    input_size: tuple[int, ...] = (28, 28)
    channels: int = 1
    normalization: typing.Literal["scale01", "zscore", "ct_window", "ct_foreground", "none"] = "zscore"
    intensity_range: tuple[float, ...] = ()  # (low, high) mapped to [0, 1] by scale01 / ct_window (HU for CT)
    foreground_stats: tuple[float, ...] = ()  # ct_foreground: (mean, std) of foreground voxels after clipping
    target_spacing: tuple[float, ...] = ()  # segmentation: images are resampled to this voxel size (mm)
    cache: typing.Literal["auto", "memory", "disk"] = "auto"
    num_workers: int = 0
    views: tuple[str, ...] = ()  # several images per case, by name (manifest `image:NAME` columns, DICOM series rules)
    fusion: typing.Literal["channels", "views"] = "channels"  # channels: co-registered, stacked; views: encoded apart


@dataclass(frozen=True)
class ModelSection:
    """The network: a name in the model registry and the settings it is built with."""

    name: str = "resnet18_2d"  # a registered classifier or segmenter of the data's dimensionality
    width: float = 1.0  # classifiers: channel multiplier
    dropout: float = 0.0
    members: int = 1  # classifiers trained side by side from different initialisations, logits averaged
    filters: tuple[int, ...] = ()  # segmentation: feature maps per resolution level
    strides: tuple[tuple[int, ...], ...] = ()  # segmentation: down-sampling per level and axis
    kernels: tuple[tuple[int, ...], ...] = ()  # segmentation: convolution kernel per level and axis
    deep_supervision: bool = False
    view_encoder: typing.Literal["shared", "separate"] = "shared"  # fusion=views: one encoder for all views or one each
    view_pooling: typing.Literal["concat", "attention"] = "concat"  # data.fusion=views: how view features are fused
    norm: typing.Literal["batch", "group"] = "batch"  # group: batch norm layers become group norm (DP-SGD needs it)


@dataclass(frozen=True)
class AugmentSection:
    """Random transforms applied to training images only (MONAI array transforms)."""

    flip_axes: tuple[int, ...] = ()  # spatial axes that may be mirrored
    rotate_deg: float = 0.0
    scale: float = 0.0  # random zoom range, +/- fraction
    translate: float = 0.0  # random shift, fraction of the image size
    intensity: float = 0.0  # random scale/shift of intensities, +/- fraction
    noise_std: float = 0.0
    gamma: float = 0.0  # random gamma in [1 - g, 1 + g] on intensities (segmentation)
    elastic: float = 0.0  # smooth random deformation, displacement as a fraction of the patch
    probability: float = 0.5  # chance each transform is applied


@dataclass(frozen=True)
class TrainSection:
    """The optimisation: schedule, loss, sampling, stopping, and the hardware it runs on."""

    max_epochs: int = 30
    batch_size: int = 64  # images (or patches) per optimisation step in each process
    optimizer: typing.Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD's Nesterov momentum (AdamW keeps its own moment decays, 0.9 and 0.999)
    weight_decay: float = 1e-4
    schedule: typing.Literal["cosine", "onecycle", "poly", "constant"] = "cosine"
    loss: str = "ce"  # a name in the loss registry that fits the task (ce, weighted_ce, focal, bce, dice_ce)
    label_smoothing: float = 0.0
    sampler: typing.Literal["shuffle", "weighted"] = "shuffle"
    patience: int = 10  # epochs without a better validation score before training stops
    monitor: typing.Literal["val_auc", "val_loss", "val_accuracy", "val_qwk", "val_dice", "val_map",
                             "val_map50"] = "val_auc"
    time_budget_s: float = 0.0  # 0 = no limit
    freeze_epochs: int = 0  # transfer learning: epochs with the backbone frozen
    finetune_lr_factor: float = 0.1  # transfer learning: lr multiplier once the backbone is unfrozen
    ema_fraction: float = 0.0  # keep an exponential moving average of the weights over this share of training; 0 = off
    processes: int = 1  # training processes the plan was made for (devices x nodes); batch_size is per process
    precision: typing.Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = "auto"
    seed: int = 0
    race: tuple[str, ...] = ()  # rivals of this plan raced on validation before training, each "key=value;key=value"
    race_share: float = 0.0  # share of time_budget_s the race may spend (0 = no race)
    modality_dropout: float = 0.0  # chance each view and the clinical record is withheld from a training case


@dataclass(frozen=True)
class SegmentSection:
    """Segmentation only: how training patches are drawn and how whole images are predicted."""

    iterations_per_epoch: int = 250  # training patches batches per epoch (nnU-Net: 250)
    foreground_fraction: float = 0.33  # share of patches centred on a foreground voxel
    overlap: float = 0.5  # sliding-window overlap between neighbouring patches
    sw_batch_size: int = 4  # patches per forward pass at inference
    keep_largest: typing.Literal["auto", "always", "never"] = "auto"  # auto: per class, if it helps on validation


@dataclass(frozen=True)
class DetectSection:
    """Detection only: anchors, the training patches' balance, and the post-processing of predicted boxes."""

    anchors: tuple[tuple[float, ...], ...] = ()  # anchor sides (voxels of the network input) at the finest level
    returned_layers: tuple[int, ...] = (1, 2)  # residual layers feeding the feature pyramid (strides 4, 8, +16)
    fpn_channels: int = 64  # channels of the feature pyramid and the heads
    iterations_per_epoch: int = 0  # training batches per epoch; 0 = one pass over the training images
    positive_fraction: float = 0.5  # share of training patches that hold a box (when an image is larger than a patch)
    score_threshold: float = 0.05  # boxes scored below this are dropped before non-maximum suppression
    nms_iou: float = 0.5  # per-class non-maximum suppression: overlap above which the lower-scored box goes
    max_detections: int = 100  # boxes kept per image
    overlap: float = 0.25  # sliding-window overlap for images larger than the patch
    froc_iou: float = 0.1  # a detection hits a lesion at this overlap for FROC (MONAI's LUNA16 evaluation)


@dataclass(frozen=True)
class PretrainSection:
    """Self-supervised pretraining (``medlens pretrain``): an encoder learnt from images alone."""

    method: typing.Literal["simclr"] = "simclr"  # contrastive: two augmented views of an image attract, others repel
    temperature: float = 0.1  # NT-Xent temperature (MONAI's ContrastiveLoss)
    projection_dim: int = 128  # output size of the projection head the loss sees (dropped after pretraining)
    crop_scale: float = 0.5  # views are random crops covering at least this share of each axis, resized back


@dataclass(frozen=True)
class AnomalySection:
    """One-class anomaly detection: trained on normal cases only, thresholded on normal validation cases."""

    normal: tuple[str, ...] = ()  # the class name(s) that are normal; every other class is used for evaluation only
    # gaussian_knn: a Gaussian of deepest-stage statistics + the distance to the nearest normal image (whole image)
    method: typing.Literal["gaussian_knn", "gaussian", "patchcore", "autoencoder"] = "gaussian_knn"
    fpr: float = 0.05  # the share of normal validation cases allowed above the threshold
    memory_size: int = 0  # patchcore, gaussian_knn: feature vectors kept by coreset subsampling (the plan sets it)
    neighbours: int = 1  # patchcore: nearest memory vectors averaged into a patch's distance


@dataclass(frozen=True)
class ClinicalSection:
    """Clinical inputs beside the images: manifest columns, standardised / one-hot encoded with training statistics."""

    numeric: tuple[str, ...] = ()  # columns read as numbers (z-scored; a missing value gets an indicator)
    units: tuple[str, ...] = ()  # "COLUMN=UNIT" for numeric columns, shown in the model card and the web form
    categorical: tuple[str, ...] = ()  # "COLUMN=A|B|C": one-hot over these categories (an unseen one is refused)
    rescale: tuple[str, ...] = ()  # "COLUMN<LIMIT*FACTOR" (or >): such values multiplied first (a lost decimal point)
    # "COLUMN=MEAN,SD": z-score numeric columns with these instead of the training split's own (a federation pools
    # its sites' training statistics, so every site encodes alike); empty: from the training split
    standardise: tuple[str, ...] = ()
    # concat: beside image features; film: scale and shift them; residual: concat plus a logistic regression of the
    # clinical values alone added to the logits (fitted on training first; the rest learns what it leaves)
    fusion: typing.Literal["concat", "film", "residual"] = "concat"


@dataclass(frozen=True)
class EvaluateSection:
    """How the trained model is scored and how it predicts."""

    n_bootstrap: int = 1000  # bootstrap resamples (patients when known) behind every 95% CI
    tta: bool = False  # test-time augmentation: average over mirrored copies along augment.flip_axes
    baseline: bool = False  # classification: fit the k-nearest-neighbours baseline beside the network


@dataclass(frozen=True)
class Config:
    dataset: DatasetSection = field(default_factory=DatasetSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    train: TrainSection = field(default_factory=TrainSection)
    segment: SegmentSection = field(default_factory=SegmentSection)
    detect: DetectSection = field(default_factory=DetectSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    anomaly: AnomalySection = field(default_factory=AnomalySection)
    clinical: ClinicalSection = field(default_factory=ClinicalSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)

    def as_dict(self) -> dict:
        return {f.name: _plain(dataclasses.asdict(getattr(self, f.name))) for f in fields(self)}


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


#: Keys of plans written by earlier medlens versions -> where their value lives now.
RENAMED_KEYS = {("segment", "mirror_tta"): ("evaluate", "tta")}


def upgrade_plan(raw: dict) -> dict:
    """Plan content of an earlier medlens version in today's keys (a new dict; ``raw`` is not changed).

    ``segment.mirror_tta`` became ``evaluate.tta`` (one test-time augmentation key for every task). A
    plan written before ``train.momentum`` existed gets the momentum its optimiser used then: 0.99 for
    SGD with Dice + cross-entropy (the segmentation rule), 0.9 otherwise.
    """
    if not isinstance(raw, dict):
        return raw
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for (section, key), (new_section, new_key) in RENAMED_KEYS.items():
        if isinstance(raw.get(section), dict) and key in raw[section]:
            value = raw[section].pop(key)
            target = raw.setdefault(new_section, {}) or {}
            raw[new_section] = target
            target.setdefault(new_key, value)
    train = raw.get("train")
    if isinstance(train, dict) and train and "momentum" not in train:
        legacy_sgd_dice = train.get("optimizer") == "sgd" and train.get("loss") == "dice_ce"
        train["momentum"] = 0.99 if legacy_sgd_dice else 0.9
    return raw


def config_from_dict(raw: dict, *, where: str = "config") -> Config:
    """Build a validated :class:`Config` from nested dicts (YAML content); missing keys keep defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections ({_section_names()}), found {type(raw).__name__}")
    raw = upgrade_plan(raw)
    sections = {}
    for name, value in raw.items():
        section_type = _section_type(name, where)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: section `{name}` must be a mapping of keys, found {value!r}")
        sections[name] = _build_section(section_type, value, f"{where}: {name}")
    return Config(**sections)


def _section_names() -> str:
    return ", ".join(f.name for f in fields(Config))


def _section_type(name: str, where: str):
    types = {f.name: f.default_factory for f in fields(Config)}
    if name not in types:
        raise ConfigError(f"{where}: unknown section `{name}`{_suggest(name, types)}; sections are {_section_names()}")
    return types[name]


def _build_section(section_type, values: dict, where: str):
    hints = typing.get_type_hints(section_type)
    known = {f.name for f in fields(section_type)}
    converted = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key `{key}`{_suggest(key, known)}")
        converted[key] = convert_value(value, hints[key], f"{where}.{key}")
    return section_type(**converted)


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def convert_value(value, hint, where: str):
    """Convert ``value`` to the annotated type, or raise a ConfigError naming what was expected."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}"
                              f"{_suggest(str(value), [str(c) for c in choices])}")
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(convert_value(v, item, where) for v in items)
    try:
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if hint in (int, float) and isinstance(value, bool):
            raise ValueError
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if hint is str and isinstance(value, bool):  # YAML 1.1 reads no/yes/off/on as booleans
            raise ConfigError(f"{where}: expected text, found the boolean {value!r} (YAML reads no/yes/on/off as "
                              "booleans); quote the value, e.g. 'no'")
        return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {hint.__name__}, found {value!r}") from None


def apply_overrides(config: Config, assignments: list[str]) -> Config:
    """Apply ``section.key=value`` strings (``--set``); values are parsed as YAML (``[28, 28]``, ``true``)."""
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {assignment!r}: expected SECTION.KEY=VALUE, e.g. train.max_epochs=30")
        section_type = _section_type(section, "--set")
        if (section, name) in RENAMED_KEYS:
            raise ConfigError(f"--set {key.strip()}: this key is now `{'.'.join(RENAMED_KEYS[section, name])}`")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        current = dataclasses.asdict(getattr(config, section))
        current[name] = value
        updated = _build_section(section_type, {k: v for k, v in current.items()}, f"--set {section}")
        config = replace(config, **{section: updated})
    return config


# ---- plan files: YAML with one reason per value -------------------------------------------------

def render_plan(config: Config, reasons: dict[str, str], header: str = "", *, omit=frozenset()) -> str:
    """YAML text of ``config`` with ``reasons["section.key"]`` as end-of-line comments.

    Args:
        omit: ``"section.key"`` (or ``"section"``) entries left out: the keys the plan's task does not use.
    """
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for section, values in config.as_dict().items():
        kept = {k: v for k, v in values.items() if section not in omit and f"{section}.{k}" not in omit}
        if not kept:
            continue
        lines.append(f"{section}:")
        for key, value in kept.items():
            text = f"  {key}: {yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()}"
            text = text.removesuffix("\n...")
            reason = reasons.get(f"{section}.{key}")
            lines.append(f"{text:<40} # {reason}" if reason else text)
    return "\n".join(lines) + "\n"


_KEY_LINE = re.compile(r"^  (\w+):(.*)$")


def _reason(rest: str) -> str | None:
    """The end-of-line comment of a YAML value: the first `` # `` outside quotes."""
    for match in re.finditer(r"\s#\s", rest):
        before = rest[:match.start()]
        if before.count("'") % 2 == 0 and before.count('"') % 2 == 0:
            return rest[match.end():].strip()
    return None


def read_plan(path: str | Path) -> tuple[Config, dict[str, str]]:
    """Load a plan file: the config and the reasons written beside its values."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not a readable plan ({exc}); make one with `medlens plan DATA`") from None
    config = config_from_dict(raw, where=str(path))
    reasons, section = {}, None
    for line in text.splitlines():
        if re.match(r"^\w+:\s*$", line):
            section = line.rstrip(":").strip()
        elif section and (match := _KEY_LINE.match(line)) and (reason := _reason(match.group(2))):
            reasons[f"{section}.{match.group(1)}"] = reason
    return config, reasons
