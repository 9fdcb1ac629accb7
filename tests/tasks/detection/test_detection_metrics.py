"""Detection metrics: IoU, COCO AP, recall, size bins, FROC and bootstrap intervals on hand-made cases."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from medlens.errors import ConfigError
from medlens.tasks.detection.froc import froc
from medlens.tasks.detection.matching import ImageDetections, ImageTruth, iou
from medlens.tasks.detection.metrics import (
    detection_metrics,
    detection_metrics_with_ci,
    prepare,
    score_tables,
    summary_arrays,
)
from medlens.types import Boxes


def det(boxes, scores, labels=None):
    """One image's detections; every label 0 unless given."""
    return ImageDetections(np.asarray(boxes, dtype=float), np.asarray(scores, dtype=float),
                           np.zeros(len(scores), int) if labels is None else np.asarray(labels))


def gt(boxes, labels=None):
    """One image's ground truth; every label 0 unless given."""
    labels = np.zeros(len(boxes), int) if labels is None else np.asarray(labels)
    return ImageTruth(np.asarray(boxes, dtype=float), labels)


A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]


# --- IoU -------------------------------------------------------------------------------------------------

def test_iou_2d_and_3d_by_hand():
    got = iou(np.array([[0, 0, 2, 2], [5, 5, 6, 6]]), np.array([[1, 1, 3, 3], [0, 0, 2, 2], [10, 10, 11, 11]]))
    np.testing.assert_allclose(got, [[1 / 7, 1, 0], [0, 0, 0]])
    got3 = iou(np.array([[0, 0, 0, 2, 2, 2]]), np.array([[1, 1, 1, 3, 3, 3], [0, 0, 0, 2, 2, 1]]))
    np.testing.assert_allclose(got3, [[1 / 15, 0.5]])
    assert iou(np.zeros((0, 4)), np.array([A])).shape == (0, 1)


# --- AP by hand ------------------------------------------------------------------------------------------

def test_ap_with_a_false_positive_ranked_in_the_middle():
    # ranked TP (0.9), FP (0.8), TP (0.7) against 2 boxes: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # 101-point interpolation: recall levels 0.00..0.50 (51 levels) reach precision 1, 0.51..1.00
    # (50 levels) the best precision at recall 1, 2/3.
    m = detection_metrics([det([A, C, B], [0.9, 0.8, 0.7])], [gt([A, B])], ["lesion"])
    expected = (51 * 1 + 50 * (2 / 3)) / 101
    assert m["map_50"] == pytest.approx(expected)
    assert m["ap_per_class"]["iou_50"]["lesion"] == pytest.approx(expected)
    assert m["map"] == pytest.approx(expected)  # exact boxes: every IoU threshold gives the same AP
    assert m["recall_at_k"]["per_class"]["lesion"] == 1.0
    pr = m["curves"]["pr"]["lesion"]
    assert pr["recall"] == [0.5, 0.5, 1.0]
    np.testing.assert_allclose(pr["precision"], [1, 0.5, 2 / 3])
    np.testing.assert_allclose(pr["precision_interpolated"], [1, 2 / 3, 2 / 3])


def test_perfect_detections_give_one_and_no_detections_zero():
    truths = [gt([A, B], [0, 1]), gt([C], [1])]
    perfect = detection_metrics([det([A, B], [0.9, 0.8], [0, 1]), det([C], [0.7], [1])], truths, ["x", "y"])
    assert (perfect["map"], perfect["map_50"], perfect["map_75"], perfect["recall_at_k"]["mean"]) == (1, 1, 1, 1)
    empty = [det(np.zeros((0, 4)), []), det(np.zeros((0, 4)), [])]
    none = detection_metrics(empty, truths, ["x", "y"])
    assert (none["map"], none["map_50"], none["recall_at_k"]["mean"]) == (0, 0, 0)
    assert froc(empty, truths)["sensitivity"] == [0.0] * 7


def test_3d_box_counts_up_to_its_iou():
    # IoU 0.72 with its box: a true positive at thresholds 0.50..0.70 (5 of 10), a miss above.
    m = detection_metrics([det([[0, 0, 0, 10, 10, 7.2]], [0.5])], [gt([[0, 0, 0, 10, 10, 10]])], ["nodule"])
    assert (m["map_50"], m["map_75"], m["map"]) == (1.0, 0.0, pytest.approx(0.5))
    assert m["by_size"]["unit"] == "volume_vox"


