"""Detection inputs, box overlap and the greedy matching of detections to ground-truth boxes.

Boxes are corners ``(min_x, min_y[, min_z], max_x, max_y[, max_z])`` in continuous voxel
coordinates (voxel ``i`` spans ``[i, i + 1)``), so a box's extent along an axis is ``max - min``
with no ``+ 1``, as in pycocotools and MONAI. ``D`` (2 or 3) is read from the width ``2 * D``.

Matching follows COCO (Lin et al. 2014; pycocotools ``COCOeval.evaluateImg``): the detections
of an image are taken by decreasing score (stable, so equal scores keep their input order) and
each one is matched to the still unmatched ground-truth box of highest IoU, if that IoU is at
least the threshold; among ground-truth boxes of equal IoU the later one wins, as in
pycocotools. A matched detection is a true positive; every other one is a false positive
(a second detection of an already matched box included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medlens.data.boxes import box_iou
from medlens.errors import ConfigError
from medlens.types import Boxes


@dataclass(frozen=True)
class ImageDetections:
    """The detections of one image.

    Attributes:
        boxes: ``(P, 2D)`` float corners.
        scores: ``(P,)`` float confidence; higher is more confident.
        labels: ``(P,)`` int class index (into ``class_names``).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class ImageTruth:
    """The ground-truth boxes of one image (none for a negative image).

    Attributes:
        boxes: ``(G, 2D)`` float corners.
        labels: ``(G,)`` int class index (into ``class_names``).
    """

    boxes: np.ndarray
    labels: np.ndarray


def _boxes(values, n: int, where: str) -> np.ndarray:
    """``(n, 2D)`` float boxes, checked: finite, ``2D`` in (4, 6), no max below its min."""
    boxes = np.asarray(values, dtype=float)
    if boxes.size == 0:
        return np.zeros((0, 0))
    if boxes.ndim != 2 or boxes.shape[1] not in (4, 6) or len(boxes) != n:
        raise ConfigError(f"{where}: expected boxes of shape ({n}, 4) in 2D or ({n}, 6) in 3D as corners "
                          f"(min..., max...), got shape {boxes.shape}; pass one row of corners per box")
    half = boxes.shape[1] // 2
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, half:] < boxes[:, :half]).any(axis=1)
    if bad.any():
        raise ConfigError(f"{where}: box {int(np.argmax(bad))} is not finite or has a max below its min "
                          f"({boxes[bad][0].tolist()}); boxes are corners (min..., max...), convert "
                          "centre + size or (x, y, w, h) boxes first")
    return boxes


def _labels(values, where: str) -> np.ndarray:
    """``(n,)`` int64 labels; whole non-negative numbers only."""
    labels = np.asarray(values).reshape(-1)
    if labels.size and (not np.issubdtype(labels.dtype, np.number) or (labels != np.round(labels)).any()
                        or (labels < 0).any()):
        raise ConfigError(f"{where}: labels must be class indices 0, 1, ..., got {labels[:5].tolist()}; "
                          "map class names to their index in `class_names` first")
    return labels.astype(np.int64)


def as_detections(item, where: str = "predictions") -> ImageDetections:
    """Checked :class:`ImageDetections` from one, or from a ``(boxes, scores, labels)`` tuple.

    Raises:
        ConfigError: mismatched lengths, malformed boxes or labels, or non-finite scores.
    """
    boxes, scores, labels = (item.boxes, item.scores, item.labels) if isinstance(item, ImageDetections) else item
    scores = np.asarray(scores, dtype=float).reshape(-1)
    labels = _labels(labels, where)
    if len(labels) != len(scores) or not np.isfinite(scores).all():
        raise ConfigError(f"{where}: expected one finite score and one label per box, got {len(scores)} scores "
                          f"and {len(labels)} labels; pass (boxes (P, 2D), scores (P,), labels (P,))")
    return ImageDetections(_boxes(boxes, len(scores), where), scores, labels)


def as_truth(item, where: str = "truth") -> ImageTruth:
    """Checked :class:`ImageTruth` from one, a ``(boxes, labels)`` tuple, or a voxel-corner :class:`Boxes`.

    Raises:
        ConfigError: malformed boxes or labels, or a :class:`Boxes` record not in voxel corners.
    """
    if isinstance(item, Boxes):
        if item.form != "corners" or item.unit != "voxel":
            raise ConfigError(f"{where}: boxes are {item.form} in {item.unit}; metrics take voxel corners, so "
                              "convert them on the image's grid first")
        item = ImageTruth(np.asarray(item.values, dtype=float), np.asarray(item.labels))
    boxes, labels = (item.boxes, item.labels) if isinstance(item, ImageTruth) else item
    labels = _labels(labels, where)
    return ImageTruth(_boxes(boxes, len(labels), where), labels)


