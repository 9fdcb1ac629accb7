"""The out-of-distribution guard every classifier carries: is this image like the ones the model learnt from?

Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", NeurIPS 2018, with its *feature ensemble*: the guard looks at several depths of the network,
not only the penultimate features. Its *blocks* of features are

- ``input``: the preprocessed image itself, summarised: a ``4^d`` average-pooled thumbnail per channel,
  and per channel its 5/25/50/75/95% quantiles, mean and standard deviation (layout and intensities);
- ``<member>:<stage>`` for every ensemble member (a single network is member 0) and every *stage*, the
  last module of the backbone at each spatial resolution (found by forward hooks on a probe image, so
  every registry network works unchanged; ResNet: ``layer1`` .. ``layer4``): each channel's spatial
  mean and standard deviation (the standard deviations carry texture and style), means only where a
  stage has more than 256 channels (which bounds the file).

Each block gets one Gaussian per class with a shared, Ledoit-Wolf shrunk covariance (scikit-learn
``LedoitWolf``; there are often fewer images than features): its distance is the Mahalanobis distance
to the nearest class mean, ``min_k sqrt((f - mu_k)^T P (f - mu_k))``. Each block's distance is
standardised by the mean and standard deviation of the validation images' distances, and the image's
``ood_score`` is the largest standardised distance over the blocks (no labels of out-of-distribution
data are used anywhere). The threshold is the 95th percentile of the validation images' scores (95%
in-distribution recall): an image above it is flagged ``in_distribution = False``.

How it was chosen (sets the benchmark does *not* use): the PneumoniaMNIST classifier of the benchmark
(one ResNet-18 at width 0.25, 28 x 28 input, 4708 training and 524 validation images) scored its 624
test images against 60 BCCD blood smears (RGB, 640 x 480), 40 OASIS MRI views each of axial, coronal
and sagittal, 24 slices of the Brain-Tumor-Progression DICOM MR study, 18 slices of the pyradiomics
test volumes, 30 synthetic smears, 30 sinusoid textures, 30 noise images, and two near cases made
from 100 test images (upside down; intensities inverted). OOD AUROC (share flagged):

=====================================  ======  ==============  =========  ==============  ============
scores                                 test    BCCD            OASIS x3   MR / radiomics  upside down
                                       flagged                 synthetic  slices          / inverted
=====================================  ======  ==============  =========  ==============  ============
penultimate only (the first guard)     4.2%    0.291 (0%)      >= 0.982   0.995 / 0.995   0.768 / 0.988
stages, means + stds, sum              5.8%    0.552 (0%)      >= 0.997   0.999 / 0.999   0.904 / 0.995
stages, means + stds, max              4.8%    0.647 (0%)      >= 0.997   0.998 / 0.999   0.908 / 0.993
stages + penultimate, max              5.1%    0.643 (0%)      >= 0.997   0.998 / 0.999   0.906 / 0.993
stages + input block, max (chosen)     4.6%    0.688 (0%)      >= 0.998   0.999 / 0.999   0.957 / 0.998
=====================================  ======  ==============  =========  ==============  ============

(Validation flagged 4.96%; the OASIS, MR, radiomics and synthetic sets all 100% flagged, upside down 72%.)
(Also tried: each stage alone, layer1 best on BCCD at 0.786 but 6.9% of test flagged; 2 x 2 pooled stage
maps; a 7 x 7 thumbnail alone, 0.898 on BCCD but 0.906 on synthetic smears and 6.2% flagged.) BCCD at
28 x 28 grey stays the weak case: a bright, low-contrast image (mean 0.71, sd 0.06 against the chest
images' 99th / 1st percentiles 0.69 / 0.088), close to the brightest flat chest films.

The file: safetensors (loading it never runs code), per block ``<block>/means (K, F_b)`` and
``<block>/precision (F_b, F_b)``, then ``centre (B,)``, ``scale (B,)`` and ``threshold ()``; the block
order and the description as JSON metadata. Float32, so ``4 * sum_b F_b * (F_b + K)`` bytes: 0.35 MB for
a ResNet-18 at width 0.25 (blocks of 23, 32, 64, 128 and 256 features), about 2.4 MB per ResNet-18 at
width 1 (stage 4: 512 means); the widest registry networks at width 1 reach 6.8 MB (EfficientNet-B0),
10.6 MB (DenseNet-121) and 23 MB (ResNet-50, of which 17 MB its 2048 stage-4 means, as big as the first
guard's penultimate block). An ensemble multiplies all but the input block by its members. Files of the
first layout (one distance on the penultimate features) are refused with a message to train the run again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.runs import OOD_GUARD as GUARD_FILE

RECALL = 0.95  # the share of in-distribution (validation) images the threshold lets through
METHOD = "mahalanobis-stages"
INPUT = "input"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
THUMBNAIL = 4  # the input block's average-pooled thumbnail: 4 per spatial axis
MAX_STAGE_FEATURES = 512  # a stage wider than half this keeps its channel means only
MAX_FIT_IMAGES = 2000  # training images the Gaussians are fitted on, at most

NO_GUARD = {"fitted": False, "note": "no out-of-distribution guard: this model was trained before medlens fitted "
                                     "one, so predictions carry no ood_score; train it again to get one"}


class GuardError(MedlensError):
    """A guard file is damaged or does not fit the model it came with."""


@dataclass(frozen=True)
class Gaussian:
    """Class means ``(K, F)`` and the shared inverse covariance ``(F, F)`` of one block of features."""

    means: np.ndarray
    precision: np.ndarray

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the nearest class mean ``(N,)`` of ``features (N, F)``."""
        x = np.asarray(features, dtype=np.float64)
        squared = [np.einsum("nf,fg,ng->n", x - m, self.precision, x - m) for m in self.means]
        return np.sqrt(np.maximum(np.min(squared, axis=0), 0.0))


