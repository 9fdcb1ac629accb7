"""Detection report sections: the numbers of metrics.json in tables, the curves, and which boxes the galleries pick."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from medlens.config import Config
from medlens.io import Image
from medlens.report.document import Report, render_html
from medlens.runs import RunFolder
from medlens.tasks.detection.files import ImageResult
from medlens.tasks.detection.report import (
    compare_table,
    confident_false_positives,
    detection_sections,
    rate_text,
    worst_misses,
)

NAMES = ["RBC", "WBC"]
RATES = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]


def ci(value: float, low: float, high: float) -> dict:
    return {"value": value, "ci_low": low, "ci_high": high}


def metrics_doc() -> dict:
    """A metrics.json written by hand in the shape of ``detection_metrics_with_ci``."""
    return {"split": "test", "n_cases": 3, "grouped_by": "case", "metrics": {
        "map": ci(0.4123, 0.35, 0.47), "map_50": ci(0.6789, 0.61, 0.74), "map_75": ci(0.3911, 0.3, 0.45),
        "ap_per_class": {"iou_50": {"RBC": ci(0.7012, 0.6, 0.8), "WBC": ci(0.6566, 0.5, 0.75)},
                         "iou_50_95": {"RBC": ci(0.4411, 0.4, 0.5), "WBC": ci(0.3835, 0.3, 0.45)}},
        "recall_at_k": {"k": 100, "iou": 0.5, "per_class": {"RBC": ci(0.8881, 0.8, 0.95), "WBC": ci(0.5, 0.3, 0.7)},
                        "mean": ci(0.6941, 0.6, 0.8)},
        "froc": {"iou_threshold": 0.1, "fp_rates": RATES, "n_images": 3, "n_lesions": 4,
                 "sensitivity": [ci(0.1 * (i + 1), 0.05 * (i + 1), 0.12 * (i + 1)) for i in range(7)],
                 "cpm": ci(0.4, 0.2, 0.48)},
        "by_size": {"unit": "area_vox", "edges": [100.0, 400.0],
                    "bins": {"small": {"map_50": 0.2222, "ap_per_class": {"RBC": 0.3333, "WBC": 0.1111}, "n_truth": 2},
                             "medium": {"map_50": 0.5, "ap_per_class": {"RBC": 0.5, "WBC": 0.5}, "n_truth": 1},
                             "large": {"map_50": 0.9, "ap_per_class": {"RBC": 0.9, "WBC": 0.9}, "n_truth": 1}}},
        "n_truth": {"RBC": 2, "WBC": 2}, "n_detections": {"RBC": 4, "WBC": 3}, "n_images": 3,
        "bootstrap": {"n_boot": 200, "seed": 0, "alpha": 0.05, "method": "percentile", "resampled": "image"},
        "curves": {"pr": {"RBC": {"recall": [0.5, 1.0], "precision": [1.0, 0.5]},
                          "WBC": {"recall": [0.5], "precision": [0.5]}},
                   "froc": {"fp_per_image": [0.0, 0.33, 1.0, 2.0], "sensitivity": [0.0, 0.25, 0.5, 0.75]}}}}


def result(case_id: str, truth: list, truth_labels: list, boxes: list, scores: list, labels: list) -> ImageResult:
    image = Image(np.random.default_rng(0).random((1, 64, 64), dtype=np.float32), (1.0, 1.0), (0.0, 0.0),
                  (1.0, 0.0, 0.0, 1.0))
    as_boxes = lambda b: np.asarray(b, float).reshape(-1, 4)  # noqa: E731
    return ImageResult(case_id, image, as_boxes(truth), np.asarray(truth_labels, int), as_boxes(boxes),
                       np.asarray(scores, float), np.asarray(labels, int))


@pytest.fixture
def results() -> list[ImageResult]:
    """Three images. Misses: b's RBC (nothing overlaps: 0), c's WBC (a WBC at IoU 1/3, score 0.2), a's WBC (a WBC at
    IoU 0.47, score 0.6). False positives: a's RBC 0.95 (touches nothing), c's RBC 0.85 (on a WBC box), b's WBC 0.7."""
    a = result("a", [[10, 10, 20, 20], [40, 40, 50, 50]], [0, 1],
               [[10, 10, 20, 20], [42, 42, 52, 52], [30, 0, 36, 6]], [0.9, 0.6, 0.95], [0, 1, 0])
    b = result("b", [[5, 5, 15, 15]], [0], [[50, 50, 60, 60]], [0.7], [1])
    c = result("c", [[20, 20, 30, 30]], [1], [[25, 20, 35, 30], [20, 20, 30, 30]], [0.2, 0.85], [1, 0])
    return [a, b, c]


