"""Per-case, per-class segmentation metrics in millimetres, and their bootstrap summary.

:func:`case_metrics` scores one case: for every class of ``labels`` it compares the binary masks
``pred == value`` and ``ref == value``. Overlap and surface distances come from MONAI
(``compute_dice``, ``compute_iou``, ``compute_hausdorff_distance`` with ``percentile=95``,
``compute_average_surface_distance`` with ``symmetric=True``), always with the image spacing, so
distances are in millimetres:

- **dice** ``2|P∩R| / (|P| + |R|)`` (Dice 1945); **iou** ``|P∩R| / |P∪R|`` (Jaccard).
- **hd95_mm**: 95th percentile Hausdorff distance between the mask surfaces; MONAI takes the
  95th percentile of each direction (pred -> ref, ref -> pred) and reports the larger.
- **msd_mm**: mean symmetric surface distance, the mean of the distances of both directions
  pooled together.

Empty masks (the product's contract; MONAI alone would return NaN or inf here):

====================  =========  ==========  ===========  ===============  =======================
status                reference  prediction  dice, iou    hd95_mm, msd_mm  in the class mean?
====================  =========  ==========  ===========  ===============  =======================
``"both_empty"``      empty      empty       ``None``     ``None``         no, counted as excluded
``"missed"``          present    empty       0            image diagonal   yes
``"false_positive"``  empty      present     0            image diagonal   yes
``"ok"``              present    present     measured     measured         yes
====================  =========  ==========  ===========  ===============  =======================

The image diagonal is ``sqrt(sum((shape * spacing_mm) ** 2))`` in mm, the largest distance two
points of the image can have. A both-empty case is never counted as a perfect Dice of 1.

Sizes use one set of keys in 2D and 3D: ``size_pred``, ``size_ref`` and ``size_diff = size_pred -
size_ref`` (positive: over-segmentation), in the unit named by ``size_unit``: ``"ml"`` for 3D
(a voxel holds ``prod(spacing_mm) / 1000`` ml) and ``"mm2"`` (area) for 2D. Sizes are defined for
every status, both-empty included (0).

:func:`summarize_segmentation` averages the cases per class, with percentile bootstrap intervals
from :func:`~medlens.evaluation.bootstrap.bootstrap_ci` (cases, or whole patients with
``groups``). A metric that is ``None`` on a case leaves that case out of that metric's mean and
interval; only the both-empty rule produces ``None``. Undefined summary values are NaN, as in
:mod:`medlens.tasks.classification.metrics`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from medlens.errors import ConfigError
from medlens.evaluation.arrays import to_numpy
from medlens.evaluation.bootstrap import bootstrap_ci, check_bootstrap_args, group_index

Status = Literal["ok", "both_empty", "missed", "false_positive"]

#: Scores whose definition depends on the empty-mask rules (``None`` for both-empty cases).
METRICS = ("dice", "iou", "hd95_mm", "msd_mm")
#: Sizes, in ``size_unit``; defined on every case.
SIZES = ("size_pred", "size_ref", "size_diff")
#: Statuses counted per class by :func:`summarize_segmentation`, with their summary key.
COUNTED = {"both_empty": "excluded_both_empty", "missed": "missed", "false_positive": "false_positive"}


def check_label_maps(pred, ref, spacing_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Validate one case's label maps and spacing.

    Args:
        pred, ref: integer label maps ``(X, Y)`` or ``(X, Y, Z)`` (NumPy arrays or tensors).
        spacing_mm: one positive spacing per axis, in mm.

    Returns:
        ``(pred, ref, spacing)``: int64 arrays of the same shape and a tuple of floats.

    Raises:
        ValueError: shapes that differ (both named), not 2D / 3D, non-integer values, or a
            spacing that does not give one positive number per axis.
    """
    pred, ref = to_numpy(pred), to_numpy(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction has shape {pred.shape} but reference has shape {ref.shape}; resample the "
                         "prediction onto the reference grid (nearest neighbour) before scoring")
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected label maps of shape (X, Y) or (X, Y, Z), got {pred.shape}; drop channel or "
                         "batch axes (e.g. pred[0]) and score one case at a time")
    for name, a in (("prediction", pred), ("reference", ref)):
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.mod(a, 1) == 0):
            raise ValueError(f"the {name} holds non-integer values; pass a label map (e.g. the argmax of "
                             "the class probabilities), not probabilities")
    spacing = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing_mm, dtype=float)))
    if len(spacing) != pred.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must give one positive spacing in mm per axis of the {pred.shape} label "
                         f"maps, got {spacing_mm!r}; read it from the image header (e.g. (0.8, 0.8, 2.5))")
    return pred.astype(np.int64), ref.astype(np.int64), spacing


