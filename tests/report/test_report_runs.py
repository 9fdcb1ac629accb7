"""report.html / report.md after train and after evaluate, for a classification and a segmentation run."""

from __future__ import annotations

import json
import re


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


#: the 3D viewer's inlined scripts (NiiVue, whose comments cite web pages: nothing is fetched) and volumes
VIEWER_SCRIPTS = re.compile(r"<script[^>]*data-medlens-viewer[^>]*>.*?</script>", re.S)


def check_self_contained(pages, text: str, at_least: int) -> list:
    text = VIEWER_SCRIPTS.sub("", text)
    page = pages.parse(text)
    assert len(page.images) >= at_least
    images = [pages.decode_png(src) for src in page.images]
    assert all(link.startswith(("data:image/png;base64,", "#")) for link in page.links), \
        [link[:40] for link in page.links if not link.startswith(("data:", "#"))]
    assert pages.external(text) == [] and "<script" not in text and "<link" not in text
    return images


def classification_cells(doc: dict, key: str = "metrics") -> list[list[str]]:
    labels = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auc": "AUC"}
    return [[label, *(fmt(doc[key][k][c]) for c in ("value", "ci_low", "ci_high"))] for k, label in labels.items()]


def test_train_writes_a_report_with_card_plan_and_curves(cls_run, pages):
    text, root = cls_run.report_after_train, cls_run.root
    assert f"report written to {root / 'report.html'}" in cls_run.train_out
    images = check_self_contained(pages, text, at_least=2)  # loss, validation metric
    assert all(image.width <= 1600 for image in images)
    page = pages.parse(text)
    counts = page.tables["split-counts"]
    assert counts[0] == ["split", "cases", "normal", "lesion"]
    assert [r[0] for r in counts[1:]] == ["train", "val", "test", "total"] and counts[-1][1] == "160"
    assert int(counts[3][1]) == 32  # the locked test split of splits.json
    plan = {row[0]: row for row in page.tables["plan"][1:]}
    assert plan["model.name"][1] == "resnet18_2d" and "MedMNIST reference" in plan["model.name"][2]
    assert plan["train.max_epochs"][1] == "3"
    assert "not evaluated yet" in text and "not evaluated yet" in cls_run.markdown_after_train


def test_evaluate_adds_metrics_curves_and_gallery_with_the_numbers_of_metrics_json(cls_run, pages):
    root = cls_run.root
    text = (root / "report.html").read_text()
    assert f"report written to {root / 'report.html'}" in cls_run.eval_out
    doc = json.loads((root / "metrics.json").read_text())
    counts = doc["metrics"]["confusion_matrix"]["counts"]
    right = sum(counts[k][k] for k in range(len(counts)))
    # loss, validation, ROC/PR, confusion, reliability, and up to 8 + 8 Grad-CAM overlays
    gallery = min(8, right) + min(8, doc["n_cases"] - right)
    assert len(pages.parse(text).images) == 5 + gallery
    check_self_contained(pages, text, at_least=5 + gallery)
    page = pages.parse(text)
    assert page.tables["metrics"][1:] == classification_cells(doc)
    assert page.tables["metrics-youden"][1:] == classification_cells(doc, "metrics_youden")
    per_class = {r[0]: r for r in page.tables["per-class"][1:]}
    lesion = doc["metrics"]["per_class"]["lesion"]["recall"]
    assert per_class["lesion"][2] == f"{fmt(lesion['value'])} [{fmt(lesion['ci_low'])}, {fmt(lesion['ci_high'])}]"
    assert "wrongly classified" in text and "correctly classified" in text
    assert "not evaluated yet" not in text


def test_gallery_shows_the_most_confident_mistakes_first(cls_run):
    text = (cls_run.root / "report.html").read_text()
    gallery = text[text.index('id="gallery"'):]
    wrong = gallery[:gallery.index("correctly classified")]
    confidences = [float(p) for p in re.findall(r"\(p = ([0-9.]+)\)</figcaption>", wrong)]
    assert confidences == sorted(confidences, reverse=True)
    captions = re.findall(r"true \w+, predicted \w+", wrong)
    assert all("predicted lesion" in c or "predicted normal" in c for c in captions)
    assert not any(re.findall(r"true (\w+), predicted \1", wrong))  # every case there is a mistake


def test_markdown_report_has_the_same_numbers_and_its_figures(cls_run):
    root = cls_run.root
    md = (root / "report.md").read_text()
    doc = json.loads((root / "metrics.json").read_text())
    for row in classification_cells(doc):
        assert "| " + " | ".join(row) + " |" in md
    figures = re.findall(r"!\[[^\]]*\]\((report_files/[^)]+\.png)\)", md)
    assert len(figures) >= 5 and all((root / f).is_file() for f in figures)
    assert {p.name for p in (root / "report_files").glob("*.png")} == {f.split("/")[-1] for f in figures}


def test_segmentation_reports_after_train_and_after_evaluate(seg_run, pages):
    root = seg_run.root
    assert "not evaluated yet" in seg_run.report_after_train
    check_self_contained(pages, seg_run.report_after_train, at_least=2)
    text = (root / "report.html").read_text()
    check_self_contained(pages, text, at_least=2 + 1 + 3)  # curves, box plots, worst / median / best overlays
    doc = json.loads((root / "metrics.json").read_text())
    page = pages.parse(text)
    expected = [[name, label, *(fmt(entries[k][c]) for c in ("value", "ci_low", "ci_high")), str(entries[k]["n"])]
                for name, entries in [*doc["metrics"]["per_class"].items(), ("mean", doc["metrics"]["mean"])]
                for k, label in (("dice", "Dice"), ("iou", "IoU"), ("hd95_mm", "HD95"), ("msd_mm", "MSD"))]
    assert page.tables["metrics"][1:] == expected
    cases = page.tables["per-case-table"][1:]
    assert len(cases) == doc["n_cases"] == 3
    dice = [float(r[1]) for r in cases]
    assert dice == sorted(dice)  # worst first
    assert all(f"{title} case by mean Dice" in text for title in ("worst", "median", "best"))
    md = (root / "report.md").read_text()
    assert all("| " + " | ".join(row) + " |" in md for row in expected)