def test_galleries_pick_misses_by_lowest_overlapping_score_and_false_positives_by_highest_score(results):
    misses = worst_misses(results)
    assert [(m.result.case_id, m.label, m.score) for m in misses] == [("b", 0, 0.0), ("c", 1, 0.2), ("a", 1, 0.6)]
    assert misses[1].overlap == pytest.approx(1 / 3)
    assert misses[2].overlap == pytest.approx(64 / 136)
    false = confident_false_positives(results)
    assert [(f.result.case_id, f.label, f.score) for f in false] == [("a", 0, 0.95), ("c", 0, 0.85), ("b", 1, 0.7)]
    assert [m.result.case_id for m in worst_misses(results, limit=1)] == ["b"]


def rendered(sections) -> str:
    return render_html(Report("t", sections=sections))


def table_rows(html: str, key: str) -> list[list[str]]:
    body = re.search(rf'<table id="{key}">.*?<tbody>(.*?)</tbody>', html).group(1)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_sections_show_the_numbers_of_metrics_json(results, tmp_path):
    html = rendered(detection_sections(RunFolder(tmp_path), metrics_doc(), {}, Config(), results))
    assert table_rows(html, "metrics")[:2] == [["mAP@[.5:.95]", "0.4123", "0.3500", "0.4700"],
                                               ["mAP@0.5", "0.6789", "0.6100", "0.7400"]]
    assert ["recall@100 (IoU 0.5, mean over classes)", "0.6941", "0.6000", "0.8000"] in table_rows(html, "metrics")
    assert table_rows(html, "metrics")[-1] == ["FROC CPM (mean sensitivity at 1/8 to 8 FP per image)", "0.4000",
                                               "0.2000", "0.4800"]
    assert table_rows(html, "per-class")[0] == ["RBC", "0.7012 [0.6000, 0.8000]", "0.4411 [0.4000, 0.5000]",
                                                "0.8881 [0.8000, 0.9500]", "2", "4"]
    froc = table_rows(html, "froc")
    assert [row[0] for row in froc] == ["1/8", "1/4", "1/2", "1", "2", "4", "8", "mean (CPM)"]
    assert froc[3] == ["1", "0.4000", "0.2000", "0.4800"]
    assert table_rows(html, "by-size")[0] == ["small", "&lt; 100", "2", "0.2222", "0.3333", "0.1111"]
    assert "3 images, 4 reference boxes, 7 detections; 95% CIs from 200 bootstrap resamples of images" in html
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", html)
    assert captions[:2] == ["FROC: sensitivity against false positives per image (log scale)",
                            "precision-recall per class at IoU 0.5"]
    assert [c for c in captions if "missed" in c] == ["b: RBC missed; best overlapping score 0.00",
                                                      "c: WBC missed; best overlapping score 0.20",
                                                      "a: WBC missed; best overlapping score 0.60"]
    assert [c.split(",")[0] for c in captions if "with its class" in c] == ["a: RBC 0.95", "c: RBC 0.85", "b: WBC 0.70"]