def check_labels(labels: Mapping[int, str]) -> dict[int, str]:
    """Validate ``{label value: class name}``: non-empty, integer values other than 0, distinct names.

    Raises:
        ValueError: the rule that is broken, with the offending entry.
    """
    if not labels:
        raise ValueError("labels is empty; pass the classes to score, e.g. {1: 'liver', 2: 'tumour'}")
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in labels):
        raise ValueError(f"label values must be integers, got {list(labels)}; e.g. {{1: 'liver'}}")
    if 0 in labels:
        raise ValueError(f"labels includes 0 ({labels[0]!r}), the background; remove it: background is not scored")
    names = [str(n) for n in labels.values()]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be distinct, got {names}; the results are keyed by name")
    return {int(v): str(n) for v, n in labels.items()}


def image_diagonal_mm(shape: Sequence[int], spacing_mm: Sequence[float]) -> float:
    """``sqrt(sum((shape * spacing_mm) ** 2))``: the image's diagonal in mm, the penalty distance."""
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=float) * np.asarray(spacing_mm, dtype=float)) ** 2)))


def voxel_size(spacing_mm: Sequence[float]) -> tuple[float, str]:
    """Size of one voxel and its unit: ``(prod(spacing) / 1000, "ml")`` in 3D, ``(prod(spacing), "mm2")`` in 2D."""
    product = float(np.prod(spacing_mm))
    return (product / 1000.0, "ml") if len(spacing_mm) == 3 else (product, "mm2")


def mask_status(pred_mask: np.ndarray, ref_mask: np.ndarray) -> Status:
    """Which empty-mask rule applies (see the module docstring)."""
    if ref_mask.any():
        return "ok" if pred_mask.any() else "missed"
    return "false_positive" if pred_mask.any() else "both_empty"


def measure_masks(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing_mm: tuple[float, ...]) -> dict[str, float]:
    """Dice, IoU, HD95 and MSD (mm) of two non-empty binary masks, computed by MONAI.

    Args:
        pred_mask, ref_mask: bool ``(X, Y[, Z])``, both with at least one voxel.
        spacing_mm: spacing per axis.

    Returns:
        ``{"dice", "iou", "hd95_mm", "msd_mm"}`` as floats.
    """
    import torch
    from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou

    y_pred = torch.as_tensor(pred_mask)[None, None]  # (B=1, C=1, *spatial)
    y = torch.as_tensor(ref_mask)[None, None]
    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated `always_return_as_numpy` internally; nothing to fix on our side.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing_mm)
        msd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True,
                                               spacing=spacing_mm)
    return {"dice": float(compute_dice(y_pred, y, include_background=True)), "iou": float(compute_iou(y_pred, y)),
            "hd95_mm": float(hd95), "msd_mm": float(msd)}


def class_scores(status: Status, pred_mask: np.ndarray, ref_mask: np.ndarray, spacing_mm: tuple[float, ...],
                 diagonal_mm: float) -> dict[str, float | None]:
    """Dice, IoU, HD95 and MSD of one class under the empty-mask rules of the module docstring."""
    if status == "ok":
        return measure_masks(pred_mask, ref_mask, spacing_mm)
    if status == "both_empty":
        return dict.fromkeys(METRICS)
    return {"dice": 0.0, "iou": 0.0, "hd95_mm": diagonal_mm, "msd_mm": diagonal_mm}


def case_metrics(pred, ref, labels: Mapping[int, str], spacing_mm: Sequence[float]) -> dict[str, dict]:
    """Per-class metrics of one case, in mm, with the empty-mask rules of the module docstring.

    Args:
        pred, ref: integer label maps of one case, same shape ``(X, Y)`` or ``(X, Y, Z)``.
        labels: ``{label value: class name}``; background (0) is not scored and must be left out.
            Values found in the maps but absent from ``labels`` are ignored.
        spacing_mm: spacing per axis in mm, in the axis order of the arrays.

    Returns:
        ``{class_name: {"dice", "iou", "hd95_mm", "msd_mm", "size_pred", "size_ref", "size_diff",
        "size_unit", "status"}}``: scores are floats or ``None`` (both empty), sizes floats in
        ``size_unit`` (``"ml"`` for 3D, ``"mm2"`` for 2D), ``status`` one of ``"ok"``,
        ``"both_empty"``, ``"missed"``, ``"false_positive"``.

    Raises:
        ValueError: prediction and reference shapes differ (both are named), or another input
            is malformed (see :func:`check_label_maps` and :func:`check_labels`).
    """
    pred, ref, spacing = check_label_maps(pred, ref, spacing_mm)
    labels = check_labels(labels)
    per_voxel, unit = voxel_size(spacing)
    diagonal = image_diagonal_mm(pred.shape, spacing)
    result = {}
    for value, name in labels.items():
        p, r = pred == value, ref == value
        status = mask_status(p, r)
        size_pred, size_ref = float(p.sum()) * per_voxel, float(r.sum()) * per_voxel
        result[name] = {**class_scores(status, p, r, spacing, diagonal), "size_pred": size_pred,
                        "size_ref": size_ref, "size_diff": size_pred - size_ref, "size_unit": unit, "status": status}
    return result


