"""The data audit behind ``medlens inspect``: read every case, describe the dataset, flag problems.

The card answers: how many cases per class and split, which task, 2D or 3D, what sizes,
spacings and intensities, which files are unreadable, which images are exact duplicates, and
whether duplicates or patients cross splits (leakage) or masks disagree with their images.
For segmentation it also counts voxels per label and samples the image intensities under the
foreground, which is what CT normalisation is planned from (nnU-Net's fingerprint does the same).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from medlens.data.dataset import Dataset, Finding
from medlens.errors import MedlensError
from medlens.io import Image
from medlens.types import Case, Split, Task

SAMPLES_PER_CASE = 2048  # voxels drawn per case for the intensity percentiles
FOREGROUND_SAMPLES_PER_CASE = 10_000  # foreground voxels drawn per case for the normalisation statistics
FOREGROUND_PERCENTILES = (0.5, 50, 99.5)


@dataclass
class CaseStats:
    case_id: str
    shape: tuple[int, ...] = ()
    channels: int = 0
    dtype: str = ""
    spacing_mm: tuple[float, ...] | None = None
    minimum: float = 0.0
    maximum: float = 0.0
    mean: float = 0.0
    std: float = 0.0
    sha1: str = ""
    samples: np.ndarray | None = None
    label_voxels: dict[int, int] = field(default_factory=dict)  # integer label value -> voxels; {} if unchecked
    foreground: np.ndarray | None = None  # (N,) first-channel intensities where mask > 0; None off the image grid
    modality: str | None = None
    problems: list[Finding] = field(default_factory=list)


def inspect_dataset(dataset: Dataset, *, splits: dict | None = None, progress=None) -> dict:
    """Audit every case of ``dataset`` and return the dataset card (JSON-ready dict).

    Args:
        dataset: from :func:`medlens.data.open_dataset` (``strict=False`` keeps listing problems).
        splits: a splits file's content (see :mod:`medlens.data.splits`) to check for leakage,
            in addition to the splits the dataset fixes itself.
        progress: optional ``callable(done, total)``.
    """
    stats, unreadable = [], []
    rng = np.random.default_rng(0)
    for i, case in enumerate(dataset.cases):
        try:
            stats.append(_scan_case(dataset, case, rng))
        except (MedlensError, OSError, ValueError) as exc:
            unreadable.append({"case": case.case_id, "path": str(case.image), "error": str(exc)})
        if progress:
            progress(i + 1, len(dataset.cases))
    findings = list(dataset.findings) + [p for s in stats for p in s.problems]
    findings += _unreadable_findings(unreadable)
    card = {
        "medlens_card_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": _describe(dataset, stats),
        "counts": _counts(dataset),
        "images": _image_summary(stats),
        "unreadable": unreadable,
        "duplicates": _duplicate_groups(stats),
    }
    if dataset.task is Task.SEGMENTATION:
        card["masks"] = _mask_summary(dataset, stats)
        findings += _background_findings(dataset, stats)
    findings += _dimension_findings(stats)
    views = _split_views(dataset, splits)
    findings += _duplicate_findings(card["duplicates"], views)
    findings += _label_conflicts(dataset, card["duplicates"])
    findings += _patient_findings(dataset, views)
    findings += _class_findings(dataset, card["counts"])
    card["findings"] = [f.as_dict() for f in findings]
    card["fingerprint"] = _fingerprint(stats)
    return card


def _scan_case(dataset: Dataset, case: Case, rng: np.random.Generator) -> CaseStats:
    image = dataset.load_image(case)
    array = image.array
    values = array.astype(np.float64, copy=False)
    flat = values.reshape(-1)
    sample = flat if flat.size <= SAMPLES_PER_CASE else flat[rng.integers(0, flat.size, SAMPLES_PER_CASE)]
    digest = hashlib.sha1(np.ascontiguousarray(array).tobytes())
    digest.update(repr((array.shape, str(array.dtype))).encode())
    stats = CaseStats(case.case_id, image.spatial_shape, image.channels, str(array.dtype),
                      image.spacing_mm if image.spacing_known else None, float(flat.min()), float(flat.max()),
                      float(flat.mean()), float(flat.std()), digest.hexdigest(), sample.astype(np.float32),
                      modality=image.meta.get("modality"))
    if case.mask is not None:
        _check_mask(dataset, case, image, stats, rng)
    return stats


def _check_mask(dataset: Dataset, case: Case, image: Image, stats: CaseStats, rng: np.random.Generator) -> None:
    """Check a case's mask against its image; record its voxels per label and its foreground intensities.

    A mask of another dimensionality or with several channels gets one finding and no further checks:
    its values and grid cannot be compared with the image's. Masks that are not label maps (shape or
    non-integer values) leave ``label_voxels`` empty, so they do not enter the mask statistics.
    """
    try:
        mask = dataset.load_mask(case)
    except (MedlensError, OSError, ValueError) as exc:
        stats.problems.append(Finding("error", "mask.unreadable", f"{case.mask}: {exc}", [case.case_id]))
        return
    shape_problem = _mask_shape_problem(case, image, mask)
    if shape_problem:
        stats.problems.append(shape_problem)
        return
    values, counts = np.unique(mask.array, return_counts=True)
    integer = values == np.round(values)
    stats.problems += _mask_value_problems(dataset, case, values[~integer], [int(v) for v in values[integer]])
    if not integer.all():
        return
    stats.label_voxels = {int(v): int(n) for v, n in zip(values, counts)}
    if image.same_geometry(mask):
        stats.foreground = _sample_foreground(image, mask, rng)
    else:
        stats.problems.append(Finding("error", "mask.geometry", f"{case.mask}: mask grid (shape {mask.spatial_shape}, "
                                      f"spacing {_round(mask.spacing_mm)}, origin {_round(mask.origin_mm)}) differs "
                                      f"from image {case.image} (shape {image.spatial_shape}, spacing "
                                      f"{_round(image.spacing_mm)}, origin {_round(image.origin_mm)}); resample the "
                                      "mask onto the image grid (nearest neighbour)", [case.case_id]))


def _mask_shape_problem(case: Case, image: Image, mask: Image) -> Finding | None:
    """``mask.dims`` when the mask is 2D for a 3D image (or the reverse), ``mask.channels`` when C > 1."""
    if mask.spatial_dims != image.spatial_dims:
        return Finding("error", "mask.dims", f"{case.mask}: mask is {mask.spatial_dims}D (shape {mask.spatial_shape}) "
                       f"but its image {case.image} is {image.spatial_dims}D (shape {image.spatial_shape}); save one "
                       f"mask per image on the image's grid, i.e. a {image.spatial_dims}D label map of shape "
                       f"{image.spatial_shape} with the image's spacing and origin", [case.case_id])
    if mask.channels > 1:
        return Finding("error", "mask.channels", f"{case.mask}: mask has {mask.channels} channels (array shape "
                       f"{mask.array.shape}) but a label map has one, holding a class index per voxel; save it as a "
                       "single-channel image (grey, not RGB; class indices, not one channel per class)", [case.case_id])
    return None


def _mask_value_problems(dataset: Dataset, case: Case, fractional: np.ndarray, labels: list[int]) -> list[Finding]:
    """``mask.values`` for non-integer values, ``mask.labels`` for integer values no label declares."""
    problems = []
    if fractional.size:
        problems.append(Finding("error", "mask.values", f"{case.mask}: mask holds non-integer values "
                                f"(e.g. {fractional[:3]}); a label map needs integer class indices", [case.case_id]))
    declared = dataset.meta.get("label_values") or list(range(len(dataset.class_names)))
    outside = [v for v in labels if declared and v not in declared]
    if outside:
        names = ", ".join(f"{v}={n}" for v, n in zip(declared, dataset.class_names))
        problems.append(Finding("error", "mask.labels", f"{case.mask}: label value(s) {outside} are outside the "
                                f"declared labels ({names}); fix the mask or the labels in dataset.json", [case.case_id]))
    return problems


def _sample_foreground(image: Image, mask: Image, rng: np.random.Generator) -> np.ndarray:
    """Intensities of the image's first channel where ``mask > 0``, at most FOREGROUND_SAMPLES_PER_CASE of them.

    Returns:
        ``(N,)`` float32, drawn without replacement when there are more; ``(0,)`` for a background-only mask.
    """
    values = image.array[0][mask.array[0] > 0]
    if values.size > FOREGROUND_SAMPLES_PER_CASE:
        values = values[rng.choice(values.size, FOREGROUND_SAMPLES_PER_CASE, replace=False)]
    return values.astype(np.float32)


def _round(values) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in values)


def _describe(dataset: Dataset, stats: list[CaseStats]) -> dict:
    dims = Counter(len(s.shape) for s in stats)
    spatial_dims = dataset.spatial_dims or (dims.most_common(1)[0][0] if dims else None)
    modalities = Counter(s.modality for s in stats if s.modality)
    modality = dataset.meta.get("modality") or (modalities.most_common(1)[0][0] if modalities else None)
    if isinstance(modality, list):
        modality = ", ".join(modality)
    return {"source": str(dataset.root), "layout": dataset.layout, "task": dataset.task.value,
            "spatial_dims": spatial_dims, "task_label": f"{dataset.task.value} {spatial_dims}D",
            "class_names": list(dataset.class_names), "num_cases": len(dataset.cases),
            "num_readable": len(stats), "modality": modality,
            "meta": {k: v for k, v in dataset.meta.items() if k != "columns"}}


def _counts(dataset: Dataset) -> dict:
    """Cases per split and class (positives per label for multi-label)."""
    by_split: dict[str, Counter] = defaultdict(Counter)
    patients: dict[str, set] = defaultdict(set)
    for case in dataset.cases:
        split = case.split.value if case.split else "unassigned"
        if case.patient_id:
            patients[split].add(case.patient_id)
        if dataset.task is Task.SEGMENTATION or case.label is None:
            by_split[split]["cases"] += 1
        elif dataset.task is Task.MULTILABEL:
            by_split[split]["cases"] += 1
            for name, flag in zip(dataset.class_names, case.label):
                by_split[split][name] += int(flag)
        else:
            by_split[split][dataset.class_names[case.label]] += 1
    order = ["cases", *dataset.class_names]
    ordered = lambda c: {k: c[k] for k in order if k in c}  # noqa: E731
    counts = {"by_split": {s: ordered(c) for s, c in sorted(by_split.items(), key=lambda kv: _SPLIT_ORDER[kv[0]])},
              "total": ordered(sum(by_split.values(), Counter()))}
    if patients:
        counts["patients_by_split"] = {s: len(p) for s, p in patients.items()}
    return counts


_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "unassigned": 3}


def _summary(values: list[float]) -> dict:
    """min, 10th percentile (the spacing nnU-Net keeps on a coarse axis), median, max."""
    array = np.asarray(values, dtype=np.float64)
    return {"min": float(array.min()), "p10": float(np.percentile(array, 10)), "median": float(np.median(array)),
            "max": float(array.max())}


def _image_summary(stats: list[CaseStats]) -> dict:
    if not stats:
        return {}
    shapes = [s.shape for s in stats]
    dims = max(len(s) for s in shapes)
    summary = {
        "shape": {f"axis{a}": _summary([s[a] for s in shapes if len(s) > a]) for a in range(dims)},
        "distinct_shapes": len(set(shapes)),
        "channels": dict(Counter(str(s.channels) for s in stats)),
        "dtypes": dict(Counter(s.dtype for s in stats)),
        "spacing_known": all(s.spacing_mm is not None for s in stats),
    }
    spacings = [s.spacing_mm for s in stats if s.spacing_mm is not None]
    if spacings:
        summary["spacing_mm"] = {f"axis{a}": _summary([sp[a] for sp in spacings if len(sp) > a]) for a in range(dims)}
    samples = np.concatenate([s.samples for s in stats])
    summary["intensity"] = {
        "min": min(s.minimum for s in stats), "max": max(s.maximum for s in stats),
        "mean": float(np.mean([s.mean for s in stats])), "std": float(np.mean([s.std for s in stats])),
        "percentiles": {str(q): float(v) for q, v in zip((0.5, 1, 50, 99, 99.5), np.percentile(samples, [0.5, 1, 50, 99, 99.5]))},
    }
    return summary


def _mask_summary(dataset: Dataset, stats: list[CaseStats]) -> dict:
    """Labels declared and present, voxels per label, foreground fraction and foreground intensities.

    ``foreground_fraction`` is the median over cases of foreground (label > 0) voxels / all voxels;
    ``foreground_intensity`` pools the per-case samples (``None`` when no mask has foreground on its image's grid).
    """
    checked = [s for s in stats if s.label_voxels]
    present = Counter(v for s in checked for v in s.label_voxels)
    voxels = sum((Counter(s.label_voxels) for s in checked), Counter())
    names = dataset.class_names
    values = dataset.meta.get("label_values") or range(len(names))
    fractions = [_foreground_voxels(s) / sum(s.label_voxels.values()) for s in checked]
    return {"declared_labels": {str(v): n for v, n in zip(values, names)},
            "cases_with_label": {str(v): present[v] for v in sorted(present)},
            "all_background": [s.case_id for s in checked if not _foreground_voxels(s)],
            "label_voxels": {str(v): voxels[v] for v in sorted(voxels)},
            "foreground_fraction": float(np.median(fractions)) if fractions else None,
            "foreground_intensity": _foreground_intensity(stats)}


def _foreground_voxels(stats: CaseStats) -> int:
    return sum(n for v, n in stats.label_voxels.items() if v > 0)


def _foreground_intensity(stats: list[CaseStats]) -> dict | None:
    """Percentiles 0.5 / 50 / 99.5, mean and std of all cases' foreground samples pooled, or ``None``."""
    samples = [s.foreground for s in stats if s.foreground is not None and s.foreground.size]
    if not samples:
        return None
    pooled = np.concatenate(samples).astype(np.float64)
    percentiles = np.percentile(pooled, FOREGROUND_PERCENTILES)
    return {"percentiles": {str(q): float(v) for q, v in zip(FOREGROUND_PERCENTILES, percentiles)},
            "mean": float(pooled.mean()), "std": float(pooled.std()), "voxels_sampled": int(pooled.size)}


def _background_findings(dataset: Dataset, stats: list[CaseStats]) -> list[Finding]:
    """``mask.all_background``: an error when no case, or no training case, has foreground; else info.

    Empty masks are legitimate (a scan without a lesion), so a few of them are only listed.
    """
    checked = [s for s in stats if s.label_voxels]
    empty = [s.case_id for s in checked if not _foreground_voxels(s)]
    if not empty:
        return []
    if len(empty) == len(checked):
        return [Finding("error", "mask.all_background", f"all {len(checked)} checked mask(s) hold only background (0), "
                        "so there is nothing to learn; check that the mask files are the right ones (not blank "
                        "exports) and that foreground voxels carry label values > 0 (1, 2, ...)",
                        empty)]
    training = {c.case_id for c in dataset.cases if c.split is Split.TRAIN}
    train_empty = [cid for cid in empty if cid in training]
    if train_empty and len(train_empty) == sum(s.case_id in training for s in checked):
        return [Finding("error", "mask.all_background", f"all {len(train_empty)} training mask(s) hold only "
                        f"background (0); the {len(checked) - len(empty)} case(s) with foreground are all outside "
                        "the training split, so a model cannot learn the labels. Fix the training masks or move "
                        "cases with foreground into training", train_empty)]
    return [Finding("info", "mask.all_background", f"{len(empty)} of {len(checked)} mask(s) hold only background "
                    f"(e.g. {', '.join(empty[:3])}); fine for cases without the structure, check them otherwise",
                    empty)]


def _duplicate_groups(stats: list[CaseStats]) -> list[list[str]]:
    by_hash: dict[str, list[str]] = defaultdict(list)
    for s in stats:
        by_hash[s.sha1].append(s.case_id)
    return sorted((ids for ids in by_hash.values() if len(ids) > 1), key=lambda ids: ids[0])


def _split_views(dataset: Dataset, splits: dict | None) -> list[tuple[str, dict[str, str]]]:
    """Named assignments case id -> split to check: the dataset's own, and each fold of a splits file."""
    views = []
    own = {c.case_id: c.split.value for c in dataset.cases if c.split}
    if own:
        views.append(("dataset splits", own))
    for k, fold in enumerate((splits or {}).get("folds", [])):
        view = {cid: "test" for cid in splits.get("test", [])}
        view.update({cid: "train" for cid in fold["train"]})
        view.update({cid: "val" for cid in fold["val"]})
        views.append((f"splits file fold {k}", view))
    return views


def _duplicate_findings(groups: list[list[str]], views) -> list[Finding]:
    findings = []
    if groups:
        n = sum(len(g) for g in groups)
        findings.append(Finding("warning", "duplicates", f"{len(groups)} group(s) of identical images ({n} cases), "
                                f"e.g. {', '.join(groups[0][:3])}; remove copies or make sure they share a patient id",
                                [cid for g in groups for cid in g]))
    for name, view in views:
        crossing = [g for g in groups if len({view[c] for c in g if c in view}) > 1]
        if crossing:
            findings.append(Finding("error", "leakage.duplicates", f"{name}: {len(crossing)} group(s) of identical "
                                    f"images sit in more than one split (e.g. {', '.join(crossing[0][:3])}); the "
                                    "test figures are optimistic. Remove the copies or re-split grouping them",
                                    [cid for g in crossing for cid in g]))
    return findings


def _label_conflicts(dataset: Dataset, groups: list[list[str]]) -> list[Finding]:
    if dataset.task is Task.SEGMENTATION:
        return []
    label_of = {c.case_id: c.label for c in dataset.cases}
    conflicting = [g for g in groups if len({label_of[c] for c in g}) > 1]
    if not conflicting:
        return []
    return [Finding("error", "label.conflict", f"{len(conflicting)} group(s) of identical images carry different "
                    f"labels (e.g. {', '.join(conflicting[0][:3])}); check which label is right and remove the other",
                    [cid for g in conflicting for cid in g])]


def _patient_findings(dataset: Dataset, views) -> list[Finding]:
    patient_of = {c.case_id: c.patient_id for c in dataset.cases if c.patient_id}
    findings = []
    for name, view in views:
        splits_of: dict[str, set] = defaultdict(set)
        for cid, split in view.items():
            if cid in patient_of:
                splits_of[patient_of[cid]].add(split)
        crossing = sorted(p for p, s in splits_of.items() if len(s) > 1)
        if crossing:
            findings.append(Finding("error", "leakage.patient", f"{name}: {len(crossing)} patient(s) have cases in more "
                                    f"than one split (e.g. {', '.join(crossing[:3])}); re-split with "
                                    "`medlens split`, which groups by patient", crossing))
    return findings


def _class_findings(dataset: Dataset, counts: dict) -> list[Finding]:
    if dataset.task in (Task.SEGMENTATION, Task.MULTILABEL):
        return []
    findings = []
    total = counts["total"]
    empty = [n for n in dataset.class_names if total.get(n, 0) == 0]
    if empty:
        findings.append(Finding("error", "class.empty", f"class(es) {', '.join(empty)} have no cases; add examples "
                                "or remove the class"))
    train = counts["by_split"].get("train")
    if train is not None:
        missing = [n for n in dataset.class_names if train.get(n, 0) == 0 and n not in empty]
        if missing:
            findings.append(Finding("error", "class.no_training", f"class(es) {', '.join(missing)} have no training "
                                    "cases; a model cannot learn them"))
    present = [total.get(n, 0) for n in dataset.class_names if total.get(n, 0)]
    if present and max(present) >= 5 * min(present):
        findings.append(Finding("info", "class.imbalance", f"classes are imbalanced (largest/smallest = "
                                f"{max(present) / min(present):.1f}); training will weight them"))
    return findings


def _dimension_findings(stats: list[CaseStats]) -> list[Finding]:
    dims = Counter(len(s.shape) for s in stats)
    if len(dims) < 2:
        return []
    minority = min(dims, key=dims.get)
    odd = [s.case_id for s in stats if len(s.shape) == minority]
    return [Finding("error", "image.dims", f"{len(odd)} case(s) are {minority}D while most are "
                    f"{max(dims, key=dims.get)}D (e.g. {odd[0]}); one dataset needs one dimensionality", odd)]


def _unreadable_findings(unreadable: list[dict]) -> list[Finding]:
    if not unreadable:
        return []
    nan = [u["case"] for u in unreadable if "NaN" in u["error"]]
    findings = [Finding("error", "image.unreadable", f"{len(unreadable)} case(s) could not be read, e.g. "
                        f"{unreadable[0]['error']}", [u["case"] for u in unreadable])]
    if nan:
        findings.append(Finding("error", "image.nan", f"{len(nan)} case(s) hold NaN or infinite voxels", nan))
    return findings


def _fingerprint(stats: list[CaseStats]) -> str:
    digest = hashlib.sha256()
    for s in sorted(stats, key=lambda s: s.case_id):
        digest.update(f"{s.case_id}:{s.sha1}\n".encode())
    return digest.hexdigest()
