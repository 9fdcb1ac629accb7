"""The data audit behind ``medlens inspect``: read every case, describe the dataset, flag problems.

The card answers: how many cases per class and split, which task, 2D or 3D, what sizes,
spacings and intensities, which files are unreadable, which images are exact (or, in 2D, near)
duplicates (:mod:`medlens.data.audit_near`), and
whether duplicates or patients cross splits (leakage) or masks disagree with their images.
For segmentation it also counts voxels per label and samples the image intensities under the
foreground, which is what CT normalisation is planned from (nnU-Net's fingerprint does the same).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np

from medlens.data.audit_boxes import box_findings, box_summary, check_boxes
from medlens.data.audit_clinical import audit_clinical
from medlens.data.audit_masks import background_findings, check_mask, mask_summary
from medlens.data.audit_near import (
    across_splits,
    mixed_labels,
    near_duplicate_findings,
    near_duplicate_groups,
    thumbnail,
)
from medlens.data.audit_reads import read_note_findings, skipped_entries, skipped_findings, unreadable_findings
from medlens.data.audit_views import read_for_audit, view_summary
from medlens.data.dataset import Dataset, Finding, describe_read_failure, skip_unreadable_in_force
from medlens.types import Case

SAMPLES_PER_CASE = 2048  # voxels drawn per case for the intensity percentiles
PERCENTILES = (0.5, 1, 50, 99, 99.5)  # the card's intensity percentiles (normalisation windows are planned from them)


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
    read_notes: list[dict] = field(default_factory=list)  # the reader's image.meta["read_warnings"]
    boxes: object | None = None  # detection: the case's CaseBoxes (medlens.data.audit_boxes)
    thumbnail: np.ndarray | None = None  # 2D: (1024,) float16 unit vector (medlens.data.audit_near)


def inspect_dataset(dataset: Dataset, *, splits: dict | None = None, progress=None,
                    skip_unreadable: bool | None = None) -> dict:
    """Audit every case of ``dataset`` and return the dataset card (JSON-ready dict).

    Args:
        dataset: from :func:`medlens.data.open_dataset` (``strict=False`` keeps listing problems).
        splits: a splits file's content (see :mod:`medlens.data.splits`) to check for leakage,
            in addition to the splits the dataset fixes itself.
        progress: optional ``callable(done, total)``.
        skip_unreadable: leave the files no reader opens out (listed in ``card["skipped"]``, counted nowhere
            else, an ``image.skipped`` warning) instead of an ``image.unreadable`` error that blocks training;
            ``None`` = what :func:`~medlens.data.dataset.unreadable_skipped` put in force (refused by default).
    """
    stats, unreadable = _scan_cases(dataset, progress)
    skip = bool(unreadable) and skip_unreadable_in_force(skip_unreadable)
    kept = _without(dataset, {u["case"] for u in unreadable}) if skip else dataset
    findings = list(dataset.findings) + [p for s in stats for p in s.problems] + read_note_findings(stats)
    findings += skipped_findings(unreadable) if skip else unreadable_findings(unreadable)
    card = {
        "medlens_card_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": _describe(dataset, stats),
        "counts": _counts(kept),
        "images": _image_summary(stats),
        "unreadable": unreadable,
        "duplicates": _duplicate_groups(stats),
    }
    card["near_duplicates"], near_notes, card["near_duplicate_search"] = near_duplicate_groups(
        [s.case_id for s in stats], [s.thumbnail for s in stats], [s.sha1 for s in stats])
    if skip:
        card["skipped"] = skipped_entries(dataset, unreadable)
    findings += _content_findings(kept, stats, card)
    if kept.meta.get("views"):
        card["views"], view_findings = view_summary(kept)
        findings += view_findings
    views = _split_views(kept, splits)
    findings += _duplicate_findings(card["duplicates"], views)
    findings += _label_conflicts(kept, card["duplicates"])
    findings += near_notes + near_duplicate_findings(kept, card["near_duplicates"], views)
    findings += _patient_findings(kept, views)
    findings += _class_findings(kept, card["counts"])
    findings += audit_clinical(kept, card)  # card["clinical"]: manifest columns beside the images
    card["findings"] = [f.as_dict() for f in findings]
    card["fingerprint"] = _fingerprint(stats)
    card["case_hashes"] = {s.case_id: s.sha1[:HASH_CHARS] for s in stats}  # what other data is checked against
    return card


HASH_CHARS = 20  # of a case's pixel SHA-1 kept in the card (80 bits): enough to tell copies from other images


def _scan_cases(dataset: Dataset, progress) -> tuple[list[CaseStats], list[dict]]:
    """Read every case: the statistics of the readable ones, ``{"case", "path", "error"}`` for the others."""
    stats, unreadable = [], []
    rng = np.random.default_rng(0)
    for i, case in enumerate(dataset.cases):
        try:
            stats.append(_scan_case(dataset, case, rng))
        except Exception as exc:  # noqa: BLE001 - any failure reading one case is that case's finding
            reason = describe_read_failure(case.image, exc)
            unreadable.append({"case": case.case_id, "path": str(case.image), "error": reason})
        if progress:
            progress(i + 1, len(dataset.cases))
    return stats, unreadable


def _content_findings(dataset: Dataset, stats: list[CaseStats], card: dict) -> list[Finding]:
    """Masks and boxes (their summaries go into ``card``), dimensionality and spacing."""
    findings = []
    if dataset.task.label_form == "mask":
        card["masks"] = mask_summary(dataset, stats)
        findings += background_findings(dataset, stats)
    if dataset.task.label_form == "boxes":
        records = {s.case_id: s.boxes for s in stats if s.boxes is not None}
        card["boxes"] = box_summary(dataset, records)
        findings += box_findings(dataset, records)
    return findings + _dimension_findings(stats) + _spacing_findings(stats)


def _without(dataset: Dataset, case_ids: set[str]) -> Dataset:
    return replace(dataset, cases=[c for c in dataset.cases if c.case_id not in case_ids])


def _scan_case(dataset: Dataset, case: Case, rng: np.random.Generator) -> CaseStats:
    image = read_for_audit(dataset, case)  # views on different grids: the first stands for the case
    array = np.ascontiguousarray(image.array)
    flat = array.reshape(-1)  # a view: the audit holds no float64 copy of a large image
    sample = flat if flat.size <= SAMPLES_PER_CASE else flat[rng.integers(0, flat.size, SAMPLES_PER_CASE)]
    digest = hashlib.sha1(array)  # the bytes of array.tobytes(), without the copy
    digest.update(repr((array.shape, str(array.dtype))).encode())
    low, high = float(flat.min()), float(flat.max())  # an empty array fails here, before the statistics
    mean, std = _mean_std(flat)
    stats = CaseStats(case.case_id, image.spatial_shape, image.channels, str(array.dtype),
                      image.spacing_mm if image.spacing_known else None, low, high, mean, std,
                      digest.hexdigest(), sample.astype(np.float32), modality=image.meta.get("modality"),
                      read_notes=list(image.meta.get("read_warnings", [])), thumbnail=thumbnail(array))
    if case.mask is not None:
        check_mask(dataset, case, image, stats, rng)
    if dataset.task.label_form == "boxes":
        stats.boxes = check_boxes(dataset, case, image)
    return stats


STATS_CHUNK = 1 << 22  # voxels converted to float64 at a time (32 MiB)


def _mean_std(flat: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of ``flat`` ``(N,)`` in float64, in chunks of STATS_CHUNK.

    Chunks are merged with Chan et al.'s pairwise update ("Updating formulae and a pairwise algorithm
    for computing sample variances", 1979): the counts, means and sums of squared deviations of two
    parts give those of the whole, without the cancellation of a running sum of squares.
    """
    if flat.size <= STATS_CHUNK:
        values = flat.astype(np.float64, copy=False)
        return float(values.mean()), float(values.std())
    count, mean, m2 = 0, 0.0, 0.0
    for start in range(0, flat.size, STATS_CHUNK):
        chunk = flat[start:start + STATS_CHUNK].astype(np.float64)
        n, chunk_mean = chunk.size, float(chunk.mean())
        chunk_m2 = float(chunk.var()) * n
        delta = chunk_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += chunk_m2 + delta * delta * count * n / total
        count = total
    return mean, float(np.sqrt(m2 / count))


