"""report.html in a real headless browser: no errors, every image decoded, the numbers of metrics.json.

Drives the system chromium through playwright (never `playwright install`); `make test` installs
chromium when it is missing. Where the variable CI is set, a missing browser fails instead of skipping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing; `make test` installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="install the dev extra: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


def open_report(browser, path: Path):
    """The page at ``file://path`` and the console errors / page errors it raised while loading."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: None if request.url.startswith(("file:", "data:")) else
            errors.append(f"network request {request.url}"))
    page.goto(path.resolve().as_uri(), wait_until="load")
    return page, errors


def table_cells(page, key: str) -> list[list[str]]:
    return page.eval_on_selector(f"table#{key}", "t => [...t.tBodies[0].rows].map(r => [...r.cells].map("
                                                 "c => c.textContent.trim()))")


def artifact_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MEDLENS_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def test_classification_report_renders_offline_with_the_numbers_of_metrics_json(browser, cls_run, tmp_path):
    page, errors = open_report(browser, cls_run.root / "report.html")
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


def test_segmentation_report_renders_offline_with_the_numbers_of_metrics_json(browser, seg_run, tmp_path):
    page, errors = open_report(browser, seg_run.root / "report.html")
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
