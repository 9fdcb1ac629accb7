"""Anomaly metrics on hand-computable scores, and the split without abnormal cases."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.tasks.anomaly.metrics import anomaly_metrics, pixel_auroc, roc_points


def test_metrics_on_hand_computed_scores():
    abnormal = np.array([0, 0, 0, 0, 1, 1], dtype=bool)
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.9])
    m = anomaly_metrics(abnormal, scores, threshold=0.5, n_boot=50)
    # pairs (abnormal, normal) ordered right: 0.6 beats 3 of 4 normals, 0.9 beats 4 of 4 -> 7/8
    assert m["auroc"]["value"] == pytest.approx(7 / 8)
    assert m["sensitivity"]["value"] == 1.0  # 0.6 and 0.9 above 0.5
    assert m["specificity"]["value"] == 0.75  # 0.7 is a false positive
    assert m["auprc"]["value"] == pytest.approx((1 + 2 / 3) / 2)  # precision 1 at 0.9, 2/3 at 0.6
    assert m["n_normal"] == 4 and m["n_abnormal"] == 2
    assert m["auroc"]["ci_low"] <= m["auroc"]["value"] <= m["auroc"]["ci_high"]
    assert "note" not in m


def test_a_split_without_abnormal_cases_says_so():
    m = anomaly_metrics(np.zeros(5, dtype=bool), np.array([0.1, 0.2, 0.3, 0.4, 0.9]), threshold=0.5, n_boot=20)
    assert m["auroc"] is None and m["auprc"] is None and m["sensitivity"] is None
    assert m["specificity"]["value"] == 0.8
    assert "no abnormal case" in m["note"]


def test_pixel_auroc_and_roc_points():
    maps = [np.array([[0.0, 1.0], [0.2, 0.1]])]
    masks = [np.array([[0, 1], [0, 0]])]
    assert pixel_auroc(maps, masks) == 1.0
    assert np.isnan(pixel_auroc(maps, [np.zeros((2, 2))]))
    fpr, tpr = roc_points(np.array([0, 1], dtype=bool), np.array([0.1, 0.9]))
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert len(roc_points(np.array([0, 0], dtype=bool), np.array([0.1, 0.9]))[0]) == 0


def test_pixel_auroc_over_the_cases_with_masks(tmp_path):
    from dataclasses import replace

    from medlens.config import Config, DataSection, DatasetSection
    from medlens.data.prepared import SplitData
    from medlens.io import Image, identity_direction, write_image
    from medlens.tasks.anomaly.evaluate import _pixel
    from medlens.types import Case

    config = Config(dataset=DatasetSection(task="anomaly", class_names=("normal", "blob")),
                    data=DataSection(input_size=(4, 4)))
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4, :4] = 1  # the top-left quarter, at twice the network's grid
    path = write_image(Image(mask[None], (1.0, 1.0), (0.0, 0.0), identity_direction(2)), tmp_path / "m.nii.gz")
    cases = [Case("a", (tmp_path / "a.png",), label=1, mask=path), Case("b", (tmp_path / "b.png",), label=0)]
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    maps[0, :2, :2] = 1.0
    data = SplitData("test", cases, np.zeros((2, 1, 4, 4), np.float32), np.array([1, 0]))
    pixel = _pixel(data, maps, np.array([True, False]), config)
    assert pixel == {"auroc": 1.0, "n_cases": 1, "n_abnormal": 1}
    no_masks = replace(data, cases=[replace(c, mask=None) for c in cases])
    assert _pixel(no_masks, maps, np.array([True, False]), config)["auroc"] is None