def test_iou_exactly_at_the_threshold_matches_and_just_below_does_not():
    truth = [gt([[0, 0, 2, 1]])]
    assert detection_metrics([det([[0, 0, 1, 1]], [1.0])], truth, ["a"])["map_50"] == 1.0  # IoU = 0.5
    assert detection_metrics([det([[0, 0, 0.999, 1]], [1.0])], truth, ["a"])["map_50"] == 0.0
    assert froc([det([[0, 0, 1, 1]], [1.0])], truth, iou_threshold=0.5)["cpm"] == 1.0
    assert froc([det([[0, 0, 0.999, 1]], [1.0])], truth, iou_threshold=0.5)["cpm"] == 0.0


def test_max_detections_keeps_the_highest_scores_per_image():
    # three confident false positives, then the true positive
    preds = [det([B, C, [60, 60, 70, 70], A], [0.9, 0.8, 0.7, 0.1])]
    cut = detection_metrics(preds, [gt([A])], ["a"], max_detections=3)
    assert (cut["map_50"], cut["recall_at_k"]["mean"], cut["recall_at_k"]["k"]) == (0.0, 0.0, 3)
    kept = detection_metrics(preds, [gt([A])], ["a"], max_detections=4)
    assert (kept["map_50"], kept["recall_at_k"]["mean"]) == (pytest.approx(0.25), 1.0)


def test_class_without_truth_is_nan_and_left_out_of_the_means():
    m = detection_metrics([det([A, B], [0.9, 0.8], [0, 1])], [gt([A], [0])], ["seen", "absent"])
    assert math.isnan(m["ap_per_class"]["iou_50"]["absent"]) and math.isnan(m["recall_at_k"]["per_class"]["absent"])
    assert m["classes_without_truth"] == ["absent"]
    assert (m["map"], m["map_50"], m["recall_at_k"]["mean"]) == (1.0, 1.0, 1.0)


def test_results_by_size_bin():
    # areas 1, 4, 9: terciles (linear quantiles) 3 and 17/3 put one box in each bin.
    small, medium, large = [0, 0, 1, 1], [10, 10, 12, 12], [20, 20, 23, 23]
    fp_large = [40, 40, 50, 50]  # unmatched, area 100: counted among the large
    m = detection_metrics([det([fp_large, small, large], [0.9, 0.8, 0.5])], [gt([small, medium, large])], ["a"])
    size = m["by_size"]
    np.testing.assert_allclose(size["edges"], [3, 17 / 3])
    assert size["unit"] == "area_vox"
    assert {b: size["bins"][b]["n_truth"] for b in size["bins"]} == {"small": 1, "medium": 1, "large": 1}
    assert size["bins"]["small"]["map_50"] == 1.0
    assert size["bins"]["medium"]["map_50"] == 0.0
    assert size["bins"]["large"]["map_50"] == pytest.approx(0.5)  # FP then TP: precision 1/2 at recall 1


# --- FROC ------------------------------------------------------------------------------------------------

def test_froc_by_hand():
    # ranked: TP .9, FP .8 (image 0); TP .7, FP .6, FP .5, TP .4 (image 1); 4 lesions, 2 images.
    # FP/image 0, .5, .5, 1, 1.5, 1.5 and sensitivity .25, .25, .5, .5, .5, .75 along the ranking.
    preds = [det([A, C], [0.9, 0.8], [0, 1]), det([A, [60, 60, 70, 70], [80, 80, 90, 90], B], [0.7, 0.6, 0.5, 0.4])]
    truths = [gt([A, B]), gt([A, B])]
    f = froc(preds, truths)
    assert f["sensitivity"] == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75]
    assert f["cpm"] == pytest.approx(3.75 / 7)
    assert f["curve"]["fp_per_image"] == [0, 0, 0.5, 0.5, 1, 1.5, 1.5]
    assert f["curve"]["sensitivity"] == [0, 0.25, 0.25, 0.5, 0.5, 0.5, 0.75]
    assert (f["n_images"], f["n_lesions"], f["n_detections"]) == (2, 4, 6)


def test_froc_perfect_is_one_everywhere_and_duplicates_are_false_positives():
    truths = [gt([A, B]), gt([C])]
    perfect = froc([det([A, B], [0.9, 0.8]), det([C], [0.7])], truths)
    assert perfect["sensitivity"] == [1.0] * 7 and perfect["cpm"] == 1.0
    # a second box on A (IoU 0.81) scores above B: 1/2 FP per image before B and C are found
    twice = froc([det([A, [0, 0, 9, 9], B], [0.9, 0.85, 0.8]), det([C], [0.7])], truths)
    assert twice["sensitivity"] == [1 / 3, 1 / 3, 1, 1, 1, 1, 1]