def mean_with_ci(values: Sequence[float | None], groups: np.ndarray | None, n_boot: int, seed: int,
                 alpha: float) -> dict:
    """Mean of the defined values, with its bootstrap interval.

    Args:
        values: ``(N,)`` one value per case; ``None`` leaves the case out (of the mean and the resamples).
        groups: ``(N,)`` patient ids (object array) or ``None``.

    Returns:
        ``{"value", "ci_low", "ci_high", "n"}``; NaN where no case (or no resample) is defined.
    """
    keep = [i for i, v in enumerate(values) if v is not None]
    if not keep:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    x = np.array([values[i] for i in keep], dtype=float)
    if n_boot == 0:  # bootstrap_ci cannot take n_boot=0 (empty percentile): no interval asked for
        return {"value": float(x.mean()), "ci_low": math.nan, "ci_high": math.nan, "n": len(keep)}
    kept_groups = None if groups is None else groups[keep]
    value, low, high = bootstrap_ci(np.mean, x, groups=kept_groups, n_boot=n_boot, seed=seed, alpha=alpha)
    return {"value": value, "ci_low": low, "ci_high": high, "n": len(keep)}


def check_rows(rows: Sequence[Mapping], class_names: Sequence[str]) -> tuple[list[str], str]:
    """Check that every row has ``case_id`` and metrics for every class, all in one size unit.

    Returns:
        ``(names, size_unit)``.

    Raises:
        ConfigError: no rows, duplicate class names, a row without a class, or 2D and 3D mixed.
    """
    names = [str(c) for c in class_names]
    if not rows or not names or len(set(names)) != len(names):
        raise ConfigError(f"summarize_segmentation needs rows and distinct class names, got {len(rows)} rows and "
                          f"class_names {names}; pass [{{'case_id': ..., 'metrics': case_metrics(...)}}, ...]")
    units = set()
    for i, row in enumerate(rows):
        case = row.get("case_id", f"row {i}")
        missing = [n for n in names if n not in row.get("metrics", {})]
        if missing:
            raise ConfigError(f"case {case!r} has no metrics for classes {missing}; score every case with the "
                              f"same labels (it has {sorted(row.get('metrics', {}))})")
        units |= {row["metrics"][n]["size_unit"] for n in names}
    if len(units) > 1:
        raise ConfigError(f"the cases mix size units {sorted(units)} (2D and 3D); summarise 2D and 3D cases apart")
    return names, units.pop()


def class_summary(cells: Sequence[Mapping], groups: np.ndarray | None, n_boot: int, seed: int,
                  alpha: float) -> dict:
    """Mean, interval and ``n`` of every metric and size of one class, plus the empty-rule counts.

    Args:
        cells: ``(N,)`` this class's :func:`case_metrics` entry of each case.
    """
    summary = {key: mean_with_ci([c[key] for c in cells], groups, n_boot, seed, alpha) for key in METRICS + SIZES}
    summary["n_cases"] = len(cells)
    for status, key in COUNTED.items():
        summary[key] = sum(c["status"] == status for c in cells)
    return summary


def case_means(rows: Sequence[Mapping], names: list[str], metric: str) -> list[float | None]:
    """Per case, the mean of ``metric`` over the classes defined on that case; ``None`` if none is."""
    means = []
    for row in rows:
        defined = [row["metrics"][n][metric] for n in names if row["metrics"][n][metric] is not None]
        means.append(float(np.mean(defined)) if defined else None)
    return means


