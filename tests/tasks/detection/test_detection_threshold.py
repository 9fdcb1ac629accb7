"""The display threshold: F1-best score over pooled validation detections, on hand-counted cases."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.tasks.detection.infer import Detections
from medlens.tasks.detection.threshold import best_f1_threshold, pooled_hits


def found(boxes, scores, labels) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64))


def truth(boxes, labels) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


A, B, FAR = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]


def test_best_threshold_on_one_image_is_counted_by_hand():
    # best first: hit, miss, hit, miss against 2 boxes -> F1 = 2 TP / (kept + 2) = 2/3, 2/4, 4/5, 4/6
    dets = [found([A, FAR, B, FAR], [0.9, 0.8, 0.7, 0.6], [0, 0, 0, 0])]
    best = best_f1_threshold(dets, [truth([A, B], [0, 0])], floor=0.05)

    assert best["display_threshold"] == pytest.approx(0.7)
    assert best["f1"] == pytest.approx(0.8)
    assert best["precision"] == pytest.approx(round(2 / 3, 4))
    assert best["recall"] == pytest.approx(1.0)


def test_best_threshold_pools_images_and_a_wrong_class_is_a_false_positive():
    # image 1: as above; image 2: class 1 at A, found first as class 0 (0.95, a miss), then as class 1 (0.5, a hit).
    # pooled, best first: miss .95, hit .9, miss .8, hit .7, miss .6, hit .5 against 3 boxes:
    # F1 = 0, 2/5, 2/6, 4/7, 4/8, 6/9 -> the best is 2/3 at 0.5
    dets = [found([A, FAR, B, FAR], [0.9, 0.8, 0.7, 0.6], [0, 0, 0, 0]), found([A, A], [0.95, 0.5], [0, 1])]
    truths = [truth([A, B], [0, 0]), truth([A], [1])]

    best = best_f1_threshold(dets, truths, floor=0.05)

    assert best == {"display_threshold": 0.5, "f1": pytest.approx(round(2 / 3, 4)), "precision": 0.5, "recall": 1.0}


def test_a_higher_threshold_wins_when_the_low_scores_are_all_false_positives():
    dets = [found([A, FAR, FAR, FAR], [0.8, 0.3, 0.2, 0.1], [0, 0, 0, 0])]
    best = best_f1_threshold(dets, [truth([A], [0])], floor=0.05)
    assert best["display_threshold"] == pytest.approx(0.8)
    assert best["f1"] == pytest.approx(1.0)


@pytest.mark.parametrize("dets, truths", [
    ([found([A], [0.9], [0])], [truth(np.zeros((0, 4)), [])]),  # no box in the truth
    ([found(np.zeros((0, 4)), [], [])], [truth([A], [0])]),  # no detection
    ([], []),  # no image
])
def test_without_truth_or_detections_the_floor_is_kept(dets, truths):
    best = best_f1_threshold(dets, truths, floor=0.05)
    assert best == {"display_threshold": 0.05, "f1": None, "precision": None, "recall": None}


def test_pooled_hits_counts_same_class_matches_only():
    # class 1 at A: a class-0 box there is no hit; of two class-1 boxes on A only the better-scored one hits;
    # an IoU of 1/3 (half of A, shifted) is below 0.5
    dets = found([A, A, A, [5, 0, 15, 10]], [0.9, 0.8, 0.7, 0.6], [0, 1, 1, 1])
    scores, hits, total = pooled_hits([dets], [truth([A], [1])])

    assert total == 1
    by_score = {round(float(s), 3): bool(h) for s, h in zip(scores, hits)}
    assert by_score == {0.9: False, 0.8: True, 0.7: False, 0.6: False}


def test_pooled_hits_counts_every_truth_box_even_on_images_without_detections():
    no_detections = found(np.zeros((0, 4)), [], [])
    scores, hits, total = pooled_hits([no_detections, found([B], [0.4], [0])],
                                      [truth([A, B], [0, 1]), truth([B], [0])])
    assert total == 3
    assert scores.tolist() == pytest.approx([0.4])
    assert hits.tolist() == [True]


def f1_at(dets: list, truths: list, threshold: float) -> float:
    """F1 at IoU 0.5 of the boxes scored ``>= threshold``, as an overlay shows them."""
    scores, hits, total = pooled_hits(dets, truths)
    kept = scores >= threshold
    return 2 * float(hits[kept].sum()) / (int(kept.sum()) + total)


def test_the_reported_f1_is_that_of_the_boxes_at_or_above_the_threshold_when_scores_tie():
    dets = [found([A, FAR], [0.5, 0.5], [0, 0])]  # a hit and a miss scored alike
    truths = [truth([A], [0])]
    best = best_f1_threshold(dets, truths, floor=0.05)
    assert best["f1"] == pytest.approx(f1_at(dets, truths, best["display_threshold"]), abs=1e-4)


def test_the_box_that_sets_the_threshold_is_shown():
    dets = [found([A, FAR], [0.71236, 0.3], [0, 0])]
    truths = [truth([A], [0])]
    best = best_f1_threshold(dets, truths, floor=0.05)
    assert best["f1"] == 1.0
    assert f1_at(dets, truths, best["display_threshold"]) == 1.0