def test_froc_takes_tied_scores_together():
    # a TP and an FP of equal score cannot be split by a threshold: at 0 FP/image nothing is found
    f = froc([det([A, C], [0.5, 0.5])], [gt([A])])
    assert f["sensitivity"][:3] == [0.0, 0.0, 0.0] and f["sensitivity"][3] == 1.0
    assert f["curve"]["fp_per_image"] == [0.0, 1.0]


# --- agreement with pycocotools ---------------------------------------------------------------------------

def random_case(rng, n_images: int, n_classes: int, dims: int = 2):
    """Copies of random ground-truth boxes jittered by ~10% of their size, some with a wrong class, plus random FPs."""
    preds, truths = [], []
    for _ in range(n_images):
        lo = rng.uniform(0, 80, size=(rng.integers(0, 6), dims))
        boxes, labels = np.hstack([lo, lo + rng.uniform(3, 25, size=lo.shape)]), rng.integers(0, n_classes, len(lo))
        copies = np.repeat(np.arange(len(lo)), rng.integers(0, 3, len(lo)))
        noise_lo = rng.uniform(0, 80, size=(rng.integers(0, 4), dims))
        fps = np.hstack([noise_lo, noise_lo + rng.uniform(3, 25, size=noise_lo.shape)])
        size = np.tile(boxes[copies, dims:] - boxes[copies, :dims], 2)
        p_boxes = np.vstack([boxes[copies] + rng.normal(0, 0.1, size.shape) * size, fps])
        p_boxes[:, dims:] = np.maximum(p_boxes[:, dims:], p_boxes[:, :dims] + 0.5)
        wrong = rng.random(len(copies)) < 0.15
        p_labels = np.concatenate([np.where(wrong, rng.integers(0, n_classes, len(copies)), labels[copies]),
                                   rng.integers(0, n_classes, len(fps))])
        preds.append(det(p_boxes, rng.random(len(p_boxes)), p_labels))
        truths.append(gt(boxes, labels) if len(boxes) else gt(np.zeros((0, 2 * dims))))
    return preds, truths