def summarize_segmentation(rows: Sequence[Mapping], class_names: Sequence[str], *, n_boot: int = 1000,
                           seed: int = 0, groups: Sequence | np.ndarray | None = None,
                           alpha: float = 0.05) -> dict:
    """Per-class means of :func:`case_metrics` over cases, with percentile bootstrap intervals.

    Args:
        rows: ``(N,)`` one per case: ``{"case_id": str, "metrics": case_metrics(...)}``.
        class_names: classes to summarise, in table order.
        n_boot: bootstrap resamples (0: no intervals, NaN bounds).
        seed: the same seed gives the same intervals.
        groups: ``(N,)`` patient id of each row: resample whole patients (cluster bootstrap).
        alpha: 1 - confidence level (0.05 for 95% intervals).

    Returns:
        JSON-ready dict (NaN where undefined):

        - ``per_class``: ``{name: {metric: {"value", "ci_low", "ci_high", "n"}, ...,
          "n_cases", "excluded_both_empty", "missed", "false_positive"}}`` for the metrics
          ``dice, iou, hd95_mm, msd_mm`` and the sizes ``size_pred, size_ref, size_diff``;
          ``n`` counts the cases in that mean (both-empty cases are left out of the scores).
        - ``mean``: ``{metric: {"value", "ci_low", "ci_high", "n"}, "excluded_all_empty"}`` for
          the four metrics: per case, the mean over the classes defined on that case, then the
          mean over cases; cases with every class both-empty are left out and counted.
        - ``n_cases``, ``n_groups``, ``size_unit``, ``bootstrap`` (``n_boot, seed, alpha,
          method, resampled``).

    Raises:
        ConfigError: malformed rows (see :func:`check_rows`), ``groups`` not one per row, or
            invalid ``n_boot`` / ``alpha``.
    """
    check_bootstrap_args(n_boot, alpha)
    names, unit = check_rows(rows, class_names)
    if groups is not None and len(groups) != len(rows):
        raise ConfigError(f"`groups` must give one patient id per row: {len(rows)} rows, {len(groups)} groups; "
                          "pass the patient id of each case, in the order of `rows`")
    group_ids = None if groups is None else np.asarray(groups, dtype=object)
    per_class = {n: class_summary([r["metrics"][n] for r in rows], group_ids, n_boot, seed, alpha) for n in names}
    mean: dict = {m: mean_with_ci(case_means(rows, names, m), group_ids, n_boot, seed, alpha) for m in METRICS}
    mean["excluded_all_empty"] = len(rows) - mean["dice"]["n"]
    return {"per_class": per_class, "mean": mean, "n_cases": len(rows),
            "n_groups": group_index(group_ids, len(rows))[1], "size_unit": unit,
            "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "alpha": float(alpha), "method": "percentile",
                          "resampled": "case" if groups is None else "group"}}


def format_entry(entry: Mapping, decimals: int) -> str:
    """``0.812 [0.780, 0.843]``; ``n/a`` for NaN; no interval where it is NaN."""
    def num(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:.{decimals}f}"

    if math.isnan(entry["ci_low"]):
        return num(entry["value"])
    return f"{num(entry['value'])} [{num(entry['ci_low'])}, {num(entry['ci_high'])}]"


def format_segmentation_table(summary: Mapping, title: str = "") -> str:
    """A fixed-width text table of a :func:`summarize_segmentation` result, for the terminal.

    Returns:
        One row per class (and a ``mean`` row): Dice, IoU, HD95 mm, MSD mm and size difference,
        each ``value [low, high]``, then ``n`` and the both-empty / missed / false-positive counts.
    """
    unit = summary["size_unit"]
    columns = [("dice", "Dice", 3), ("iou", "IoU", 3), ("hd95_mm", "HD95 mm", 2), ("msd_mm", "MSD mm", 2),
               ("size_diff", f"size diff {unit}", 3 if unit == "ml" else 1)]
    header = ["class", *(label for _, label, _ in columns), "n", "both empty", "missed", "false pos."]
    table = [header]
    for name, row in summary["per_class"].items():
        table.append([name, *(format_entry(row[key], d) for key, _, d in columns), str(row["dice"]["n"]),
                      *(str(row[k]) for k in COUNTED.values())])
    mean = summary["mean"]
    table.append(["mean", *(format_entry(mean[key], d) if key in mean else "-" for key, _, d in columns),
                  str(mean["dice"]["n"]), str(mean["excluded_all_empty"]), "-", "-"])
    widths = [max(len(r[j]) for r in table) for j in range(len(header))]
    boot = summary["bootstrap"]
    lines = [title] if title else []
    lines.append(f"n = {summary['n_cases']} cases ({summary['n_groups']} groups); "
                 f"{100 * (1 - boot['alpha']):g}% CI, {boot['n_boot']} bootstrap resamples of {boot['resampled']}s")
    for r in table:
        lines.append("  " + "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
    lines.append("  note: both-empty cases are left out of the means (n counts the rest); missed and "
                 "false-positive cases count as Dice 0 and the image diagonal for HD95 / MSD")
    lines.append(f"  note: size diff = predicted - reference size, in {unit}; the mean row averages the "
                 "classes defined on each case")
    return "\n".join(lines)
