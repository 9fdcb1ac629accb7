"""Explanations: class activation maps (MONAI Grad-CAM / Grad-CAM++), overlays and a sanity check.

>>> maps = compute_cams(model, images)                     # (N, *spatial) in [0, 1]
>>> png = png_bytes(overlay_rgb(images[0], maps[0]))       # 2D overlay, or three slices in 3D
>>> randomisation_check(model, randomised, images)         # do the maps depend on what was learnt?
"""

from __future__ import annotations

from medlens.explain.cam import METHODS, compute_cams, normalize_maps, predicted_classes
from medlens.explain.overlay import hottest_point, map_on_grid, overlay_png, overlay_rgb, png_bytes
from medlens.explain.sanity import randomisation_check

__all__ = ["METHODS", "compute_cams", "hottest_point", "map_on_grid", "normalize_maps", "overlay_png", "overlay_rgb",
           "png_bytes", "predicted_classes", "randomisation_check"]
