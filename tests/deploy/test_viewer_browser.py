"""The 3D viewer (NiiVue) in the service's web page, in headless chromium with WebGL on SwiftShader.

A real service over the demo segmentation bundle: upload a volume, the canvas shows non-blank slices, the mask
toggles, and the mask is drawn on the voxels the model segmented (read back with ``gl.readPixels`` at the canvas
point NiiVue maps a voxel's world position to). Where the variable CI is set, a missing browser fails.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from medlens.deploy import Predictor
from medlens.io import read_image
from medlens.report import viewer
from tests import viewer_gl as gl

pytestmark = pytest.mark.browser



@pytest.fixture(scope="module")
def seg_server(serve, seg_bundle):
    return serve(Predictor.from_bundle(seg_bundle))


def test_the_viewers_scripts_are_served_with_caching_headers(seg_server):
    if not viewer.installed():
        pytest.skip(viewer.NOT_INSTALLED)
    response = httpx.get(seg_server.url + "/static/niivue.js", timeout=30)
    assert response.status_code == 200 and len(response.content) > 1_000_000
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "public, max-age=86400"
    helper = httpx.get(seg_server.url + "/static/medlens_viewer.js", timeout=30)
    assert helper.status_code == 200 and "medlensViewer" in helper.text
    assert httpx.get(seg_server.url + "/", timeout=30).headers["cache-control"] == "no-store"


def test_an_uploaded_volume_shows_in_niivue_with_the_mask_on_the_segmented_voxels(gl_browser, seg_server, seg_bundle,
                                                                                  demo_dir, tmp_path):
    if not viewer.installed():
        pytest.skip(viewer.NOT_INSTALLED)
    source = demo_dir / "new_volumes" / "lesion_new.nii.gz"
    page, errors = gl.open_page(gl_browser, seg_server.url + "/", (seg_server.url, "data:", "blob:"))
    page.wait_for_selector("#model:has-text('segmentation')")
    page.set_input_files("#file", str(source))
    gl.wait_ready(page, "#viewer")
    assert page.is_visible("#viewer canvas") and page.is_hidden("#viewer-missing")

    stats = page.evaluate(gl.CANVAS_STATS, "#viewer")
    assert stats["levels"] > 50 and stats["lit"] > 0.1 * stats["pixels"], stats  # slices drawn, not a blank canvas

    image = read_image(source)
    mask = Predictor.from_bundle(seg_bundle).predict(source)["mask"].array[0] == 1
    inside, outside = gl.inside_and_outside(mask)
    points = [gl.world_ras(image, inside), gl.world_ras(image, outside)]
    on_inside, on_outside = page.evaluate(gl.PIXELS_AT, ["#viewer", points])
    assert on_inside[2] > on_inside[0] + 20, on_inside  # the mask's blue (#1f77b4) blended over the grey
    assert gl.is_grey(on_outside), on_outside  # no mask there: the grey image only

    page.click("#viewer .mv-toggle[data-key=mask]")  # the mask off: the same voxel in grey
    off_inside, off_outside = page.evaluate(gl.PIXELS_AT, ["#viewer", points])
    assert gl.is_grey(off_inside) and off_inside != on_inside, (off_inside, on_inside)
    assert off_outside == on_outside
    page.click("#viewer .mv-toggle[data-key=mask]")
    assert page.evaluate(gl.PIXELS_AT, ["#viewer", points])[0] == on_inside

    shot = gl.artifact(tmp_path, "service_viewer.png")
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    assert errors == []


def test_without_niivue_the_page_says_how_to_install_it_and_keeps_the_2d_view(gl_browser, seg_server, demo_dir,
                                                                             monkeypatch):
    monkeypatch.setattr(viewer, "NIIVUE_JS", Path("/nonexistent/niivue.umd.js"))  # as before `make viewer`
    assert httpx.get(seg_server.url + "/static/niivue.js", timeout=30).json() == {"error": viewer.NOT_INSTALLED}
    page, errors = gl.open_page(gl_browser, seg_server.url + "/", (seg_server.url, "data:", "blob:"))
    page.wait_for_selector("#model:has-text('segmentation')")
    page.set_input_files("#file", str(demo_dir / "new_volumes" / "lesion_new.nii.gz"))
    page.wait_for_selector("#viewer-missing:not([hidden])", timeout=60_000)
    assert page.text_content("#viewer-missing").startswith("3D viewer not installed: run make viewer")
    assert page.is_hidden("#viewer-figure") and page.text_content("#label") == "mask"  # the 2D answer as today
    page.close()
    assert errors == []


def test_a_2d_image_keeps_the_2d_view(gl_browser, live, demo_dir):
    server = live()
    page, errors = gl.open_page(gl_browser, server.url + "/", (server.url, "data:", "blob:"))
    page.wait_for_selector("#model:has-text('binary')")
    page.set_input_files("#file", str(demo_dir / "new_studies" / "study_01.png"))
    page.wait_for_selector("#heatmap-figure:not([hidden])", timeout=60_000)
    assert page.is_hidden("#viewer-figure") and page.is_hidden("#viewer-missing")
    page.close()
    assert errors == []
