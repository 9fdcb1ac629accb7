"""Driving the 3D viewer (NiiVue) in headless chromium with software WebGL2, for the viewer's browser tests.

The browser is the ``gl_browser`` fixture (tests/conftest.py: WebGL2 on SwiftShader, tests/chromium.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests import chromium

#: colours at world points (RAS mm) in the axial plane through each, read from the drawing buffer right after a draw;
#: the point goes through the image's full affine (convertMM2Frac with isForceSliceMM: NiiVue's own mm2frac uses an
#: oblique image's nearest orthogonal frame, which its voxel-aligned slices are drawn in)
PIXELS_AT = """([selector, points]) => {
  const nv = document.querySelector(selector).medlens.nv, gl = nv.gl;
  nv.opts.crosshairWidth = 0;
  nv.setSliceType(nv.sliceTypeAxial);
  return points.map((mm) => {
    const frac = nv.volumes[0].convertMM2Frac(mm, true);
    nv.scene.crosshairPos = [frac[0], frac[1], frac[2]];
    nv.drawScene();
    const [x, y] = nv.frac2canvasPos(frac), px = new Uint8Array(4);
    gl.readPixels(Math.round(x), gl.drawingBufferHeight - 1 - Math.round(y), 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
    return [...px.slice(0, 3)];
  });
}"""

#: the drawing buffer's distinct colours, how many pixels are not background, and a checksum (just after a draw)
CANVAS_STATS = """(selector) => {
  const nv = document.querySelector(selector).medlens.nv, gl = nv.gl;
  nv.drawScene();
  const w = gl.drawingBufferWidth, h = gl.drawingBufferHeight, px = new Uint8Array(w * h * 4);
  gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
  const levels = new Set();
  let lit = 0, sum = 0;
  for (let i = 0; i < px.length; i += 4) {
    levels.add(px[i] + 256 * px[i + 1] + 65536 * px[i + 2]);
    if (px[i] + px[i + 1] + px[i + 2] > 30) lit++;
    sum = (sum * 31 + px[i] + 7 * px[i + 1] + 13 * px[i + 2]) % 1000000007;
  }
  return { levels: levels.size, lit: lit, pixels: w * h, checksum: sum };
}"""


def open_page(browser, url: str, allowed: tuple[str, ...], size=(1200, 1100)):
    """``(page, errors)`` at the viewer tests' default size (tests/chromium.py ``open_page``)."""
    return chromium.open_page(browser, url, allowed, size)


def wait_ready(page, selector: str, timeout_s: float = 60) -> None:
    """Until the viewer in ``selector`` has drawn its volumes (polled from Python: the service page's CSP forbids
    the eval ``wait_for_function`` needs); a shown ``#error`` fails at once with its text."""
    deadline = time.time() + timeout_s
    while page.get_attribute(selector, "data-ready") != "true":
        if page.query_selector("#error") and page.is_visible("#error"):
            pytest.fail(page.text_content("#error"))
        assert time.time() < deadline, f"{selector} did not show the viewer within {timeout_s} s"
        time.sleep(0.1)


def world_ras(image, voxel) -> list[float]:
    """The RAS world point (what NiiVue shows in) of ``voxel`` (X, Y, Z) of a medlens (LPS) image."""
    spacing, direction = np.asarray(image.spacing_mm), np.asarray(image.direction).reshape(3, 3)
    lps = np.asarray(image.origin_mm) + direction @ (spacing * np.asarray(voxel, dtype=float))
    return [float(-lps[0]), float(-lps[1]), float(lps[2])]


def inside_and_outside(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A mask voxel whose 6 face neighbours are in the mask too (a display a voxel off still shows the mask), and
    the voxel of its axial slice farthest from it."""
    core = mask.copy()
    for axis in (0, 1, 2):
        core &= np.roll(mask, 1, axis) & np.roll(mask, -1, axis)
    assert core.any(), "no mask region thick enough to probe"
    points = np.argwhere(core)
    inside = tuple(int(v) for v in points[len(points) // 2])
    far = np.argwhere(~mask[..., inside[2]])
    distance = np.abs(far - np.asarray(inside[:2])).sum(axis=1)
    return inside, (*(int(v) for v in far[np.argmax(distance)]), inside[2])


def is_grey(rgb, tolerance: int = 6) -> bool:
    return max(rgb) - min(rgb) <= tolerance


def artifact(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("MEDLENS_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
