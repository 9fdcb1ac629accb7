"""COCO-style detection metrics (mAP, per-class AP, recall, results by size) with bootstrap intervals.

Average precision follows COCO (Lin et al. 2014) and pycocotools ``COCOeval`` with area range
``all``: per class, the detections of all images are ranked by decreasing score, each one a true
positive when COCO's greedy matching (:mod:`~.matching`) pairs it with a ground-truth box of its
class. Precision ``TP / (TP + FP)`` and recall ``TP / G`` follow the ranking; the precision at
each of the 101 recall levels 0, 0.01, ..., 1 is the best precision at that recall or beyond
(0 when the recall is never reached); AP is their mean. ``map`` averages AP over the IoU
thresholds 0.50, 0.55, ..., 0.95 and the classes; ``map_50`` and ``map_75`` over the classes.
Only each image's ``max_detections`` highest-scoring detections of each class count (COCO's
``maxDets``, per image and class). ``recall_at_k`` is the recall at IoU 0.5 with those.

A class with no ground-truth box in the evaluated images has NaN AP and recall and is left out
of every mean (``classes_without_truth`` names them), as pycocotools leaves it out.

Results by size: the ground-truth boxes are split into small / medium / large at the terciles
of their area (2D) or volume (3D) in voxels over the evaluated images (``edges``; small below the
first edge, large at or above the second). At IoU 0.5, a matched detection takes the bin of its
ground-truth box and an unmatched one the bin of its own size; AP is then computed per bin.

Intervals: every image's match results are computed once (:class:`ClassTable`); a bootstrap
resample of images (or whole patients) is a weight per image, and AP is recomputed from the
weighted cumulative sums, which equals AP on the resampled images with the drawn copies.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medlens.errors import ConfigError
from medlens.evaluation.bootstrap import check_bootstrap_args, group_index, percentile_interval, resample_weights
from medlens.tasks.detection.froc import (
    FP_RATES,
    check_fp_rates,
    curve_indices,
    froc_points,
    froc_summary,
    froc_table,
    sensitivity_at,
)
from medlens.tasks.detection.matching import box_sizes, check_images, greedy_match, iou, score_order

#: COCO's IoU thresholds 0.50:0.05:0.95, computed as pycocotools does (so 0.55 is the same float).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
#: COCO's 101 recall levels.
RECALL_LEVELS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
SIZE_BINS = ("small", "medium", "large")
#: Resample rows x IoU thresholds x detections held at once; bounds memory on large sets.
CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class ClassTable:
    """One class's match results over all images, detections by decreasing score.

    Attributes:
        image: ``(n,)`` int image index of each detection.
        tp: ``(T, n)`` bool: true positive at each IoU threshold of :data:`IOU_THRESHOLDS`.
        size_bin: ``(n,)`` int size bin (0 small, 1 medium, 2 large) at IoU 0.5.
        n_truth: ``(N,)`` int ground-truth boxes of this class per image.
        truth_bins: ``(N, 3)`` int of those, how many fall in each size bin.
        curve_score: ``(n,)`` float score of each detection.
    """

    image: np.ndarray
    tp: np.ndarray
    size_bin: np.ndarray
    n_truth: np.ndarray
    truth_bins: np.ndarray
    curve_score: np.ndarray


def size_edges(gts) -> np.ndarray:
    """``(2,)`` terciles of the ground-truth box sizes (voxels) over all images; NaN when there is none."""
    sizes = np.concatenate([box_sizes(g.boxes) for g in gts])
    return np.quantile(sizes, [1 / 3, 2 / 3]) if len(sizes) else np.full(2, np.nan)


def image_matches(d_boxes, d_scores, g_boxes, edges, max_detections: int):
    """Match one image's detections of one class: ``(scores, tp (T, p), size_bin (p,), truth_bins (3,))``."""
    order = score_order(d_scores)[:max_detections]
    matched = greedy_match(iou(d_boxes[order], g_boxes), IOU_THRESHOLDS)
    truth_bin = np.searchsorted(edges, box_sizes(g_boxes), side="right")
    own_bin = np.searchsorted(edges, box_sizes(d_boxes[order]), side="right")
    size_bin = np.where(matched[0] >= 0, truth_bin[np.maximum(matched[0], 0)] if len(g_boxes) else 0, own_bin)
    return d_scores[order], matched >= 0, size_bin, np.bincount(truth_bin, minlength=3)


