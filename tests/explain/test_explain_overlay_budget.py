"""Heat-map overlays whatever geometry a file claims: bounded stretch and panel size, corrupt spacing read
as square pixels, and the work budget checked before a panel is drawn."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medlens.budget import WorkBudget, work_budget
from medlens.errors import BudgetError
from medlens.explain import map_on_grid, overlay_png, overlay_rgb
from medlens.explain.overlay import DISPLAY_PX, MAX_PANEL_PX, MAX_STRETCH, display_aspects, panel_size
from medlens.io import Image, identity_direction

NAN, INF = float("nan"), float("inf")


def image_2d(spacing_mm) -> Image:
    array = np.random.default_rng(0).integers(0, 255, (1, 64, 48), dtype=np.uint8)
    return Image(array, spacing_mm, (0.0, 0.0), identity_direction(2))


def hot_map(shape) -> np.ndarray:
    cam = np.zeros(shape, np.float32)
    cam[tuple(n // 3 for n in shape)] = 1.0
    return cam


def test_a_1000_to_1_spacing_is_stretched_by_at_most_max_stretch_and_stays_small():
    start = time.perf_counter()
    wide = overlay_rgb(image_2d((1000.0, 1.0)).array, hot_map((64, 48)), spacing_mm=(1000.0, 1.0))
    tall = overlay_rgb(image_2d((1.0, 1000.0)).array, hot_map((64, 48)), spacing_mm=(1.0, 1000.0))
    assert time.perf_counter() - start < 1.0
    # 64 columns stretched 20-fold (the clamp) against 48 rows: 1280 : 48, so the long side is capped
    assert wide.shape == (round(48 * MAX_PANEL_PX / 1280), MAX_PANEL_PX, 3)
    # 48 rows stretched 20-fold against 64 columns: 960 : 64, the short side at DISPLAY_PX
    assert tall.shape == (960 * DISPLAY_PX // 64, DISPLAY_PX, 3)


def test_a_legitimate_anisotropic_ct_keeps_its_true_proportions():
    # 0.7 mm in plane, 5 mm slices: 7:1 is under the clamp, so coronal and sagittal panels keep it exactly
    assert display_aspects((0.7, 0.7, 5.0), 3) == [(1.0, 1.0), pytest.approx((5.0 / 0.7, 1.0)),
                                                    pytest.approx((5.0 / 0.7, 1.0))]
    assert display_aspects((1.0, 1000.0), 2) == [(MAX_STRETCH, 1.0)]
    assert display_aspects((1000.0, 1.0), 2) == [(1 / MAX_STRETCH, 1.0)]
    assert panel_size((20, 40), (5.0 / 0.7, 1.0)) == (round(20 * 5 / 0.7 * DISPLAY_PX / 40), DISPLAY_PX)


@pytest.mark.parametrize("spacing", [(NAN, 1.0), (NAN, NAN), (0.0, 1.0), (-1.0, 1.0), (INF, 1.0), (1.0,),
                                     (1.0, 1.0, 1.0), (), None])
def test_corrupt_or_mismatched_spacing_is_drawn_with_square_pixels(spacing):
    rgb = overlay_rgb(image_2d((1.0, 1.0)).array, hot_map((64, 48)), spacing_mm=spacing)
    assert rgb.shape == (DISPLAY_PX, round(64 * DISPLAY_PX / 48), 3)


@pytest.mark.parametrize("spacing", [(NAN, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, -3.0), (1.0, 1.0, INF), (1.0, 1.0)])
def test_corrupt_3d_spacing_gives_three_square_panels(spacing):
    rgb = overlay_rgb(np.ones((1, 10, 10, 10), np.float32), hot_map((10, 10, 10)), spacing_mm=spacing)
    assert rgb.shape == (DISPLAY_PX, 3 * DISPLAY_PX + 2 * 4, 3)


def test_overlay_png_of_an_image_read_with_nan_spacing_does_not_raise():
    image = image_2d((NAN, 1.0))  # what a NaN PNG geometry chunk or NIfTI pixdim reads as
    png = overlay_png(image, map_on_grid(image, hot_map((28, 28))))
    assert png.startswith(b"\x89PNG")


def test_a_one_pixel_wide_image_keeps_its_panel_within_max_panel_px():
    rgb = overlay_rgb(np.zeros((1, 1, 30000), np.uint8), hot_map((1, 30000)))
    assert rgb.shape == (MAX_PANEL_PX, 1, 3)


def test_nan_in_the_image_or_the_map_is_drawn_not_propagated():
    image = np.full((1, 8, 8), NAN, np.float32)
    cam = np.full((8, 8), NAN, np.float32)
    rgb = overlay_rgb(image, cam)
    assert rgb.dtype == np.uint8 and rgb.max() == 0  # black: no image, no map


def test_each_panel_is_checked_against_the_budget_before_it_is_drawn():
    image, cam = np.zeros((1, 64, 48), np.float32), hot_map((64, 48))
    size = 3 * DISPLAY_PX * round(64 * DISPLAY_PX / 48)  # RGB of the enlarged panel
    with work_budget(WorkBudget(max_voxels=size, hint="a hint")):
        assert overlay_rgb(image, cam).size == size
    with work_budget(WorkBudget(max_voxels=size - 1, hint="a hint")), pytest.raises(
            BudgetError, match=rf"drawing the heat-map overlay would make {size:,} voxels \(256 x 341 x 3\).*a hint"):
        overlay_rgb(image, cam)


def test_the_map_is_resampled_onto_the_image_grid_within_the_budget():
    image = image_2d((1.0, 1.0))
    with work_budget(WorkBudget(max_voxels=64 * 48, hint="h")):
        assert map_on_grid(image, hot_map((28, 28))).shape == (64, 48)
    with work_budget(WorkBudget(max_voxels=64 * 48 - 1, hint="h")), pytest.raises(
            BudgetError, match=r"resampling the heat map onto the image's grid would make 3,072 voxels"):
        map_on_grid(image, hot_map((28, 28)))
