"""The service's web page in headless chromium: upload a PNG, the prediction and the heat map appear.

Drives the system chromium through playwright (never `playwright install`). Where the variable CI
is set, a missing browser fails instead of skipping.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

TOKEN = "test-token-7d1f"

pytestmark = pytest.mark.browser


def wait_until_decoded(page, selector: str, timeout_s: float = 20) -> None:
    """Poll from Python: the page's CSP forbids the eval that ``wait_for_function`` relies on."""
    deadline = time.time() + timeout_s
    while not page.eval_on_selector(selector, "i => i.complete && i.naturalWidth > 0"):
        assert time.time() < deadline, f"{selector} did not decode within {timeout_s} s"
        time.sleep(0.05)


def test_uploading_a_png_shows_label_confidence_probabilities_and_the_heat_map(open_watched, live, predictor,
                                                                               demo_dir, tmp_path):
    server = live(token=TOKEN)
    page, errors = open_watched(server.url + "/", (server.url, "data:", "blob:"))
    page.wait_for_selector("#model:has-text('token')")
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.wait_for_selector("#model:has-text('binary')")
    study = demo_dir / "new_studies" / "study_01.png"
    page.set_input_files("#file", str(study))
    page.wait_for_selector("#heatmap-figure:not([hidden])", timeout=60_000)
    wait_until_decoded(page, "#heatmap-img")
    expected = predictor.predict(study)
    assert page.text_content("#label") == expected["label"]
    assert page.text_content("#confidence") == f"{100 * expected['confidence']:.1f} %"
    rows = page.eval_on_selector("#probabilities", "t => [...t.tBodies[0].rows].map(r => [r.cells[0].textContent, "
                                                   "r.cells[2].textContent])")
    assert rows == [[name, f"{p:.3f}"] for name, p in expected["probabilities"].items()]
    sizes = page.eval_on_selector_all(".images img", "imgs => imgs.map(i => [i.id, i.naturalWidth])")
    assert dict(sizes)["preview"] > 0 and dict(sizes)["heatmap-img"] > 0
    assert page.is_hidden("#error")
    shot = Path(os.environ.get("MEDLENS_TEST_ARTIFACTS") or tmp_path) / "service_page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert errors == []


def test_a_refused_upload_shows_the_servers_message(open_watched, live, tmp_path):
    server = live()
    page, errors = open_watched(server.url + "/", (server.url, "data:", "blob:"))
    page.wait_for_selector("#model:has-text('binary')")
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"this is not a PNG")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error", state="visible")
    assert "unsupported upload" in page.text_content("#error")
    # the 415 itself is the only console message chromium logs: the failed resource
    assert all("415" in e for e in errors), errors
