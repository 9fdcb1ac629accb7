"""Free-response ROC (FROC): lesion sensitivity against false positives per image, and the LUNA16 score.

The FROC curve (Chakraborty 1989) follows the score threshold down: at each threshold,
sensitivity is the share of ground-truth lesions hit by a detection scoring at least that much,
and the false-positive rate is the number of other such detections divided by the number of
images (scans). Class labels are ignored, as in LUNA16 (Setio et al. 2017).

A detection hits a lesion when COCO's greedy matching (:func:`~.matching.greedy_match`, by
decreasing score) pairs it with a still unhit lesion of IoU at least ``iou_threshold``. Unlike
the LUNA16 script, a second detection of an already hit lesion counts as a false positive.
Detections of equal score enter the curve together (a threshold cannot split them).

The sensitivity at a rate ``r`` is the best sensitivity on the curve with at most ``r`` false
positives per image; the competition performance metric (``cpm``) is its mean over the rates
1/8, 1/4, 1/2, 1, 2, 4 and 8, the LUNA16 score.

Everything is computed from match results made once (:func:`froc_table`) and image weights, so
a bootstrap resample (how often each image is drawn) only re-weights the cumulative sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medlens.errors import ConfigError
from medlens.tasks.detection.matching import ImageDetections, ImageTruth, check_images, greedy_match, iou, score_order

#: The LUNA16 false-positive rates per image.
FP_RATES = (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8)
#: At most this many points of a curve are returned for the report.
CURVE_POINTS = 200


@dataclass(frozen=True)
class FrocTable:
    """Class-agnostic match results of every detection, by decreasing score.

    Attributes:
        image: ``(n,)`` int image index of each detection.
        score: ``(n,)`` float score, non-increasing.
        hit: ``(n,)`` bool: the detection hit a lesion.
        n_truth: ``(N,)`` int number of lesions in each image.
    """

    image: np.ndarray
    score: np.ndarray
    hit: np.ndarray
    n_truth: np.ndarray


def froc_table(dets: Sequence[ImageDetections], gts: Sequence[ImageTruth], iou_threshold: float) -> FrocTable:
    """Match each image's detections to its lesions once, ignoring classes.

    Args:
        dets: ``(N,)`` checked detections (see :func:`~.matching.check_images`).
        gts: ``(N,)`` checked ground truth.
        iou_threshold: a hit needs ``IoU >= iou_threshold``.
    """
    parts = []
    for i, (d, g) in enumerate(zip(dets, gts)):
        order = score_order(d.scores)
        hit = greedy_match(iou(d.boxes[order], g.boxes), np.array([iou_threshold]))[0] >= 0
        parts.append((np.full(len(order), i), d.scores[order], hit))
    image, score, hit = (np.concatenate([p[j] for p in parts]) for j in range(3))
    order = score_order(score)
    return FrocTable(image[order].astype(np.int64), score[order], hit[order].astype(bool),
                     np.array([len(g.labels) for g in gts], dtype=np.int64))


def froc_points(table: FrocTable, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The FROC curve of each weighting of the images.

    Args:
        table: the match results.
        weights: ``(B, N)`` how many times each image counts (a bootstrap resample; ones for the data).

    Returns:
        ``(fp_per_image, sensitivity)``, both ``(B, 1 + U)``: the origin, then one point per distinct
        score ``U``, by decreasing score. Sensitivity is NaN where the weighted images hold no lesion.
    """
    weights = np.asarray(weights, dtype=float)
    w_det = weights[:, table.image]
    hits = np.cumsum(w_det * table.hit, axis=1)
    false = np.cumsum(w_det * ~table.hit, axis=1)
    last_of_tie = np.append(table.score[1:] != table.score[:-1], True) if len(table.score) else np.zeros(0, bool)
    zero = np.zeros((len(weights), 1))
    hits, false = np.hstack([zero, hits[:, last_of_tie]]), np.hstack([zero, false[:, last_of_tie]])
    n_lesions = weights @ table.n_truth
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.where(n_lesions[:, None] > 0, hits / n_lesions[:, None], np.nan)
    return false / weights.sum(axis=1, keepdims=True), sensitivity


