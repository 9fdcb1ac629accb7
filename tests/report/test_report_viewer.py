"""A segmentation run's report.html opened from disk shows its 3D cases in the viewer (NiiVue inlined): the
canvases draw non-blank slices, nothing is fetched, and the prediction and reference masks toggle, drawn on the
voxels the evaluation saved (headless chromium, WebGL on SwiftShader)."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.report import viewer
from tests import viewer_gl as gl

pytestmark = pytest.mark.browser


def test_the_segmentation_report_shows_its_cases_in_the_3d_viewer_offline(gl_browser, seg_run, tmp_path):
    if not viewer.installed():
        pytest.skip(viewer.NOT_INSTALLED)
    report = seg_run.root / "report.html"
    page, errors = gl.open_page(gl_browser, report.resolve().as_uri(), ("file:", "data:", "blob:"), (1500, 1000))
    ids = page.eval_on_selector_all("#viewer .medlens-viewer", "els => els.map(e => e.id)")
    assert ids == ["viewer-worst", "viewer-median", "viewer-best"]
    for ident in ids:
        gl.wait_ready(page, f"#{ident}")
        stats = page.evaluate(gl.CANVAS_STATS, f"#{ident}")
        assert stats["levels"] > 30 and stats["lit"] > 0.05 * stats["pixels"], (ident, stats)
    toggles = page.eval_on_selector_all("#viewer-worst .mv-toggle", "els => els.map(e => e.dataset.key)")
    assert toggles == ["reference", "predicted"]

    # the worst case's reference mask (what the evaluation read) lands on its voxels, and toggles
    before = page.evaluate(gl.CANVAS_STATS, "#viewer-worst")
    page.click("#viewer-worst .mv-toggle[data-key=predicted]")  # prediction off: the reference alone
    reference = reference_mask_of_worst_case(seg_run)
    if reference is not None:
        image, mask = reference
        inside, outside = gl.inside_and_outside(mask)
        on_inside, on_outside = page.evaluate(gl.PIXELS_AT, ["#viewer-worst", [gl.world_ras(image, inside),
                                                                              gl.world_ras(image, outside)]])
        assert on_inside[1] > on_inside[0] + 20 and on_inside[1] > on_inside[2] + 20, on_inside  # green #2ca02c
        assert gl.is_grey(on_outside), on_outside
        page.click("#viewer-worst .mv-toggle[data-key=reference]")
        off_inside = page.evaluate(gl.PIXELS_AT, ["#viewer-worst", [gl.world_ras(image, inside)]])[0]
        assert gl.is_grey(off_inside), off_inside
    else:
        assert page.evaluate(gl.CANVAS_STATS, "#viewer-worst")["checksum"] != before["checksum"]
    page.screenshot(path=str(gl.artifact(tmp_path, "report_viewer.png")), full_page=True)
    page.close()
    assert errors == []


def reference_mask_of_worst_case(seg_run):
    """``(image, mask of the first class)`` of the report's worst case as the dataset holds them, or ``None`` when
    its reference has no region thick enough to probe."""
    import csv

    from medlens.config import read_plan
    from medlens.data.prepared import open_config_dataset
    from medlens.tasks.segmentation.evaluate import chosen_cases
    from medlens.tasks.segmentation.infer import class_labels

    config, _ = read_plan(seg_run.root / "plan.yaml")
    dataset = open_config_dataset(config)
    labels = class_labels(config)
    names = list(labels.values())
    with open(next(seg_run.root.glob("segmentation_*.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    worst = dict(chosen_cases(rows, names))["worst"]["case_id"]
    case = next(c for c in dataset.cases if c.case_id == worst)
    image, mask = dataset.load_image(case), dataset.load_mask(case).array[0] == next(iter(labels))
    core = mask.copy()
    for axis in (0, 1, 2):
        core &= np.roll(mask, 1, axis) & np.roll(mask, -1, axis)
    return (image, mask) if core.any() else None


def test_a_heat_map_shows_above_its_threshold_and_boxes_as_outlines(gl_browser, tmp_path):
    """The helper's other overlays on a synthetic volume in a page built like the report's (file://, inlined)."""
    if not viewer.installed():
        pytest.skip(viewer.NOT_INSTALLED)
    from medlens.io import Image, identity_direction

    image = Image(np.tile(np.linspace(0, 100, 40, dtype=np.float32)[:, None, None], (1, 1, 30, 12)), (1.0, 1.0, 2.0),
                  (5.0, -3.0, 10.0), identity_direction(3))
    heat = np.full(image.spatial_shape, 0.1, dtype=np.float32)
    heat[8:18, 8:18, 3:9] = 0.6
    box = {"label": "nodule", "score": 0.9, "box": [24, 4, 2, 36, 16, 10]}
    volumes = viewer.viewer_volumes(image, [viewer.heat_overlay(heat),
                                            viewer.boxes_overlay([box], image.spatial_shape, ["nodule"])])
    page_file = tmp_path / "viewer.html"
    page_file.write_text("<!doctype html><html><body>" + viewer.viewer_block(volumes, "case") +
                         viewer.viewer_scripts() + "</body></html>", encoding="utf-8")
    page, errors = gl.open_page(gl_browser, page_file.as_uri(), ("file:", "data:", "blob:"), (900, 800))
    gl.wait_ready(page, "#case")
    hot, cool, face, inside = (gl.world_ras(image, v) for v in ((12, 12, 5), (30, 25, 5), (24, 10, 5), (30, 10, 5)))
    colours = page.evaluate(gl.PIXELS_AT, ["#case", [hot, cool, face, inside]])
    assert colours[0][0] > colours[0][2] + 40, colours  # warm colours where the map (0.6) is above 0.3
    assert gl.is_grey(colours[1]) and gl.is_grey(colours[3]), colours  # below the threshold; inside the box
    assert np.abs(np.subtract(colours[2], [31, 119, 180])).max() <= 12, colours  # the outline in tab10 blue, opaque
    page.eval_on_selector("#case .mv-threshold", "el => { el.value = 0.7; el.dispatchEvent(new Event('input')); }")
    assert gl.is_grey(page.evaluate(gl.PIXELS_AT, ["#case", [hot]])[0])  # 0.6 is now below the threshold
    page.click("#case .mv-toggle[data-key=boxes]")
    assert gl.is_grey(page.evaluate(gl.PIXELS_AT, ["#case", [face]])[0])
    page.close()
    assert errors == []