def class_table(dets, gts, label: int, edges: np.ndarray, max_detections: int) -> ClassTable:
    """Match every image's detections of class ``label`` once (see :func:`image_matches`)."""
    images, scores, tps, bins, truth_bins = [], [], [], [], []
    for i, (d, g) in enumerate(zip(dets, gts)):
        keep, truth = d.labels == label, g.labels == label
        g_boxes = g.boxes[truth] if truth.any() else np.zeros((0, 4))
        s, tp, b, tb = image_matches(d.boxes[keep], d.scores[keep], g_boxes, edges, max_detections)
        images.append(np.full(len(s), i))
        scores.append(s)
        tps.append(tp)
        bins.append(b)
        truth_bins.append(tb)
    score = np.concatenate(scores)
    order = score_order(score)  # stable: ties stay in image order, as pycocotools concatenates images
    return ClassTable(np.concatenate(images)[order].astype(np.int64), np.concatenate(tps, axis=1)[:, order],
                      np.concatenate(bins)[order], np.array([t.sum() for t in truth_bins]),
                      np.array(truth_bins).reshape(len(gts), 3), score[order])


def weighted_ap(tp: np.ndarray, w_det: np.ndarray, n_truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO 101-point AP and final recall of ranked detections under image weights.

    Args:
        tp: ``(T, n)`` bool true-positive flag per threshold, detections by decreasing score.
        w_det: ``(B, n)`` weight of each detection (its image's weight).
        n_truth: ``(B,)`` weighted number of ground-truth boxes.

    Returns:
        ``(ap, recall)``, both ``(B, T)``; NaN where ``n_truth`` is 0.
    """
    hits = w_det[:, None, :] * tp[None]
    tps = np.cumsum(hits, axis=2)
    fps = np.cumsum(w_det[:, None, :] - hits, axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tps / n_truth[:, None, None]
    ranked = tps + fps
    # pycocotools divides by ranked + eps (a perfect AP of 1 - 2e-16); a 0/0 here (zero-weight images first) is 0
    precision = np.divide(tps, ranked, out=np.zeros_like(tps), where=ranked > 0)
    envelope = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
    rows, n = recall.shape[0] * recall.shape[1], tp.shape[1]
    padded = np.concatenate([envelope, np.zeros(envelope.shape[:2] + (1,))], axis=2).reshape(rows, n + 1)
    # a search per row keeps pycocotools' float comparisons of recall with each level exact
    first = np.stack([np.searchsorted(row, RECALL_LEVELS, side="left") for row in recall.reshape(rows, n)])
    ap = np.take_along_axis(padded, first, axis=1).mean(axis=1).reshape(recall.shape[:2])
    final = tps[..., -1] / np.maximum(n_truth[:, None], 1) if tp.shape[1] else np.zeros(ap.shape)
    undefined = (n_truth <= 0)[:, None]
    return np.where(undefined, np.nan, ap), np.where(undefined, np.nan, final)


def score_tables(tables: Sequence[ClassTable], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP and recall of every class under every weighting of the images.

    Args:
        tables: ``(K,)`` one per class.
        weights: ``(B, N)`` how many times each image counts (ones for the data itself).

    Returns:
        ``(ap (B, K, T), recall (B, K, T))``, NaN for a class without ground truth.
    """
    weights = np.asarray(weights, dtype=float)
    ap = np.full((len(weights), len(tables), len(IOU_THRESHOLDS)), np.nan)
    recall = ap.copy()
    for k, t in enumerate(tables):
        step = max(1, CHUNK_CELLS // max(1, t.tp.size))
        for start in range(0, len(weights), step):
            w = weights[start:start + step]
            ap[start:start + step, k], recall[start:start + step, k] = weighted_ap(t.tp, w[:, t.image], w @ t.n_truth)
    return ap, recall


def nanmean(x: np.ndarray, axis) -> np.ndarray:
    """Mean of the defined (non-NaN) values; NaN where none is defined, without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def summary_arrays(ap: np.ndarray, recall: np.ndarray) -> dict[str, np.ndarray]:
    """The headline numbers of :func:`score_tables`' output: each ``(B,)`` or ``(B, K)``."""
    return {"map": nanmean(ap, axis=(1, 2)), "map_50": nanmean(ap[:, :, 0], axis=1),
            "map_75": nanmean(ap[:, :, 5], axis=1), "ap_50": ap[:, :, 0], "ap_50_95": nanmean(ap, axis=2),
            "recall": recall[:, :, 0], "mean_recall": nanmean(recall[:, :, 0], axis=1)}


def by_size(tables: Sequence[ClassTable], names: list[str], edges: np.ndarray, spatial_dims: int) -> dict:
    """AP at IoU 0.5 per size bin, per class and averaged (see the module docstring)."""
    bins = {}
    for b, bin_name in enumerate(SIZE_BINS):
        per_class = {}
        for name, t in zip(names, tables):
            keep = t.size_bin == b
            ap, _ = weighted_ap(t.tp[:1, keep], np.ones((1, int(keep.sum()))), np.array([t.truth_bins[:, b].sum()]))
            per_class[name] = float(ap[0, 0])
        values = np.array(list(per_class.values()))
        bins[bin_name] = {"map_50": float(nanmean(values, axis=0)), "ap_per_class": per_class,
                          "n_truth": int(sum(t.truth_bins[:, b].sum() for t in tables))}
    return {"unit": "area_vox" if spatial_dims == 2 else "volume_vox", "edges": edges.tolist(), "bins": bins}


def pr_curve(table: ClassTable) -> dict:
    """Precision-recall points of one class at IoU 0.5 (at most 200), raw and interpolated."""
    n = max(int(table.n_truth.sum()), 1)
    tps = np.cumsum(table.tp[0])
    precision = tps / np.maximum(np.arange(1, len(tps) + 1), 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    keep = curve_indices(len(tps))
    return {"recall": (tps[keep] / n).tolist(), "precision": precision[keep].tolist(),
            "precision_interpolated": envelope[keep].tolist(), "score": table.curve_score[keep].tolist()}


def prepare(preds, truths, class_names, max_detections: int):
    """Check inputs and match once: ``(names, tables, edges, spatial_dims, gts)``."""
    names = [str(c) for c in class_names]
    if not names or len(set(names)) != len(names) or int(max_detections) < 1:
        raise ConfigError(f"detection metrics need distinct class names and max_detections >= 1, got class_names "
                          f"{names} and max_detections {max_detections}; pass every class once, in label order")
    dets, gts = check_images(preds, truths, num_classes=len(names))
    edges = size_edges(gts)
    widths = [x.boxes.shape[1] for x in dets + gts if len(x.boxes)]
    tables = [class_table(dets, gts, k, edges, int(max_detections)) for k in range(len(names))]
    return names, tables, edges, (widths[0] // 2 if widths else 2), (dets, gts)


def point_metrics(names, tables, edges, spatial_dims: int, max_detections: int) -> dict:
    """:func:`detection_metrics`' dict from prepared tables."""
    s = {k: v[0] for k, v in summary_arrays(*score_tables(tables, np.ones((1, len(tables[0].n_truth))))).items()}
    named = lambda row: {n: float(v) for n, v in zip(names, row)}  # noqa: E731
    return {"map": float(s["map"]), "map_50": float(s["map_50"]), "map_75": float(s["map_75"]),
            "ap_per_class": {"iou_50": named(s["ap_50"]), "iou_50_95": named(s["ap_50_95"])},
            "recall_at_k": {"k": int(max_detections), "iou": 0.5, "per_class": named(s["recall"]),
                            "mean": float(s["mean_recall"])},
            "by_size": by_size(tables, names, edges, spatial_dims),
            "classes_without_truth": [n for n, t in zip(names, tables) if t.n_truth.sum() == 0],
            "n_images": len(tables[0].n_truth), "n_truth": {n: int(t.n_truth.sum()) for n, t in zip(names, tables)},
            "n_detections": {n: len(t.image) for n, t in zip(names, tables)},
            "iou_thresholds": IOU_THRESHOLDS.tolist(), "max_detections": int(max_detections),
            "curves": {"pr": {n: pr_curve(t) for n, t in zip(names, tables)}}}


def detection_metrics(preds: Sequence, truths: Sequence, class_names: Sequence[str], *,
                      max_detections: int = 100) -> dict:
    """COCO mAP@[.5:.95], mAP@0.5, mAP@0.75, per-class AP, recall and AP by object size.

    Args:
        preds: ``(N,)`` per image, :class:`~.matching.ImageDetections` or ``(boxes (P, 2D), scores (P,),
            labels (P,))``, corners in voxels, labels indexing ``class_names``.
        truths: ``(N,)`` per image, :class:`~.matching.ImageTruth`, ``(boxes (G, 2D), labels (G,))`` or a
            voxel-corner :class:`~medlens.types.Boxes`.
        class_names: ``(K,)`` name of each label.
        max_detections: highest-scoring detections kept per image and class (COCO's 100).

    Returns:
        JSON-ready dict (NaN where undefined): ``map``, ``map_50``, ``map_75``; ``ap_per_class``
        ``{"iou_50": {name: ap}, "iou_50_95": {name: ap}}``; ``recall_at_k`` ``{"k", "iou",
        "per_class", "mean"}``; ``by_size`` ``{"unit", "edges" (2,), "bins": {small|medium|large:
        {"map_50", "ap_per_class", "n_truth"}}}``; ``classes_without_truth`` (NaN AP, left out of
        the means); ``n_images``, ``n_truth``, ``n_detections``, ``iou_thresholds``,
        ``max_detections``; ``curves`` ``{"pr": {name: {"recall", "precision",
        "precision_interpolated", "score"}}}`` at IoU 0.5, at most 200 points each.

    Raises:
        ConfigError: malformed inputs (see :func:`~.matching.check_images`), labels beyond
            ``class_names``, duplicate class names or ``max_detections < 1``.
    """
    names, tables, edges, spatial_dims, _ = prepare(preds, truths, class_names, max_detections)
    return point_metrics(names, tables, edges, spatial_dims, max_detections)


def entry(value: float, low: float, high: float) -> dict:
    """A metric with its interval, as classification and segmentation write it."""
    return {"value": float(value), "ci_low": float(low), "ci_high": float(high)}


def resampled(tables, froc, weights_blocks, fp_rates) -> dict[str, np.ndarray]:
    """Every bootstrapped number of every resample: ``{key: (B, ...)}``."""
    parts: dict[str, list] = {}
    for weights in weights_blocks:
        values = summary_arrays(*score_tables(tables, weights))
        values["froc"] = sensitivity_at(*froc_points(froc, weights), fp_rates)
        values["cpm"] = values["froc"].mean(axis=1)
        for key, v in values.items():
            parts.setdefault(key, []).append(v)
    return {key: np.concatenate(v) for key, v in parts.items()}


def with_intervals(point: dict, froc_point: dict, boot: dict[str, np.ndarray], names: list[str],
                   alpha: float) -> dict:
    """Replace the bootstrapped numbers of ``point`` / ``froc_point`` by :func:`entry` dicts."""
    def ci(key: str, value, column: int | None = None) -> dict:
        if key not in boot:  # n_boot = 0: no resample, no interval
            return entry(value, np.nan, np.nan)
        low, high = percentile_interval(boot[key] if column is None else boot[key][:, column], alpha)
        return entry(value, low, high)

    out = dict(point)
    for key in ("map", "map_50", "map_75"):
        out[key] = ci(key, point[key])
    out["ap_per_class"] = {level: {n: ci(key, point["ap_per_class"][level][n], k) for k, n in enumerate(names)}
                           for level, key in (("iou_50", "ap_50"), ("iou_50_95", "ap_50_95"))}
    recall = point["recall_at_k"]
    per_class = {n: ci("recall", recall["per_class"][n], k) for k, n in enumerate(names)}
    out["recall_at_k"] = {**recall, "per_class": per_class, "mean": ci("mean_recall", recall["mean"])}
    froc = {key: v for key, v in froc_point.items() if key != "curve"}
    froc["sensitivity"] = [ci("froc", v, r) for r, v in enumerate(froc_point["sensitivity"])]
    froc["cpm"] = ci("cpm", froc_point["cpm"])
    out["froc"] = froc
    out["curves"] = {**point["curves"], "froc": froc_point["curve"]}
    return out


def detection_metrics_with_ci(preds: Sequence, truths: Sequence, class_names: Sequence[str], *,
                              groups: Sequence | None = None, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                              max_detections: int = 100, froc_iou_threshold: float = 0.1,
                              fp_rates: Sequence[float] = FP_RATES) -> dict:
    """:func:`detection_metrics` and :func:`~.froc.froc`, with percentile bootstrap intervals over images.

    Args:
        preds, truths, class_names, max_detections: as for :func:`detection_metrics`.
        groups: ``(N,)`` patient id of each image: resample whole patients (cluster bootstrap).
        n_boot: bootstrap resamples (0: no intervals, NaN bounds).
        seed: the same seed gives the same intervals.
        alpha: 1 - confidence level (0.05 for 95% intervals).
        froc_iou_threshold, fp_rates: as ``iou_threshold`` and ``fp_rates`` of :func:`~.froc.froc`.

    Returns:
        :func:`detection_metrics`' dict where ``map``, ``map_50``, ``map_75``, every ``ap_per_class``
        value and every ``recall_at_k`` value (per class and ``mean``) are ``{"value", "ci_low",
        "ci_high"}``; ``by_size`` stays without intervals. Plus ``froc`` (:func:`~.froc.froc`'s dict
        without its curve, each ``sensitivity`` and ``cpm`` with an interval), ``curves["froc"]``
        (the FROC curve), ``n_groups`` and ``bootstrap`` ``{"n_boot", "seed", "alpha", "method",
        "resampled"}``. A resample on which a number is undefined (no box of a class drawn) is
        skipped; with fewer than half defined the interval is NaN.

    Raises:
        ConfigError: as :func:`detection_metrics`; ``groups`` not one per image; invalid ``n_boot``,
            ``alpha``, ``fp_rates`` or ``froc_iou_threshold``.
    """
    check_bootstrap_args(n_boot, alpha)
    rates = check_fp_rates(fp_rates, froc_iou_threshold)
    names, tables, edges, spatial_dims, (dets, gts) = prepare(preds, truths, class_names, max_detections)
    if groups is not None and len(groups) != len(gts):
        raise ConfigError(f"`groups` must give one patient id per image: {len(gts)} images, {len(groups)} groups; "
                          "pass the patient id of each image, in the order of `preds`")
    froc = froc_table(dets, gts, froc_iou_threshold)
    blocks = resample_weights(len(gts), groups=groups, n_boot=n_boot, seed=seed)
    boot = resampled(tables, froc, blocks, rates)
    out = with_intervals(point_metrics(names, tables, edges, spatial_dims, max_detections),
                         froc_summary(froc, rates, froc_iou_threshold), boot, names, alpha)
    out["n_groups"] = group_index(groups, len(gts))[1]
    out["bootstrap"] = {"n_boot": int(n_boot), "seed": int(seed), "alpha": float(alpha), "method": "percentile",
                        "resampled": "image" if groups is None else "group"}
    return out