def sensitivity_at(fp_per_image: np.ndarray, sensitivity: np.ndarray, fp_rates: Sequence[float]) -> np.ndarray:
    """Best sensitivity with at most each rate of false positives per image.

    Args:
        fp_per_image: ``(B, M)`` non-decreasing along the curve, starting at 0.
        sensitivity: ``(B, M)`` non-decreasing along the curve.
        fp_rates: ``(R,)`` rates.

    Returns:
        ``(B, R)`` sensitivities (NaN where the sensitivity is undefined).
    """
    rows = np.arange(len(fp_per_image))
    last = [(fp_per_image <= rate).sum(axis=1) - 1 for rate in fp_rates]
    return np.stack([sensitivity[rows, i] for i in last], axis=1)


def curve_indices(n: int, limit: int = CURVE_POINTS) -> np.ndarray:
    """At most ``limit`` evenly spread indices of ``range(n)``, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(np.int64)) if n else np.zeros(0, np.int64)


def check_fp_rates(fp_rates: Sequence[float], iou_threshold: float) -> tuple[float, ...]:
    """The rates as floats; raises :class:`ConfigError` unless they are positive and the threshold in (0, 1]."""
    rates = tuple(float(r) for r in fp_rates)
    if not rates or not all(r > 0 for r in rates) or not 0 < iou_threshold <= 1:
        raise ConfigError(f"FROC needs positive false-positive rates and an IoU threshold in (0, 1], got rates "
                          f"{list(rates)} and threshold {iou_threshold}; LUNA16 uses rates 1/8 ... 8 and IoU 0.1")
    return rates


def froc_summary(table: FrocTable, fp_rates: Sequence[float], iou_threshold: float) -> dict:
    """The FROC result of all images (weights of one), with the curve thinned for the report."""
    fp_per_image, sensitivity = froc_points(table, np.ones((1, len(table.n_truth))))
    at_rates = sensitivity_at(fp_per_image, sensitivity, fp_rates)[0]
    scores = table.score[np.append(table.score[1:] != table.score[:-1], True)] if len(table.score) else np.zeros(0)
    keep = curve_indices(fp_per_image.shape[1])
    return {"iou_threshold": float(iou_threshold), "fp_rates": list(fp_rates),
            "sensitivity": at_rates.tolist(), "cpm": float(np.mean(at_rates)),
            "n_images": len(table.n_truth), "n_lesions": int(table.n_truth.sum()), "n_detections": len(table.score),
            "curve": {"fp_per_image": fp_per_image[0, keep].tolist(), "sensitivity": sensitivity[0, keep].tolist(),
                      "score": np.append(np.inf, scores)[keep].tolist()}}


def froc(preds: Sequence, truths: Sequence, *, iou_threshold: float = 0.1,
         fp_rates: Sequence[float] = FP_RATES) -> dict:
    """Class-agnostic FROC: sensitivity at fixed false-positive rates per image, and the LUNA16 score.

    Args:
        preds: ``(N,)`` per image, :class:`~.matching.ImageDetections` or ``(boxes (P, 2D), scores (P,),
            labels (P,))``; labels are ignored.
        truths: ``(N,)`` per image, :class:`~.matching.ImageTruth` or ``(boxes (G, 2D), labels (G,))``.
        iou_threshold: a detection hits a lesion with ``IoU >= iou_threshold`` (0.1 by default).
        fp_rates: ``(R,)`` false positives per image at which sensitivity is read.

    Returns:
        JSON-ready dict: ``sensitivity`` ``(R,)`` list aligned with ``fp_rates``, ``cpm`` (their mean;
        NaN when there is no lesion), ``iou_threshold``, ``n_images``, ``n_lesions``, ``n_detections``
        and ``curve`` ``{"fp_per_image", "sensitivity", "score"}`` (at most 200 points, from the
        origin at score ``inf`` down to the lowest score).

    Raises:
        ConfigError: malformed inputs (see :func:`~.matching.check_images`), non-positive rates or a
            threshold outside (0, 1].
    """
    rates = check_fp_rates(fp_rates, iou_threshold)
    dets, gts = check_images(preds, truths)
    return froc_summary(froc_table(dets, gts, iou_threshold), rates, iou_threshold)
