"""report.html in a real headless browser: no errors, every image decoded, the numbers of metrics.json.

Drives the system chromium through playwright (never `playwright install`); `make test` installs
chromium when it is missing. Where the variable CI is set, a missing browser fails instead of skipping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser


def table_cells(page, key: str) -> list[list[str]]:
    return page.eval_on_selector(f"table#{key}", "t => [...t.tBodies[0].rows].map(r => [...r.cells].map("
                                                 "c => c.textContent.trim()))")


def artifact_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MEDLENS_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def test_classification_report_renders_offline_with_the_numbers_of_metrics_json(open_watched, cls_run, tmp_path):
    page, errors = open_watched((cls_run.root / "report.html").resolve().as_uri(), ("file:", "data:"), (1300, 900))
    images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
    assert len(images) >= 5 and all(done and width > 0 for done, width in images)
    doc = json.loads((cls_run.root / "metrics.json").read_text())
    expected = [[label, *(fmt(doc["metrics"][k][c]) for c in ("value", "ci_low", "ci_high"))]
                for k, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("auc", "AUC"))]
    assert table_cells(page, "metrics") == expected
    assert page.locator("#gallery figure").count() >= 1
    shot = artifact_dir(tmp_path) / "report_classification.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert errors == []


def test_segmentation_report_renders_offline_with_the_numbers_of_metrics_json(open_watched, seg_run, tmp_path):
    page, errors = open_watched((seg_run.root / "report.html").resolve().as_uri(), ("file:", "data:"), (1300, 900))
    images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
    assert len(images) >= 6 and all(done and width > 0 for done, width in images)
    lesion = json.loads((seg_run.root / "metrics.json").read_text())["metrics"]["per_class"]["lesion"]
    rows = {(r[0], r[1]): r[2:5] for r in table_cells(page, "metrics")}
    for key, label in (("dice", "Dice"), ("hd95_mm", "HD95")):
        assert rows[("lesion", label)] == [fmt(lesion[key][c]) for c in ("value", "ci_low", "ci_high")]
    shot = artifact_dir(tmp_path) / "report_segmentation.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert errors == []