def check_images(preds: Sequence, truths: Sequence, num_classes: int | None = None
                 ) -> tuple[list[ImageDetections], list[ImageTruth]]:
    """Check and convert the per-image inputs of every metric.

    Args:
        preds: ``(N,)`` per image, :class:`ImageDetections` or ``(boxes, scores, labels)``.
        truths: ``(N,)`` per image, :class:`ImageTruth`, ``(boxes, labels)`` or a :class:`Boxes`.
        num_classes: when given, every label must be below it.

    Returns:
        ``(detections, truths)``, both lists of length ``N``.

    Raises:
        ConfigError: no images, different numbers of images, 2D and 3D boxes mixed, labels out of range.
    """
    if len(preds) != len(truths) or len(preds) == 0:
        raise ConfigError(f"expected predictions and ground truth for the same images, in the same order: got "
                          f"{len(preds)} prediction and {len(truths)} ground-truth entries; pass one of each per image")
    dets = [as_detections(p, f"predictions of image {i}") for i, p in enumerate(preds)]
    gts = [as_truth(t, f"ground truth of image {i}") for i, t in enumerate(truths)]
    widths = {b.shape[1] for x in dets + gts for b in [x.boxes] if len(b)}
    if len(widths) > 1:
        raise ConfigError(f"boxes of widths {sorted(widths)} are mixed: 2D boxes have 4 numbers, 3D boxes 6; "
                          "evaluate 2D and 3D images apart")
    if num_classes is not None:
        for i, x in enumerate(dets + gts):
            if len(x.labels) and x.labels.max() >= num_classes:
                kind = "predictions" if i < len(dets) else "ground truth"
                raise ConfigError(f"{kind} of image {i % len(dets)} hold label {int(x.labels.max())} but there "
                                  f"are {num_classes} classes (0..{num_classes - 1}); pass every class name")
    return dets, gts


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """``(N,)`` area (2D) or volume (3D) in voxels of ``(N, 2D)`` corner boxes."""
    if len(boxes) == 0:
        return np.zeros(0)
    half = boxes.shape[1] // 2
    return np.prod(boxes[:, half:] - boxes[:, :half], axis=1)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` with every box of ``b``, 2D or 3D.

    Args:
        a: ``(N, 2D)`` corners.
        b: ``(M, 2D)`` corners, the same ``D``.

    Returns:
        ``(N, M)`` IoU in [0, 1]; 0 where the union is empty (two empty boxes).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"iou needs boxes of one dimension, got widths {a.shape[1]} and {b.shape[1]}")
    return box_iou(a, b)


def score_order(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score; equal scores keep their order (pycocotools' mergesort)."""
    return np.argsort(-np.asarray(scores, dtype=float), kind="mergesort")


def greedy_match(overlap: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """COCO's greedy matching of score-sorted detections, at several IoU thresholds at once.

    Args:
        overlap: ``(P, G)`` IoU of the detections, already sorted by decreasing score, with the
            ground-truth boxes.
        thresholds: ``(T,)`` IoU thresholds; a match needs ``IoU >= threshold``.

    Returns:
        ``(T, P)`` int: index of the matched ground-truth box, or -1 (a false positive).
    """
    n_det, n_gt = overlap.shape
    matched = np.full((len(thresholds), n_det), -1, dtype=np.int64)
    if n_gt == 0:
        return matched
    # pycocotools compares with min(t, 1 - 1e-10): a threshold of 1 still accepts IoU of almost 1.
    need = np.minimum(np.asarray(thresholds, dtype=float), 1 - 1e-10)[:, None]
    free = np.ones((len(thresholds), n_gt), dtype=bool)
    rows = np.arange(len(thresholds))
    for d in range(n_det):
        candidate = np.where(free & (overlap[d][None, :] >= need), overlap[d][None, :], -1.0)
        last_best = n_gt - 1 - np.argmax(candidate[:, ::-1], axis=1)  # equal IoU: the later box, as pycocotools
        hit = candidate[rows, last_best] >= 0
        matched[hit, d] = last_best[hit]
        free[rows[hit], last_best[hit]] = False
    return matched
