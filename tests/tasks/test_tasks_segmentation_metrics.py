"""case_metrics, summarize_segmentation and format_segmentation_table on hand-worked masks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medlens.errors import ConfigError
from medlens.tasks.segmentation.metrics import case_metrics, format_segmentation_table, summarize_segmentation


def boxes_2d() -> tuple[np.ndarray, np.ndarray]:
    """Two 4x4 boxes on a 10x10 grid, shifted by 2 columns: |A| = |B| = 16, |A∩B| = 8."""
    pred, ref = np.zeros((10, 10), np.int64), np.zeros((10, 10), np.int64)
    pred[0:4, 0:4] = 1
    ref[0:4, 2:6] = 1
    return pred, ref


def perfect_and_missed_rows() -> list[dict]:
    """Case a: perfect (Dice 1); case b: missed (Dice 0); case c: both empty (excluded)."""
    ref = np.zeros((6, 8), np.int64)
    ref[1:3, 1:3] = 1
    empty = np.zeros_like(ref)
    labels, spacing = {1: "lesion"}, (0.5, 0.5)
    return [{"case_id": "a", "metrics": case_metrics(ref, ref, labels, spacing)},
            {"case_id": "b", "metrics": case_metrics(empty, ref, labels, spacing)},
            {"case_id": "c", "metrics": case_metrics(empty, empty, labels, spacing)}]


def test_dice_iou_of_overlapping_boxes():
    pred, ref = boxes_2d()
    m = case_metrics(pred, ref, {1: "box"}, (1.0, 1.0))["box"]
    assert m["status"] == "ok"
    assert m["dice"] == pytest.approx(2 * 8 / (16 + 16))   # 0.5
    assert m["iou"] == pytest.approx(8 / (16 + 16 - 8))    # 1/3


def test_distances_of_parallel_planes_use_anisotropic_spacing():
    # Planes x = 2 and x = 5 of a 3D volume: 3 voxels apart, 2 mm each along x -> every surface point is 6 mm away.
    pred, ref = np.zeros((10, 6, 6), np.int64), np.zeros((10, 6, 6), np.int64)
    ref[2], pred[5] = 1, 1
    m = case_metrics(pred, ref, {1: "plane"}, (2.0, 1.0, 1.0))["plane"]
    assert m["hd95_mm"] == pytest.approx(6.0)
    assert m["msd_mm"] == pytest.approx(6.0)
    assert m["dice"] == 0.0 and m["status"] == "ok"
    iso = case_metrics(pred, ref, {1: "plane"}, (1.0, 1.0, 1.0))["plane"]
    assert iso["hd95_mm"] == pytest.approx(3.0)


def test_distance_between_single_pixels_is_euclidean_in_mm():
    # (0, 0) vs (3, 2) with spacing (1, 2) mm: 3 mm and 4 mm apart along the axes -> 5 mm.
    pred, ref = np.zeros((5, 5), np.int64), np.zeros((5, 5), np.int64)
    pred[0, 0], ref[3, 2] = 1, 1
    m = case_metrics(pred, ref, {1: "dot"}, (1.0, 2.0))["dot"]
    assert m["hd95_mm"] == pytest.approx(5.0)
    assert m["msd_mm"] == pytest.approx(5.0)


def test_hd95_ignores_one_outlier_that_msd_counts():
    # Reference: row 0 (20 pixels). Prediction: the same row plus one pixel 5 rows (10 mm) away.
    # Distances pred -> ref: 20 zeros and 10; ref -> pred: 20 zeros. The 95th percentile of
    # 21 values is the 20th smallest (0); the mean of the 41 pooled distances is 10 / 41.
    ref = np.zeros((8, 20), np.int64)
    ref[0, :] = 1
    pred = ref.copy()
    pred[5, 0] = 1
    m = case_metrics(pred, ref, {1: "line"}, (2.0, 1.0))["line"]
    assert m["hd95_mm"] == pytest.approx(0.0)
    assert m["msd_mm"] == pytest.approx(10 / 41)


def test_empty_mask_rules():
    # 6x8 pixels of 0.5 mm: a 3 mm x 4 mm image, diagonal 5 mm.
    ref = np.zeros((6, 8), np.int64)
    ref[1:3, 1:3] = 1
    empty = np.zeros_like(ref)
    labels, spacing = {1: "lesion"}, (0.5, 0.5)
    both = case_metrics(empty, empty, labels, spacing)["lesion"]
    assert both["status"] == "both_empty"
    assert all(both[k] is None for k in ("dice", "iou", "hd95_mm", "msd_mm"))
    assert both["size_pred"] == both["size_ref"] == both["size_diff"] == 0.0
    missed = case_metrics(empty, ref, labels, spacing)["lesion"]
    assert missed["status"] == "missed"
    assert (missed["dice"], missed["iou"]) == (0.0, 0.0)
    assert missed["hd95_mm"] == pytest.approx(5.0) and missed["msd_mm"] == pytest.approx(5.0)
    false_pos = case_metrics(ref, empty, labels, spacing)["lesion"]
    assert false_pos["status"] == "false_positive"
    assert (false_pos["dice"], false_pos["iou"]) == (0.0, 0.0)
    assert false_pos["hd95_mm"] == pytest.approx(5.0) and false_pos["msd_mm"] == pytest.approx(5.0)


def test_summary_excludes_both_empty_and_keeps_missed():
    summary = summarize_segmentation(perfect_and_missed_rows(), ["lesion"], n_boot=200)
    lesion = summary["per_class"]["lesion"]
    assert lesion["dice"]["value"] == pytest.approx(0.5)     # mean of 1.0 (case a) and 0.0 (missed b)
    assert lesion["dice"]["n"] == 2
    assert lesion["hd95_mm"]["value"] == pytest.approx(2.5)  # mean of 0 and the 5 mm diagonal
    assert (lesion["excluded_both_empty"], lesion["missed"], lesion["false_positive"]) == (1, 1, 0)
    assert lesion["n_cases"] == 3
    assert lesion["size_diff"]["n"] == 3                     # sizes are defined on every case
    assert summary["mean"]["dice"]["value"] == pytest.approx(0.5)
    assert summary["mean"]["excluded_all_empty"] == 1


def test_volumes_in_ml_and_areas_in_mm2():
    pred, ref = np.zeros((20, 10, 10), np.int64), np.zeros((20, 10, 10), np.int64)
    pred[:10] = 1                        # 1000 voxels
    ref[:5] = 1                          # 500 voxels
    iso = case_metrics(pred, ref, {1: "organ"}, (1.0, 1.0, 1.0))["organ"]
    assert iso["size_unit"] == "ml"
    assert (iso["size_pred"], iso["size_ref"], iso["size_diff"]) == pytest.approx((1.0, 0.5, 0.5))
    doubled = case_metrics(pred, ref, {1: "organ"}, (2.0, 1.0, 1.0))["organ"]
    assert (doubled["size_pred"], doubled["size_diff"]) == pytest.approx((2.0, 1.0))
    box_pred, box_ref = boxes_2d()       # 16 pixels each, 0.25 mm2 per pixel
    area = case_metrics(box_pred, box_ref, {1: "box"}, (0.5, 0.5))["box"]
    assert area["size_unit"] == "mm2"
    assert (area["size_pred"], area["size_diff"]) == pytest.approx((4.0, 0.0))
    under = case_metrics(box_ref * 0, box_ref, {1: "box"}, (0.5, 0.5))["box"]
    assert under["size_diff"] == pytest.approx(-4.0)   # pred - ref


def test_multi_class_label_map_scores_each_class():
    ref = np.zeros((10, 10), np.int64)
    ref[0:4, 0:4], ref[6:10, 6:10] = 1, 2
    pred = ref.copy()
    pred[0:4, 0:4] = 0
    pred[0:4, 2:6] = 1                   # class 1: the shifted boxes (Dice 0.5); class 2: untouched
    m = case_metrics(pred, ref, {1: "liver", 2: "tumour"}, (1.0, 1.0))
    assert set(m) == {"liver", "tumour"}
    assert m["liver"]["dice"] == pytest.approx(0.5)
    assert m["tumour"]["dice"] == pytest.approx(1.0)
    assert m["tumour"]["hd95_mm"] == pytest.approx(0.0)
    assert set(m["liver"]) == {"dice", "iou", "hd95_mm", "msd_mm", "size_pred", "size_ref", "size_diff",
                               "size_unit", "status"}


def summary_rows(n: int = 12) -> tuple[list[dict], list[str]]:
    """``n`` 2D cases with varying overlap, two classes, and their patient ids (2 cases each)."""
    rows = []
    for i in range(n):
        ref = np.zeros((12, 12), np.int64)
        ref[0:4, 0:4], ref[6:10, 6:10] = 1, 2
        pred = ref.copy()
        pred[0:4, 0:4] = 0
        pred[0:4, i % 4:4 + i % 4] = 1
        rows.append({"case_id": f"c{i}", "metrics": case_metrics(pred, ref, {1: "liver", 2: "tumour"}, (1.0, 1.0))})
    return rows, [f"p{i // 2}" for i in range(n)]


def test_summary_interval_contains_mean_and_grouped_call_works():
    rows, patients = summary_rows()
    summary = summarize_segmentation(rows, ["liver", "tumour"], n_boot=300, seed=1)
    liver = summary["per_class"]["liver"]
    for key in ("dice", "iou", "hd95_mm", "msd_mm", "size_diff"):
        assert liver[key]["ci_low"] <= liver[key]["value"] <= liver[key]["ci_high"]
        assert liver[key]["n"] == 12
    assert liver["dice"]["ci_low"] < liver["dice"]["ci_high"]   # the overlaps vary across cases
    assert summary["mean"]["dice"]["value"] == pytest.approx((liver["dice"]["value"] + 1.0) / 2)
    grouped = summarize_segmentation(rows, ["liver", "tumour"], n_boot=300, seed=1, groups=patients)
    assert grouped["n_groups"] == 6 and grouped["bootstrap"]["resampled"] == "group"
    g = grouped["per_class"]["liver"]["dice"]
    assert g["value"] == pytest.approx(liver["dice"]["value"])
    assert g["ci_low"] <= g["value"] <= g["ci_high"]
    json.dumps(grouped)                  # JSON-ready


def test_one_patient_collapses_the_interval_to_the_mean():
    # Every patient resample redraws the single patient, hence all cases: the interval is a point.
    rows, _ = summary_rows(4)
    summary = summarize_segmentation(rows, ["liver"], n_boot=50, groups=["p0"] * 4)
    dice = summary["per_class"]["liver"]["dice"]
    assert dice["ci_low"] == pytest.approx(dice["value"]) and dice["ci_high"] == pytest.approx(dice["value"])


def test_no_bootstrap_gives_nan_interval_and_all_empty_class_gives_nan_mean():
    rows = perfect_and_missed_rows()[2:]  # the both-empty case only
    summary = summarize_segmentation(rows, ["lesion"], n_boot=0)
    dice = summary["per_class"]["lesion"]["dice"]
    assert dice["n"] == 0 and math.isnan(dice["value"]) and math.isnan(dice["ci_low"])
    assert summary["per_class"]["lesion"]["size_ref"]["value"] == 0.0


def test_format_table_lists_classes_and_counts():
    rows, _ = summary_rows(6)
    text = format_segmentation_table(summarize_segmentation(rows, ["liver", "tumour"], n_boot=100), title="Val")
    assert text.splitlines()[0] == "Val"
    for word in ("liver", "tumour", "mean", "Dice", "HD95 mm", "size diff mm2", "both empty", "missed"):
        assert word in text
    assert "[" in text                   # value [low, high]
    missed = format_segmentation_table(summarize_segmentation(perfect_and_missed_rows(), ["lesion"], n_boot=0))
    assert "0.500" in missed and "n/a" not in missed.splitlines()[2]


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(10, 10\).*\(10, 12\)"):
        case_metrics(np.zeros((10, 10), int), np.zeros((10, 12), int), {1: "a"}, (1.0, 1.0))


@pytest.mark.parametrize(("pred", "labels", "spacing", "match"), [
    (np.zeros((4, 4), int), {1: "a"}, (1.0,), "one positive spacing"),
    (np.zeros((4, 4), int), {1: "a"}, (1.0, 0.0), "one positive spacing"),
    (np.zeros((1, 4, 4, 4), int), {1: "a"}, (1.0,) * 4, r"\(X, Y\) or \(X, Y, Z\)"),
    (np.full((4, 4), 0.4), {1: "a"}, (1.0, 1.0), "not probabilities"),
    (np.zeros((4, 4), int), {0: "bg", 1: "a"}, (1.0, 1.0), "background"),
    (np.zeros((4, 4), int), {1: "a", 2: "a"}, (1.0, 1.0), "distinct"),
])
def test_bad_case_inputs_are_explained(pred, labels, spacing, match):
    with pytest.raises(ValueError, match=match):
        case_metrics(pred, np.zeros(pred.shape, int), labels, spacing)


def test_bad_summary_inputs_are_explained():
    rows = perfect_and_missed_rows()
    with pytest.raises(ConfigError, match="no metrics for classes"):
        summarize_segmentation(rows, ["liver"])
    with pytest.raises(ConfigError, match="one patient id per row"):
        summarize_segmentation(rows, ["lesion"], groups=["p0"])
    volume = {"case_id": "v", "metrics": case_metrics(np.ones((2, 2, 2), int), np.ones((2, 2, 2), int),
                                                      {1: "lesion"}, (1.0, 1.0, 1.0))}
    with pytest.raises(ConfigError, match="2D and 3D"):
        summarize_segmentation(rows + [volume], ["lesion"])
