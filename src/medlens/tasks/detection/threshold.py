"""The display threshold: the score above which a box is shown and counted as found, chosen on validation.

Every box scored at least ``detect.score_threshold`` is kept for mAP and FROC (they rank all of them);
a person reading an overlay wants the boxes worth looking at. The threshold maximises F1 at IoU 0.5
over the validation images (all classes pooled): ``F1 = 2 TP / (P + G)`` with ``P`` the boxes kept.
"""

from __future__ import annotations

import numpy as np

from medlens.tasks.detection.matching import greedy_match, iou, score_order


def pooled_hits(found: list, truth: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Every detection's score and whether it matched a same-class box at IoU >= 0.5, and the number of boxes.

    Args:
        found: per image, an object with ``boxes (P, 2D)``, ``scores (P,)``, ``labels (P,)``.
        truth: per image, ``(boxes (G, 2D), labels (G,))``.
    """
    scores, hits, total = [], [], 0
    for det, (boxes, labels) in zip(found, truth):
        total += len(labels)
        for label in np.unique(det.labels):
            keep = np.where(det.labels == label)[0]
            keep = keep[score_order(det.scores[keep])]
            gt = np.asarray(boxes)[np.asarray(labels) == label]
            matched = greedy_match(iou(det.boxes[keep], gt), np.asarray([0.5]))[0]
            scores.append(det.scores[keep])
            hits.append(matched >= 0)
    if not scores:
        return np.zeros(0), np.zeros(0, bool), total
    return np.concatenate(scores), np.concatenate(hits), total


def best_f1_threshold(found: list, truth: list, floor: float) -> dict:
    """``{"display_threshold", "f1", "precision", "recall"}`` at the score that maximises F1 (``floor`` if none)."""
    scores, hits, total = pooled_hits(found, truth)
    if not len(scores) or not total:
        return {"display_threshold": float(floor), "f1": None, "precision": None, "recall": None}
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    tp = np.cumsum(hits[order])
    kept = np.arange(1, len(order) + 1)
    ends = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold keeps every box of a tied score, or none
    f1 = np.where(ends, 2 * tp / (kept + total), -1.0)
    best = int(np.argmax(f1))
    return {"display_threshold": float(ranked[best]), "f1": round(float(f1[best]), 4),
            "precision": round(float(tp[best] / kept[best]), 4), "recall": round(float(tp[best] / total), 4)}