@dataclass(frozen=True)
class OodGuard:
    """A fitted guard.

    Attributes:
        blocks: block name -> its :class:`Gaussian`, in a fixed order (``input``, then ``<member>:<stage>``).
        centre: the validation images' mean distance per block ``(B,)``.
        scale: the validation images' standard deviation of the distance per block ``(B,)``.
        threshold: scores above it are out of distribution.
        description: what the model card says (method, features, images, threshold, validation flagged).
    """

    blocks: dict[str, Gaussian]
    centre: np.ndarray
    scale: np.ndarray
    threshold: float
    description: dict

    @property
    def num_features(self) -> int:
        return sum(int(g.means.shape[1]) for g in self.blocks.values())

    def standardised(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Each block's distance, less its validation mean, over its validation sd: ``(N, B)``."""
        distances = np.stack([g.distance(features[name]) for name, g in self.blocks.items()], axis=1)
        return (distances - self.centre) / self.scale

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """``ood_score (N,)``: the largest standardised block distance of ``features`` (block -> ``(N, F_b)``)."""
        return self.standardised(features).max(axis=1)

    def check(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``ood_score (N,)`` and ``in_distribution (N,)`` (bool) of ``features`` (block -> ``(N, F_b)``)."""
        scores = self.score(features)
        return scores, scores <= self.threshold


# ---- features: the input and every stage of every member -----------------------------------------------------


def stage_modules(member) -> list[str]:
    """The backbone modules whose outputs the guard pools: the last module at each spatial resolution.

    Found by forward hooks on a probe image of the member's input size, among the backbone's modules two levels
    deep at most (its stages and their blocks, not the layers inside a block, whose expansions and paddings
    would count as resolutions of their own); outputs of one voxel are skipped. Names are relative to
    ``member.backbone``.
    """
    probe = torch.zeros((1, member.in_channels, *member.input_size), device=next(member.parameters()).device)
    seen: list[tuple[str, tuple[int, ...]]] = []

    def note(name: str):
        def hook(_module, _inputs, out):
            if torch.is_tensor(out) and out.ndim == probe.ndim:
                seen.append((name, tuple(out.shape[2:])))
        return hook

    hooks = [module.register_forward_hook(note(name)) for name, module in member.backbone.named_modules()
             if name and name.count(".") <= 1 and "Pad" not in type(module).__name__]
    try:
        with torch.no_grad():
            member.eval().forward_features(probe)
    finally:
        for hook in hooks:
            hook.remove()
    last: dict[tuple[int, ...], str] = {}
    for name, shape in seen:
        if math.prod(shape) > 1:
            last.pop(shape, None)  # re-inserted: the order is that of each resolution's last module
            last[shape] = name
    return list(last.values())


def input_features(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial) -> (B, C * (4^d + 7))``: per channel a 4^d thumbnail, 5 quantiles, mean and sd."""
    pool = torch.nn.functional.adaptive_avg_pool3d if x.ndim == 5 else torch.nn.functional.adaptive_avg_pool2d
    flat = x.flatten(2).float()
    quantiles = torch.quantile(flat, torch.tensor(QUANTILES, device=x.device), dim=2).permute(1, 2, 0)
    return torch.cat([pool(x.float(), THUMBNAIL).flatten(1), quantiles.flatten(1), flat.mean(2), flat.std(2)], 1)


def stage_features(out: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial) -> (B, 2C)``: each channel's spatial mean and sd (means only, ``(B, C)``, when
    ``2C > 512``)."""
    flat = out.flatten(2).float()
    if 2 * flat.shape[1] > MAX_STAGE_FEATURES:
        return flat.mean(2)
    return torch.cat([flat.mean(2), flat.std(2)], dim=1)


def _member_stages(member, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    modules = dict(member.backbone.named_modules())
    found: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: found.__setitem__(n, stage_features(out)))
             for n in names]
    try:
        member.forward_features(x)
    finally:
        for hook in hooks:
            hook.remove()
    return {n: found[n] for n in names}


@torch.no_grad()
def extract_features(model, images: np.ndarray, *, blocks=None, batch_size: int = 256) -> dict[str, np.ndarray]:
    """The guard's blocks of features of preprocessed ``images (N, C, *input_size)``, on the model's device.

    Args:
        blocks: the block names to compute (a fitted guard's, checked against the model when it was read);
            ``None``: every stage :func:`stage_modules` finds.

    Returns:
        ``{"input": (N, F_0), "0:<stage>": (N, F_1), ...}``; an :class:`~medlens.models.Ensemble` gives every
        member's stages (``"<member>:<stage>"``), members in order.
    """
    model = model.eval()
    device = next(model.parameters()).device
    members = list(getattr(model, "members", [model]))
    stages = ([stage_modules(m) for m in members] if blocks is None else
              [[b.split(":", 1)[1] for b in blocks if b.split(":", 1)[0] == str(i)] for i in range(len(members))])
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, max(len(images), 1), batch_size):
        batch = images[start:start + batch_size] if len(images) else np.zeros((1, *np.shape(images)[1:]))
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
        parts.setdefault(INPUT, []).append(input_features(x).cpu().numpy())
        for index, (member, names) in enumerate(zip(members, stages)):
            for name, value in _member_stages(member, names, x).items():
                parts.setdefault(f"{index}:{name}", []).append(value.cpu().numpy())
    return {name: np.concatenate(p)[:len(images)] for name, p in parts.items()}


def feature_sizes(model) -> dict[str, int]:
    """``F_b`` of every block the guard sees of ``model`` (block name -> feature count), from a probe image."""
    probe = np.zeros((1, model.in_channels, *model.input_size), dtype=np.float32)
    return {name: int(value.shape[1]) for name, value in extract_features(model, probe).items()}


def feature_size(model) -> int:
    """``sum_b F_b``: every feature the guard sees of ``model``."""
    return sum(feature_sizes(model).values())


# ---- the fit and its threshold ----------------------------------------------------------------------------------


def fit_gaussian(x: np.ndarray, groups: np.ndarray) -> Gaussian:
    """Class means of ``x (N, F)`` by ``groups (N,)`` and the shared Ledoit-Wolf precision of the centred rows."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(x, dtype=np.float64)
    present = np.unique(groups)
    means = np.stack([x[groups == g].mean(axis=0) for g in present])
    centred = x - means[np.searchsorted(present, groups)]
    return Gaussian(means, LedoitWolf(assume_centered=True).fit(centred).precision_)


def fit_guard(train_features: dict[str, np.ndarray], train_groups: np.ndarray | None,
              val_features: dict[str, np.ndarray]) -> OodGuard:
    """One Gaussian per block from training features; each block's standardisation and the threshold from
    validation.

    Args:
        train_features: block -> ``(N, F_b)`` of the training images (preprocessed, not augmented).
        train_groups: the class index of each training image ``(N,)``; ``None`` (multi-label): one Gaussian.
        val_features: block -> ``(V, F_b)`` of the validation images; the threshold is their scores' 95th
            percentile.
    """
    count = len(next(iter(train_features.values())))
    groups = np.zeros(count, dtype=np.int64) if train_groups is None else np.asarray(train_groups)
    blocks = {name: fit_gaussian(x, groups) for name, x in train_features.items()}
    unscaled = OodGuard(blocks, np.zeros(len(blocks)), np.ones(len(blocks)), float("inf"), {})
    distances = unscaled.standardised(val_features)
    centre, scale = distances.mean(axis=0), np.maximum(distances.std(axis=0), 1e-12)
    val_scores = ((distances - centre) / scale).max(axis=1)
    threshold = float(np.quantile(val_scores, RECALL, method="higher"))
    guard = OodGuard(blocks, centre, scale, threshold, {})
    description = {
        "fitted": True, "method": METHOD, "num_features": guard.num_features, "fitted_on_images": int(count),
        "classes": int(len(np.unique(groups))), "threshold": round(threshold, 6), "recall_target": RECALL,
        "validation_images": int(len(val_scores)),
        "validation_flagged": round(float((val_scores > threshold).mean()), 4),
        "blocks": {name: int(g.means.shape[1]) for name, g in blocks.items()},
        "rule": "Mahalanobis distance to the nearest training class mean in each block of features (the input's "
                "thumbnail and intensity quantiles; each stage's channel means and standard deviations), shared "
                "Ledoit-Wolf covariance per block (Lee et al. 2018); each distance standardised by the validation "
                "images' distances and the largest taken; out of distribution above the 95th percentile of the "
                "validation images' scores"}
    return OodGuard(blocks, centre, scale, threshold, description)


def fit_model_guard(model, train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray) -> OodGuard:
    """:func:`fit_guard` on the blocks of ``model``; labels ``(N,)`` group by class, ``(N, L)`` do not.

    At most :data:`MAX_FIT_IMAGES` training images (a seeded random subset) fit the Gaussians: their means and
    shrunk covariances are settled long before that, and the forward pass over every training image was most of
    the time after training on short budgets."""
    if len(train_images) > MAX_FIT_IMAGES:
        keep = np.sort(np.random.default_rng(0).choice(len(train_images), MAX_FIT_IMAGES, replace=False))
        train_images, train_labels = train_images[keep], np.asarray(train_labels)[keep]
    groups = np.asarray(train_labels) if np.ndim(train_labels) == 1 else None
    guard = fit_guard(extract_features(model, train_images), groups, extract_features(model, val_images))
    members = getattr(model, "members", None)
    stages = len(guard.blocks) - 1
    rule = (f"the input and {stages} stages over {len(members)} ensemble members" if members is not None
            else f"the input and the network's {stages} stages")
    return OodGuard(guard.blocks, guard.centre, guard.scale, guard.threshold, {**guard.description, "features": rule})


# ---- the file -----------------------------------------------------------------------------------------------------


def save_guard(guard: OodGuard, path: Path) -> Path:
    """Write ``guard`` as safetensors (float32 tensors; block order and description as JSON metadata), atomically."""
    from safetensors.numpy import save_file

    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    tensors = {"centre": guard.centre.astype(np.float32), "scale": guard.scale.astype(np.float32),
               "threshold": np.asarray(guard.threshold, dtype=np.float32)}
    for name, gaussian in guard.blocks.items():
        tensors[f"{name}/means"] = gaussian.means.astype(np.float32)
        tensors[f"{name}/precision"] = gaussian.precision.astype(np.float32)
    metadata = {"medlens_ood": json.dumps(guard.description), "medlens_ood_blocks": json.dumps(list(guard.blocks))}
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)
    return path


def read_guard(path: Path, model) -> OodGuard | None:
    """The guard saved at ``path`` for ``model`` (``None`` when there is no such file: a model from before the
    guard).

    Raises:
        GuardError: the file is not a readable guard, is of the first layout, or its blocks are not those
            ``model`` gives (another model's guard).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        return None
    try:
        tensors, metadata = load_file(str(path)), _metadata(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    if "means" in tensors and "medlens_ood_blocks" not in metadata:
        raise GuardError(f"{path}: a guard of the first layout (one distance on the penultimate features); this "
                         "medlens scores the input and every stage of the network: train the run again (or export "
                         "the bundle again from a run trained since)")
    try:
        names = json.loads(metadata["medlens_ood_blocks"])
        blocks = {n: Gaussian(tensors[f"{n}/means"].astype(np.float64), tensors[f"{n}/precision"].astype(np.float64))
                  for n in names}
        centre, scale = tensors["centre"].astype(np.float64), tensors["scale"].astype(np.float64)
        threshold, description = float(tensors["threshold"]), json.loads(metadata.get("medlens_ood", "{}"))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise _unreadable(path, exc) from None
    _check_fits(path, blocks, centre, scale, feature_sizes(model))
    return OodGuard(blocks, centre, scale, threshold, description)


def _unreadable(path: Path, exc: Exception) -> GuardError:
    return GuardError(f"{path}: not a readable out-of-distribution guard ({type(exc).__name__}); expected safetensors "
                      "with each block's means and precision, centre, scale and threshold; train the run again")


def _check_fits(path: Path, blocks: dict[str, Gaussian], centre: np.ndarray, scale: np.ndarray,
                expected: dict[str, int]) -> None:
    found = {n: int(g.means.shape[-1]) for n, g in blocks.items()}
    shapes_ok = all(g.means.ndim == 2 and g.precision.shape == (g.means.shape[1],) * 2 for g in blocks.values())
    if found != expected or not shapes_ok or not centre.shape == scale.shape == (len(blocks),):
        raise GuardError(f"{path}: the guard holds blocks of features {found} but the model gives {expected}; the "
                         "file belongs to another model: export the bundle again from its own run")


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return f.metadata() or {}


def describe_guard(path: Path) -> dict:
    """What the model card says of the guard at ``path`` (:data:`NO_GUARD` when there is none)."""
    path = Path(path)
    if not path.is_file():
        return dict(NO_GUARD)
    try:
        return json.loads(_metadata(path).get("medlens_ood", "{}")) or dict(NO_GUARD)
    except (OSError, ValueError) as exc:
        raise GuardError(f"{path}: the guard's description cannot be read ({type(exc).__name__}); train the run "
                         "again") from None


def guard_for(predictor) -> OodGuard | None:
    """The guard of the run or bundle folder a :class:`~medlens.deploy.Predictor` was opened from
    (``predictor.root``), read once; ``None`` for a model without one (or a Predictor built without a folder)."""
    if predictor.root is None:
        return None
    path = Path(predictor.root) / GUARD_FILE
    if not path.is_file():
        return None
    stat = path.stat()
    return _read_cached(str(path), stat.st_mtime_ns, stat.st_size, predictor.model)


@lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int, model) -> OodGuard | None:
    return read_guard(Path(path), model)


def ood_fields(guard: OodGuard | None, model, array: np.ndarray) -> dict:
    """``{"ood_score": float, "in_distribution": bool}`` of one preprocessed image ``array (C, *input_size)``
    through the PyTorch ``model``'s features; both ``None`` without a guard."""
    if guard is None:
        return {"ood_score": None, "in_distribution": None}
    scores, inside = guard.check(extract_features(model, array[None], blocks=list(guard.blocks)))
    return {"ood_score": round(float(scores[0]), 6), "in_distribution": bool(inside[0])}