def cocoeval(preds, truths, n_classes: int):
    """pycocotools' COCOeval on the same boxes (``[x, y, w, h]``, ids from 1)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns = [{"id": len(truths) * 100 + j, "image_id": i + 1, "category_id": int(label) + 1, "iscrowd": 0,
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])}
            for i, t in enumerate(truths) for j, (b, label) in enumerate(zip(t.boxes, t.labels))]
    for k, a in enumerate(anns):
        a["id"] = k + 1
    dets = [{"image_id": i + 1, "category_id": int(label) + 1, "score": float(s),
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            for i, p in enumerate(preds) for b, s, label in zip(p.boxes, p.scores, p.labels)]
    truth = COCO()
    truth.dataset = {"images": [{"id": i + 1} for i in range(len(truths))], "annotations": anns,
                     "categories": [{"id": k + 1} for k in range(n_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(dets), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_pycocotools(seed):
    pytest.importorskip("pycocotools")
    preds, truths = random_case(np.random.default_rng(seed), n_images=10, n_classes=2)
    ours = detection_metrics(preds, truths, ["a", "b"])
    theirs = cocoeval(preds, truths, 2)
    np.testing.assert_allclose([ours["map"], ours["map_50"], ours["map_75"]], theirs.stats[:3], atol=1e-6)
    coco_recall = theirs.eval["recall"][0, :, 0, -1]  # IoU .5, area "all", maxDets 100
    np.testing.assert_allclose(list(ours["recall_at_k"]["per_class"].values()), coco_recall, atol=1e-6)


# --- bootstrap -------------------------------------------------------------------------------------------

def test_weights_equal_drawing_the_images_again():
    preds, truths = random_case(np.random.default_rng(3), n_images=4, n_classes=2)
    names, tables, *_ = prepare(preds, truths, ["a", "b"], 100)
    weighted = summary_arrays(*score_tables(tables, np.array([[2, 0, 1, 3]])))
    drawn = [0, 0, 2, 3, 3, 3]
    direct = detection_metrics([preds[i] for i in drawn], [truths[i] for i in drawn], names)
    np.testing.assert_allclose([weighted["map"][0], weighted["map_50"][0], weighted["mean_recall"][0]],
                               [direct["map"], direct["map_50"], direct["recall_at_k"]["mean"]])


def test_interval_contains_the_value_and_is_shaped_like_the_other_tasks():
    preds, truths = random_case(np.random.default_rng(4), n_images=20, n_classes=2)
    r = detection_metrics_with_ci(preds, truths, ["a", "b"], n_boot=200, seed=1)
    entries = [r["map"], r["map_50"], r["map_75"], r["recall_at_k"]["mean"], r["froc"]["cpm"],
               *r["ap_per_class"]["iou_50"].values(), *r["froc"]["sensitivity"]]
    for e in entries:
        assert set(e) == {"value", "ci_low", "ci_high"}
        assert e["ci_low"] <= e["value"] <= e["ci_high"]
    assert r["map"]["ci_low"] < r["map"]["ci_high"]
    assert r["map"]["value"] == detection_metrics(preds, truths, ["a", "b"])["map"]
    assert len(r["froc"]["sensitivity"]) == 7 and "froc" in r["curves"] and "pr" in r["curves"]
    assert r["bootstrap"]["resampled"] == "image" and r["n_groups"] == 20


def test_identical_images_give_a_zero_width_interval():
    one = (det([A, C], [0.9, 0.8]), gt([A, B]))
    r = detection_metrics_with_ci([one[0]] * 6, [one[1]] * 6, ["a"], n_boot=100)
    for e in (r["map"], r["map_50"], r["recall_at_k"]["mean"], r["froc"]["cpm"], *r["froc"]["sensitivity"]):
        assert e["ci_low"] == e["value"] == e["ci_high"]


def test_groups_move_a_patients_images_together():
    # patient "found": 3 images, lesion detected; patient "missed": 3 images, lesion missed.
    preds = [det([A], [0.9])] * 3 + [det(np.zeros((0, 4)), [])] * 3
    truths = [gt([A])] * 6
    by_patient = detection_metrics_with_ci(preds, truths, ["a"], groups=["found"] * 3 + ["missed"] * 3, n_boot=1000)
    by_image = detection_metrics_with_ci(preds, truths, ["a"], n_boot=1000)
    recall = by_patient["recall_at_k"]["mean"]
    # two patients: a quarter of the resamples draw "missed" twice (recall 0), a quarter "found" twice (1)
    assert (recall["ci_low"], recall["value"], recall["ci_high"]) == (0.0, 0.5, 1.0)
    image_recall = by_image["recall_at_k"]["mean"]
    assert 0 < image_recall["ci_low"] and image_recall["ci_high"] < 1  # 6 images rarely all come from one side
    assert by_patient["n_groups"] == 2 and by_patient["bootstrap"]["resampled"] == "group"


def test_no_resamples_give_nan_bounds():
    r = detection_metrics_with_ci([det([A], [0.9])], [gt([A])], ["a"], n_boot=0)
    assert r["map"]["value"] == 1.0 and math.isnan(r["map"]["ci_low"]) and math.isnan(r["froc"]["cpm"]["ci_high"])


# --- inputs ----------------------------------------------------------------------------------------------

def test_tuples_and_voxel_boxes_records_are_accepted():
    as_tuples = detection_metrics([(np.array([A]), np.array([0.9]), np.array([0]))],
                                  [Boxes(values=(tuple(A),), labels=(0,))], ["a"])
    assert as_tuples["map"] == 1.0


@pytest.mark.parametrize(("preds", "truths", "names", "match"), [
    ([det([A], [0.9])], [gt([A]), gt([B])], ["a"], "same images"),
    ([det([[10, 0, 0, 10]], [0.9])], [gt([A])], ["a"], "max below its min"),
    ([det([A], [0.9], [2])], [gt([A])], ["a", "b"], "2 classes"),
    ([det([A], [0.9])], [gt([[0, 0, 0, 1, 1, 1]])], ["a"], "2D and 3D"),
    ([det([A], [0.9])], [gt([A])], ["a", "a"], "distinct class names"),
    ([det([A], [np.nan])], [gt([A])], ["a"], "finite score"),
    ([det([A], [0.9])], [Boxes(values=((5, 5, 2, 2),), labels=(0,), form="center_size")], ["a"], "voxel corners"),
])
def test_bad_input_is_refused_with_the_fix(preds, truths, names, match):
    with pytest.raises(ConfigError, match=match):
        detection_metrics(preds, truths, names)


def test_groups_of_the_wrong_length_are_refused():
    with pytest.raises(ConfigError, match="one patient id per image"):
        detection_metrics_with_ci([det([A], [0.9])] * 2, [gt([A])] * 2, ["a"], groups=["p"], n_boot=10)