def test_a_partial_document_gives_the_sections_it_can(tmp_path):
    doc = {"split": "test", "metrics": {"map_50": ci(0.5, 0.4, 0.6), "froc": {"cpm": 0.3}}}
    sections = detection_sections(RunFolder(tmp_path), doc, {}, Config(), None)
    assert [s.key for s in sections] == ["metrics-section"]
    assert table_rows(rendered(sections), "metrics") == [["mAP@0.5", "0.5000", "0.4000", "0.6000"],
                                                         ["FROC CPM (mean sensitivity at FP per image)", "0.3000",
                                                          "n/a", "n/a"]]
    [empty] = detection_sections(RunFolder(tmp_path), {}, {}, Config(), [])
    assert "holds no detection metrics" in rendered([empty])


def test_galleries_are_left_out_when_every_box_is_found_and_nothing_is_false():
    perfect = result("p", [[10, 10, 20, 20]], [0], [[10, 10, 20, 20]], [0.9], [0])
    sections = detection_sections(None, {"metrics": {"map": 1.0}}, {}, None, [perfect])
    assert [s.key for s in sections] == ["metrics-section"]


def test_real_metrics_of_the_three_images_render(results, tmp_path):
    from medlens.tasks.detection.metrics import detection_metrics_with_ci

    metrics = detection_metrics_with_ci([(r.boxes, r.scores, r.labels) for r in results],
                                        [(r.truth_boxes, r.truth_labels) for r in results], NAMES, n_boot=20)
    doc = json.loads(json.dumps({"split": "test", "metrics": metrics}))
    html = rendered(detection_sections(RunFolder(tmp_path), doc, {}, Config(), None))
    for key in ("metrics", "per-class", "froc", "by-size"):
        assert table_rows(html, key)
    assert table_rows(html, "per-class")[0][0] == "RBC"
    assert html.count("<img") == 2  # the PR and FROC curves


def test_compare_table_puts_runs_side_by_side(tmp_path):
    evaluated, fresh = RunFolder(tmp_path / "a"), RunFolder(tmp_path / "b")
    evaluated.root.mkdir()
    fresh.root.mkdir()
    evaluated.metrics_json.write_text(json.dumps(metrics_doc()))
    table = compare_table([("A", evaluated, Config()), ("B", fresh, Config())])
    assert table.header[4:] == ["mAP@[.5:.95] [95% CI]", "mAP@0.5 [95% CI]", "FROC CPM [95% CI]",
                                "RBC AP@0.5 [95% CI]", "WBC AP@0.5 [95% CI]"]
    assert table.rows[0][:5] == ["A", "resnet18_2d", "test", "3", "0.4123 [0.3500, 0.4700]"]
    assert table.rows[0][6:] == ["0.4000 [0.2000, 0.4800]", "0.7012 [0.6000, 0.8000]", "0.6566 [0.5000, 0.7500]"]
    assert table.rows[1][4] == "not evaluated yet"


def test_rates_read_as_fractions():
    assert [rate_text(r) for r in RATES] == ["1/8", "1/4", "1/2", "1", "2", "4", "8"]


def test_3d_galleries_show_a_crop_of_the_axial_slice_through_each_box():
    volume = Image(np.zeros((1, 40, 30, 20), np.float32), (0.7, 0.9, 2.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    r = ImageResult("vol", volume, np.array([[5, 5, 5, 12, 12, 9.0]]), np.array([0]),
                    np.array([[20, 10, 10, 30, 20, 15.0], [5, 5, 5, 12, 12, 9.0]]), np.array([0.8, 0.3]),
                    np.array([1, 1]))
    [section] = [s for s in detection_sections(None, {"metrics": {"map": 0.5}}, {}, None, [r]) if s.key == "galleries"]
    figures = [f for block in section.blocks if isinstance(block, list) for f in block]
    # the class-1 box on the class-0 reference is no find for it (classes must agree), and a false positive of class 1
    assert [f.caption for f in figures] == ["vol: 0 missed; best overlapping score 0.00",
                                            "vol: 1 0.80, IoU 0.00 with its class",
                                            "vol: 1 0.30, IoU 0.00 with its class"]
    assert all(f.small and f.png.startswith(b"\x89PNG") for f in figures)
