"""The report's pieces on hand-made inputs: gallery order, reliability bins, published figures, rendering."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.report.document import Figure, Report, Section, Table, num, render_html, render_markdown
from medlens.report.published import approx, decathlon_benchmark, medmnist_benchmark
from medlens.tasks.classification.evaluate import gallery_cases
from medlens.tasks.classification.plots import reliability_bins
from medlens.tasks.segmentation.evaluate import chosen_cases, mean_dice
from medlens.tasks.segmentation.report import display_slice


def test_gallery_puts_the_most_confident_mistakes_first_then_the_most_confident_hits():
    labels = np.array([0, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.05, 0.95]])
    predicted, right, order = gallery_cases(labels, probs)
    assert predicted.tolist() == [0, 0, 1, 1, 1] and right.tolist() == [True, False, True, False, True]
    assert order.tolist() == [1, 3, 4, 0, 2]  # mistakes p=0.8, 0.7; hits p=0.95, 0.9, 0.6


def test_gallery_multilabel_explains_the_top_label_right_when_present():
    labels = np.array([[1, 0], [0, 0]])
    probs = np.array([[0.7, 0.2], [0.1, 0.9]])
    _, right, order = gallery_cases(labels, probs)
    assert right.tolist() == [True, False] and order.tolist() == [1, 0]


def test_reliability_bins_match_the_ece_bins():
    confidence = np.array([0.1, 0.15, 0.55, 0.95, 1.0])
    outcome = np.array([0.0, 1.0, 1.0, 1.0, 0.0])
    mean_conf, frequency, count = reliability_bins(confidence, outcome, n_bins=4)
    assert count.tolist() == [2, 0, 1, 2]
    np.testing.assert_allclose(mean_conf[[0, 2, 3]], [0.125, 0.55, 0.975])
    np.testing.assert_allclose(frequency[[0, 2, 3]], [0.5, 1.0, 0.5])
    assert np.isnan(frequency[1])


@pytest.mark.parametrize("source, method, auc, acc, plus", [
    ("/data/pneumoniamnist.npz", "ResNet-18 (28)", 0.944, 0.854, {"acc": 0.8659, "auc": 0.9729}),
    ("pneumoniamnist_64.npz", "ResNet-18 (28)", 0.944, 0.854, {"acc": 0.8926, "auc": 0.9869}),
    ("organmnist3d_64.npz", "ResNet-18 + 3D", 0.996, 0.907, None),
])
def test_medmnist_files_are_recognised_with_their_published_rows(source, method, auc, acc, plus):
    bench = medmnist_benchmark(source)
    assert bench["reference"]["method"] == method
    assert (bench["reference"]["auc"], bench["reference"]["acc"]) == (auc, acc)
    assert bench["plus"] == plus and "Yang et al." in bench["source"]


def test_the_best_method_of_the_table_and_approximate_figures():
    bench = medmnist_benchmark("pneumoniamnist.npz")
    assert bench["best_auc"]["method"] == "Google AutoML Vision"
    assert approx(bench["best_auc"], "auc") == "≈0.991" and approx(bench["best_auc"], "acc") == "0.946"
    assert medmnist_benchmark("organmnist3d.npz")["best_auc"]["method"] == "ResNet-18 + 3D"


def test_other_data_are_no_benchmark():
    assert medmnist_benchmark("demo/classification.csv") is None
    assert medmnist_benchmark("notmnist.npz") is None
    assert decathlon_benchmark({"dataset": {"source": "demo/segmentation", "meta": {"name": "lesions"}}}) is None
    hippocampus = decathlon_benchmark({"dataset": {"source": "/d/Task04_Hippocampus", "meta": {"name": "Hippocampus"}}})
    assert hippocampus["dice"] == {"anterior": 0.8975, "posterior": 0.8807}


def test_worst_median_best_by_mean_dice_leaving_out_undefined_cases():
    rows = [{"case_id": c, "a_dice": a, "b_dice": b} for c, a, b in
            [("x", "0.9", "0.7"), ("y", "", ""), ("z", "0.2", ""), ("w", "1", "0.9"), ("v", "0.5", "0.5")]]
    assert mean_dice(rows[0], ["a", "b"]) == pytest.approx(0.8) and mean_dice(rows[1], ["a", "b"]) is None
    assert [(t, r["case_id"]) for t, r in chosen_cases(rows, ["a", "b"])] == [("worst", "z"), ("median", "v"),
                                                                               ("best", "w")]


def test_the_3d_overlay_shows_the_axial_slice_with_the_most_reference():
    reference = np.zeros((4, 5, 6), dtype=np.int64)
    reference[1:3, 1:4, 4] = 1
    reference[1, 1, 2] = 1
    plane, k = display_slice(np.arange(120.0).reshape(4, 5, 6), reference)
    assert k == 4 and plane.shape == (5, 4)


def test_html_and_markdown_show_the_same_cells_and_figures():
    png = b"\x89PNG\r\n\x1a\nfake"
    report = Report("t", "s", [Section("Numbers", key="n").text("error: it **failed**")
                               .table(Table(["metric", "value"], [["AUC", num(0.81234)], ["x", num(None)]], key="m"))
                               .figures(Figure("roc", png, "ROC"))])
    page = render_html(report)
    assert '<table id="m">' in page and '<td class="n">0.8123</td>' in page and '<td class="n">n/a</td>' in page
    assert '<span class="error">error: it <b>failed</b></span>' in page and "data:image/png;base64," in page
    text, files = render_markdown(report, "report_files")
    assert "| AUC | 0.8123 |" in text and "![ROC](report_files/roc.png)" in text
    assert files == {"report_files/roc.png": png}


def test_a_report_that_cannot_be_made_is_a_warning_not_a_failure(tmp_path):
    from medlens.report import write_report

    lines = []
    assert write_report(tmp_path, log=lines.append) is None
    assert len(lines) == 1 and lines[0].startswith("warning: report.html not written (ConfigError")
    assert "not a readable plan" in lines[0] and not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_classification_figures_are_pngs_for_every_task(task, pages):
    import base64

    from medlens.tasks.classification.metrics import classification_metrics
    from medlens.tasks.classification.plots import confusion_png, reliability_png, roc_pr_png

    rng = np.random.default_rng(0)
    names = ["a", "b"] if task == "binary" else ["a", "b", "c"]
    if task == "multilabel":
        labels = rng.integers(0, 2, (40, 3))
        raw = np.clip(labels * 0.6 + rng.random((40, 3)) * 0.4, 0, 1)
    else:
        labels = rng.integers(0, len(names), 40)
        raw = rng.dirichlet(np.ones(len(names)), 40) + np.eye(len(names))[labels]
        raw /= raw.sum(1, keepdims=True)
    confusion = classification_metrics(labels, raw, task, names, n_boot=0)["confusion_matrix"]
    for png in (roc_pr_png(labels, raw, names, task), confusion_png(confusion),
                reliability_png(labels, raw, raw ** 1.2 / (raw ** 1.2).sum(1, keepdims=True) if task != "multilabel"
                                else raw, temperature=1.3, ece=(0.1, 0.05))):
        image = pages.decode_png("data:image/png;base64," + base64.b64encode(png).decode())
        assert 200 < image.width < 1600 and 150 < image.height < 1200


def test_leakage_findings_come_first_and_are_counted():
    from medlens.report.run_sections import findings_table

    card = {"findings": [{"severity": "warning", "code": "class.imbalance", "message": "few lesions", "cases": []},
                         {"severity": "error", "code": "leakage.patient", "message": "p1 in train and test",
                          "cases": ["a", "b"]}]}
    table = findings_table(card)
    assert [r[1] for r in table.rows] == ["leakage.patient", "class.imbalance"] and table.rows[0][3] == "2"
    assert table.caption == "audit findings: 1 leakage finding(s)"


def test_race_table_marks_the_winner_and_the_dropped():
    from medlens.report.run_sections import race_table

    info = {"race": [{"overrides": "", "score": 0.81, "epochs": 4, "seconds": 30.2},
                     {"overrides": "model.name=acsresnet18_3d", "score": 0.86, "epochs": 3, "seconds": 29.0},
                     {"overrides": "model.name=unet_2d", "error": "not a classifier", "seconds": 0.1}],
            "winner": "model.name=acsresnet18_3d", "race_reason": "raced 3 contestants"}
    table = race_table(info)
    assert table.key == "race" and table.caption == "raced 3 contestants"
    assert table.rows[0] == ["the plan as written", "0.8100", "4", "30", ""]
    assert table.rows[1][1] == "0.8600" and table.rows[1][-1] == "winner"
    assert table.rows[2][1] == "dropped: not a classifier" and table.rows[2][-1] == ""
