"""A segmentation run's report.html opened from disk shows its 3D cases in the viewer (NiiVue inlined): the
canvases draw non-blank slices, nothing is fetched, and the prediction and reference masks toggle, drawn on the
voxels the evaluation saved (headless chromium, WebGL on SwiftShader)."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.report import viewer
from tests import viewer_gl as gl

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def gl_browser():
    with gl.gl_chromium() as browser:
        yield browser


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