def _round(values) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in values)


def _describe(dataset: Dataset, stats: list[CaseStats]) -> dict:
    dims = Counter(len(s.shape) for s in stats)
    spatial_dims = dataset.spatial_dims or (dims.most_common(1)[0][0] if dims else None)
    modalities = Counter(s.modality for s in stats if s.modality)
    modality = dataset.meta.get("modality") or (modalities.most_common(1)[0][0] if modalities else None)
    if isinstance(modality, list):
        modality = ", ".join(modality)
    label = f"{dataset.task.value} {spatial_dims}D" if spatial_dims else dataset.task.value  # no readable image
    return {"source": str(dataset.root), "layout": dataset.layout, "task": dataset.task.value,
            "spatial_dims": spatial_dims, "task_label": label,
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
        if dataset.task.label_form == "boxes":  # boxes from masks are counted in card["boxes"], once read
            by_split[split]["cases"] += 1
            for label in (case.boxes.labels if case.boxes is not None else ()):
                by_split[split]["boxes"] += 1
                by_split[split][dataset.class_names[label]] += 1
        elif dataset.task.label_form == "mask" or case.label is None:
            by_split[split]["cases"] += 1
        elif dataset.task.label_form == "flags":
            by_split[split]["cases"] += 1
            for name, flag in zip(dataset.class_names, case.label):
                by_split[split][name] += int(flag)
        else:
            by_split[split][dataset.class_names[case.label]] += 1
    order = ["cases", "boxes", *dataset.class_names]  # detection: boxes per class
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
    spacings = [s.spacing_mm for s in stats if s.spacing_mm is not None and _valid_spacing(s.spacing_mm)]
    if spacings:
        summary["spacing_mm"] = {f"axis{a}": _summary([sp[a] for sp in spacings if len(sp) > a]) for a in range(dims)}
    samples = np.concatenate([s.samples for s in stats])
    summary["intensity"] = {
        "min": min(s.minimum for s in stats), "max": max(s.maximum for s in stats),
        "mean": float(np.mean([s.mean for s in stats])), "std": float(np.mean([s.std for s in stats])),
        "percentiles": {str(q): float(v) for q, v in zip(PERCENTILES, np.percentile(samples, PERCENTILES))},
    }
    return summary


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
        if crossing := across_splits(groups, view):
            findings.append(Finding("error", "leakage.duplicates", f"{name}: {len(crossing)} group(s) of identical "
                                    f"images sit in more than one split (e.g. {', '.join(crossing[0][:3])}); the "
                                    "test figures are optimistic. Remove the copies or re-split grouping them",
                                    [cid for g in crossing for cid in g]))
    return findings


def _label_conflicts(dataset: Dataset, groups: list[list[str]]) -> list[Finding]:
    conflicting = mixed_labels(dataset, groups)
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
            findings.append(Finding("error", "leakage.patient", f"{name}: {len(crossing)} patient(s) have cases in "
                                    f"more than one split (e.g. {', '.join(crossing[:3])}); re-split with "
                                    "`medlens split`, which groups by patient", crossing))
    return findings


def _class_findings(dataset: Dataset, counts: dict) -> list[Finding]:
    if dataset.task.label_form != "class":
        return []
    findings = []
    total = counts["total"]
    empty = [n for n in dataset.class_names if total.get(n, 0) == 0]
    if empty:
        findings.append(Finding.blocking("class.empty", f"class(es) {', '.join(empty)} have no cases; add examples "
                                "or remove the class"))
    train = counts["by_split"].get("train")
    if train is not None:
        missing = [n for n in dataset.class_names if train.get(n, 0) == 0 and n not in empty]
        if missing:
            findings.append(Finding.blocking("class.no_training", f"class(es) {', '.join(missing)} have no training "
                                    "cases; a model cannot learn them"))
    present = [total.get(n, 0) for n in dataset.class_names if total.get(n, 0)]
    if present and max(present) >= 5 * min(present):
        findings.append(Finding("info", "class.imbalance", f"classes are imbalanced (largest/smallest = "
                                f"{max(present) / min(present):.1f}); training will weight them"))
    return findings


def _valid_spacing(spacing_mm) -> bool:
    return all(math.isfinite(v) and v > 0 for v in spacing_mm)


def _spacing_findings(stats: list[CaseStats]) -> list[Finding]:
    """``image.spacing`` for files whose header declares a voxel size that is not a positive finite number.

    Such a header contradicts itself (or was damaged): resampling and heat maps cannot use it, and one
    NaN would make the planned spacing NaN, so these cases are refused rather than guessed at.
    """
    bad = [s for s in stats if s.spacing_mm is not None and not _valid_spacing(s.spacing_mm)]
    if not bad:
        return []
    return [Finding.blocking("image.spacing", f"{len(bad)} case(s) declare a voxel spacing that is not a positive "
                             f"finite number (e.g. {bad[0].case_id}: {tuple(bad[0].spacing_mm)} mm); the header is "
                             "damaged: export the image again with its real spacing, or remove it",
                             [s.case_id for s in bad])]


def _dimension_findings(stats: list[CaseStats]) -> list[Finding]:
    dims = Counter(len(s.shape) for s in stats)
    if len(dims) < 2:
        return []
    minority = min(dims, key=dims.get)
    odd = [s.case_id for s in stats if len(s.shape) == minority]
    return [Finding.blocking("image.dims", f"{len(odd)} case(s) are {minority}D while most are "
                    f"{max(dims, key=dims.get)}D (e.g. {odd[0]}); one dataset needs one dimensionality", odd)]


def _fingerprint(stats: list[CaseStats]) -> str:
    digest = hashlib.sha256()
    for s in sorted(stats, key=lambda s: s.case_id):
        digest.update(f"{s.case_id}:{s.sha1}\n".encode())
    return digest.hexdigest()
