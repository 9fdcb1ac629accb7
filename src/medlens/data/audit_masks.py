"""The audit's mask checks: each mask against its image, and what the masks say together.

Per case (:func:`check_mask`): unreadable (``mask.unreadable``), another dimensionality than the
image (``mask.dims``), several channels (``mask.channels``), non-integer values (``mask.values``),
undeclared labels (``mask.labels``), another grid (``mask.geometry``); voxels per label and up to
:data:`FOREGROUND_SAMPLES_PER_CASE` image intensities under the foreground are recorded. Over the
dataset (:func:`mask_summary`, :func:`background_findings`): labels present, voxels per label,
foreground fraction, pooled foreground intensity statistics (CT normalisation is planned from
them), and ``mask.all_background`` when nothing, or nothing in training, has foreground.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from medlens.data.dataset import Dataset, Finding, describe_read_failure
from medlens.io import Image
from medlens.types import Case, Split

if TYPE_CHECKING:
    from medlens.data.audit import CaseStats

FOREGROUND_SAMPLES_PER_CASE = 10_000  # foreground voxels drawn per case for the normalisation statistics
FOREGROUND_PERCENTILES = (0.5, 50, 99.5)


def check_mask(dataset: Dataset, case: Case, image: Image, stats: CaseStats, rng: np.random.Generator) -> None:
    """Check a case's mask against its image; record its voxels per label and its foreground intensities.

    A mask of another dimensionality or with several channels gets one finding and no further checks:
    its values and grid cannot be compared with the image's. Masks that are not label maps (shape or
    non-integer values) leave ``label_voxels`` empty, so they do not enter the mask statistics.
    """
    try:
        mask = dataset.load_mask(case)
        stats.read_notes += mask.meta.get("read_warnings", [])  # a misnamed file, overlapping DICOM segments...
        _check_loaded_mask(dataset, case, image, mask, stats, rng)
    except Exception as exc:  # noqa: BLE001 - any failure reading one mask is that case's finding
        stats.problems.append(Finding.blocking("mask.unreadable", describe_read_failure(case.mask, exc),
                                               [case.case_id]))


def _check_loaded_mask(dataset: Dataset, case: Case, image: Image, mask: Image, stats: CaseStats,
                       rng: np.random.Generator) -> None:
    shape_problem = _mask_shape_problem(case, image, mask)
    if shape_problem:
        stats.problems.append(shape_problem)
        return
    values, counts = np.unique(mask.array, return_counts=True)
    integer = np.isfinite(values) & (values == np.round(values))  # NaN and inf are not class indices
    stats.problems += _mask_value_problems(dataset, case, values[~integer], [int(v) for v in values[integer]])
    if not integer.all():
        return
    stats.label_voxels = {int(v): int(n) for v, n in zip(values, counts)}
    if image.same_geometry(mask):
        stats.foreground = _sample_foreground(image, mask, rng)
    else:
        stats.problems.append(Finding.blocking("mask.geometry", f"{case.mask}: mask grid (shape {mask.spatial_shape}, "
                                      f"spacing {_round(mask.spacing_mm)}, origin {_round(mask.origin_mm)}) differs "
                                      f"from image {case.image} (shape {image.spatial_shape}, spacing "
                                      f"{_round(image.spacing_mm)}, origin {_round(image.origin_mm)}); resample the "
                                      "mask onto the image grid (nearest neighbour)", [case.case_id]))


def _mask_shape_problem(case: Case, image: Image, mask: Image) -> Finding | None:
    """``mask.dims`` when the mask is 2D for a 3D image (or the reverse), ``mask.channels`` when C > 1."""
    if mask.spatial_dims != image.spatial_dims:
        return Finding.blocking("mask.dims", f"{case.mask}: mask is {mask.spatial_dims}D (shape {mask.spatial_shape}) "
                       f"but its image {case.image} is {image.spatial_dims}D (shape {image.spatial_shape}); save one "
                       f"mask per image on the image's grid, i.e. a {image.spatial_dims}D label map of shape "
                       f"{image.spatial_shape} with the image's spacing and origin", [case.case_id])
    if mask.channels > 1:
        return Finding.blocking("mask.channels", f"{case.mask}: mask has {mask.channels} channels (array shape "
                       f"{mask.array.shape}) but a label map has one, holding a class index per voxel; save it as a "
                       "single-channel image (grey, not RGB; class indices, not one channel per class)", [case.case_id])
    return None


def _mask_value_problems(dataset: Dataset, case: Case, fractional: np.ndarray, labels: list[int]) -> list[Finding]:
    """``mask.values`` for non-integer values, ``mask.labels`` for integer values no label declares."""
    problems = []
    if fractional.size:
        problems.append(Finding.blocking("mask.values", f"{case.mask}: mask holds non-integer values "
                                f"(e.g. {fractional[:3]}); a label map needs integer class indices", [case.case_id]))
    declared = dataset.meta.get("label_values") or list(range(len(dataset.class_names)))
    outside = [v for v in labels if declared and v not in declared]
    if outside:
        names = ", ".join(f"{v}={n}" for v, n in zip(declared, dataset.class_names))
        problems.append(Finding.blocking("mask.labels", f"{case.mask}: label value(s) {outside} are outside the "
                                         f"declared labels ({names}); fix the mask or the labels in dataset.json",
                                         [case.case_id]))
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


def mask_summary(dataset: Dataset, stats: list[CaseStats]) -> dict:
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


def background_findings(dataset: Dataset, stats: list[CaseStats]) -> list[Finding]:
    """``mask.all_background``: an error when no case, or no training case, has foreground; else info.

    Empty masks are legitimate (a scan without a lesion), so a few of them are only listed.
    """
    checked = [s for s in stats if s.label_voxels]
    empty = [s.case_id for s in checked if not _foreground_voxels(s)]
    if not empty:
        return []
    if len(empty) == len(checked):
        return [Finding.blocking("mask.all_background", f"all {len(checked)} checked mask(s) hold only background (0), "
                        "so there is nothing to learn; check that the mask files are the right ones (not blank "
                        "exports) and that foreground voxels carry label values > 0 (1, 2, ...)",
                        empty)]
    training = {c.case_id for c in dataset.cases if c.split is Split.TRAIN}
    train_empty = [cid for cid in empty if cid in training]
    if train_empty and len(train_empty) == sum(s.case_id in training for s in checked):
        return [Finding.blocking("mask.all_background", f"all {len(train_empty)} training mask(s) hold only "
                        f"background (0); the {len(checked) - len(empty)} case(s) with foreground are all outside "
                        "the training split, so a model cannot learn the labels. Fix the training masks or move "
                        "cases with foreground into training", train_empty)]
    return [Finding("info", "mask.all_background", f"{len(empty)} of {len(checked)} mask(s) hold only background "
                    f"(e.g. {', '.join(empty[:3])}); fine for cases without the structure, check them otherwise",
                    empty)]


def _round(values) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in values)
