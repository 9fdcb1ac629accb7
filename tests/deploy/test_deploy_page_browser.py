"""The service's web page in headless chromium: upload a PNG, the prediction and the heat map appear.

Drives the system chromium through playwright (never `playwright install`). Where the variable CI
is set, a missing browser fails instead of skipping.
"""

from __future__ import annotations

import base64
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


#: The Content-Security-Policy medlens.deploy.service sends with the page (the boxes must draw under it).
PAGE_CSP = ("default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
            "connect-src 'self'")
DETECTION = {"task": "detection", "model_version": "v-test", "display_threshold": 0.3, "shown": 2,
             "boxes": [{"label": "RBC", "score": 0.4, "box": [100, 0, 150, 30]},
                       {"label": "WBC", "score": 0.91, "box": [20, 10, 60, 50]},
                       {"label": "RBC", "score": 0.1, "box": [0, 0, 5, 5]}]}


def serve_page_answering(browser, answers: list[dict]):
    """A page at http://medlens.test/ holding page.html, whose API answers POST /v1/predict with ``answers`` in turn
    (the JSON contract of a detection and a classification model); returns ``(page, errors, predict URLs)``."""
    from medlens.deploy import service

    html = (Path(service.__file__).with_name("page.html")).read_text(encoding="utf-8")
    model = {"task": "detection", "class_names": ["RBC", "WBC"], "model_version": "v-test",
             "service": {"options": ["overlay"]}}
    asked = []

    def answer(route):
        path = route.request.url.split("medlens.test", 1)[1].split("?")[0]
        if path == "/":
            return route.fulfill(body=html, content_type="text/html", headers={"Content-Security-Policy": PAGE_CSP})
        if path == "/v1/predict":
            asked.append(route.request.url)
            return route.fulfill(json=answers[len(asked) - 1])
        body = {"/healthz": {"status": "ok", "auth": "none"}, "/v1/model": model}.get(path)
        return route.fulfill(json=body) if body else route.fulfill(status=404, json={"error": "no such path"})

    page = browser.new_page(viewport={"width": 1200, "height": 820})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route("http://medlens.test/**", answer)
    page.goto("http://medlens.test/", wait_until="load")
    return page, errors, asked


def test_detection_boxes_are_drawn_over_the_preview_at_the_displayed_scale(browser, tmp_path):
    from PIL import Image as PILImage

    png = tmp_path / "smear.png"
    PILImage.new("RGB", (200, 100), (200, 180, 190)).save(png)
    classification = {"task": "binary", "label": "tumor", "confidence": 0.8, "model_version": "v-test",
                      "probabilities": {"normal": 0.2, "tumor": 0.8}}
    page, errors, asked = serve_page_answering(browser, [DETECTION, classification])
    page.wait_for_selector("#model:has-text('detection')")
    page.set_input_files("#file", str(png))
    page.wait_for_selector("#boxes .box", timeout=20_000)
    assert "overlay=true" not in asked[0]  # a PNG is shown by the browser: the page draws the boxes itself
    assert page.text_content("#label") == "2 boxes"
    assert page.text_content("#confidence-title") == "highest score"
    image = page.eval_on_selector("#preview", "i => { const r = i.getBoundingClientRect(); "
                                              "return [r.x, r.y, r.width, r.height]; }")
    boxes = page.eval_on_selector_all("#boxes .box", "els => els.map(e => { const r = e.getBoundingClientRect(); "
                                                     "return [e.textContent, r.x, r.y, r.width, r.height, "
                                                     "getComputedStyle(e).borderTopColor]; })")
    scale = image[2] / 200  # the preview is shown 256 px wide: 1.28 screen pixels per image pixel
    assert scale == pytest.approx(256 / 200)
    expected = [("WBC 0.91", 20, 10, 40, 40, "rgb(255, 127, 14)"), ("RBC 0.40", 100, 0, 50, 30, "rgb(31, 119, 180)")]
    assert [b[0] for b in boxes] == [e[0] for e in expected]
    for found, (_, x, y, w, h, colour) in zip(boxes, expected):
        assert found[1:5] == pytest.approx([image[0] + x * scale, image[1] + y * scale, w * scale, h * scale],
                                           abs=1.0)
        assert found[5] == colour
    page.screenshot(path=str(Path(os.environ.get("MEDLENS_TEST_ARTIFACTS") or tmp_path) / "service_page_boxes.png"))
    page.set_input_files("#file", str(png))  # the next model answer is a classification: the boxes go
    page.wait_for_selector("#label:has-text('tumor')")
    assert page.eval_on_selector_all("#boxes .box", "els => els.length") == 0
    assert page.text_content("#confidence-title") == "calibrated confidence"
    page.close()
    assert errors == []


def test_an_anomaly_answer_shows_the_decision_score_threshold_and_map(browser, tmp_path):
    from PIL import Image as PILImage

    png = tmp_path / "chest.png"
    PILImage.new("L", (64, 64), 90).save(png)
    red = tmp_path / "map.png"
    PILImage.new("RGB", (64, 64), (255, 0, 0)).save(red)
    anomaly = {"task": "anomaly", "anomaly_score": 2.5, "decision": "anomalous", "threshold": 1.25,
               "model_version": "v-test", "heatmap_png": base64.b64encode(red.read_bytes()).decode()}
    page, errors, _ = serve_page_answering(browser, [anomaly])
    page.wait_for_selector("#model:has-text('detection')")
    page.set_input_files("#file", str(png))
    page.wait_for_selector("#label:has-text('anomalous')")
    assert page.text_content("#confidence-title") == "anomaly score"
    assert page.text_content("#confidence") == "2.500"
    rows = page.eval_on_selector_all("#probabilities tbody tr", "rs => rs.map(r => r.textContent)")
    assert rows == ["anomaly score2.500", "threshold1.250"]
    assert page.text_content("#heatmap-caption") == "anomaly map"
    page.close()
    assert errors == []
