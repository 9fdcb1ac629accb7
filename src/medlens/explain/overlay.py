"""Heat maps drawn over the image a person knows: PNG overlays, and three orthogonal slices in 3D.

Arrays follow medlens' order, ``(C, X, Y[, Z])`` with X the column index, so a 2D image is shown
as ``array[0].T`` (rows = Y, as it was written to PNG). A 3D volume shows the axial (X-Y), coronal
(X-Z) and sagittal (Y-Z) slices through the hottest voxel of the map, each stretched by the voxel
spacing so anatomy keeps its proportions.

What an overlay may cost is bounded whatever the file claims: the stretch for non-square pixels is
clamped (``MAX_STRETCH``), a panel's longer side too (``MAX_PANEL_PX``), corrupt spacing is read as
square pixels, and each panel is checked against the work budget before it is drawn. Only the three
slices shown are converted for display, never the whole volume.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from medlens.budget import check_voxels

DISPLAY_PX = 256  # the shorter side of a panel is enlarged (or shrunk) to this many pixels
MAX_PANEL_PX = 16 * DISPLAY_PX  # ... unless its longer side would pass this many: a 1 x 30000 image
MAX_STRETCH = 20.0  # the most a pixel is stretched for its spacing (0.3 x 6 mm MRI fits; 1000:1 does not)
ALPHA = 0.45  # how much of the heat map shows over the image at its hottest
_RANGE_SAMPLE = 1 << 22  # the display range of a larger image is judged on an even subsample


def overlay_rgb(image: np.ndarray, cam: np.ndarray, *, spacing_mm: Sequence[float] | None = None,
                colormap: str = "jet") -> np.ndarray:
    """The image in grey (or its own colours) with ``cam`` blended over it.

    Args:
        image: ``(C, *spatial)``, any intensity range (shown between its 1st and 99th percentile);
            three channels are shown as RGB, otherwise the first channel in grey.
        cam: ``(*spatial)`` in [0, 1].
        spacing_mm: voxel size; panels are stretched to square millimetres when given (by at most
            ``MAX_STRETCH``). A spacing that is not one positive finite size per axis is ignored
            (square pixels), as for an image without geometry.

    Returns:
        uint8 ``(H, W, 3)``; in 3D the axial, coronal and sagittal panels side by side. Each panel's
        shorter side is ``DISPLAY_PX`` and its longer at most ``MAX_PANEL_PX``, whatever the input.

    Raises:
        ValueError: ``image`` and ``cam`` differ in spatial shape (a caller's mistake, not the input's).
        BudgetError: a panel would be past the work budget in force (checked before it is drawn).
    """
    image = np.asarray(image)
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if image.shape[1:] != cam.shape:
        raise ValueError(f"image {image.shape[1:]} and heat map {cam.shape} must share the spatial shape")
    channels = image[:3] if image.shape[0] == 3 else image[:1]
    low, high = display_range(channels)
    shown = np.moveaxis(channels, 0, -1)  # a view, (*spatial, 1 or 3): only the panels are converted
    panels = ([(np.swapaxes(shown, 0, 1), cam.T)] if cam.ndim == 2
              else orthogonal_slices(shown, cam, hottest_point(cam)))
    aspects = display_aspects(spacing_mm, cam.ndim)
    sized = []
    for (base, heat), aspect in zip(panels, aspects):
        size = panel_size(base.shape[:2], aspect)
        check_voxels((*size, 3), "drawing the heat-map overlay")
        sized.append(_enlarge(_blend(_to_rgb(base, low, high), heat, colormap), size))
    return _side_by_side(sized)


def display_range(values: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentile of the finite ``values`` (``(0, 1)`` when there are none)."""
    flat = values.reshape(-1)
    if flat.size > _RANGE_SAMPLE:
        flat = flat[:: flat.size // _RANGE_SAMPLE + 1]
    flat = flat[np.isfinite(flat)]
    if not flat.size:
        return 0.0, 1.0
    low, high = np.percentile(flat, [1, 99])
    return float(low), float(high)


def _to_rgb(panel: np.ndarray, low: float, high: float) -> np.ndarray:
    """``(rows, cols, 1 or 3)`` of any dtype -> float ``(rows, cols, 3)`` in [0, 1], NaN black."""
    scaled = np.clip((panel.astype(np.float32) - low) / max(high - low, 1e-8), 0, 1)
    scaled = np.nan_to_num(scaled, nan=0.0)
    return np.repeat(scaled, 3, axis=-1) if scaled.shape[-1] == 1 else scaled


def hottest_point(cam: np.ndarray) -> tuple[int, ...]:
    """Index of the map's maximum (the centre of the volume when the map is all zero)."""
    if not cam.size or not cam.max() > 0:
        return tuple(n // 2 for n in cam.shape)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(cam)), cam.shape))


def orthogonal_slices(base: np.ndarray, cam: np.ndarray, point: Sequence[int]):
    """``[(image (rows, cols, C), cam (rows, cols))]`` for the axial, coronal and sagittal planes through
    ``point``, from ``base (X, Y, Z, C)`` and ``cam (X, Y, Z)``.

    Rows are Y (axial) or Z (coronal, sagittal), Z shown upwards.
    """
    x, y, z = point
    take = [lambda a: a[:, :, z], lambda a: a[:, y, :], lambda a: a[x, :, :]]
    panels = []
    for i, cut in enumerate(take):
        b, c = np.swapaxes(cut(base), 0, 1), cut(cam).T
        if i:  # coronal / sagittal: Z up
            b, c = b[::-1], c[::-1]
        panels.append((b, c))
    return panels


def _blend(base: np.ndarray, cam: np.ndarray, colormap: str) -> np.ndarray:
    """``base (rows, cols, 3)`` in display orientation, with ``cam (rows, cols)`` blended over it."""
    from matplotlib import colormaps

    if cam.shape != base.shape[:2]:
        raise ValueError(f"panel {base.shape[:2]} and map {cam.shape} differ")
    colour = colormaps[colormap](np.clip(cam, 0, 1))[..., :3]
    weight = ALPHA * np.clip(cam, 0, 1)[..., None]
    return (255 * ((1 - weight) * base + weight * colour)).round().astype(np.uint8)


def display_aspects(spacing_mm: Sequence[float] | None, dims: int) -> list[tuple[float, float]]:
    """(row, column) pixel size of each panel, in mm, their ratio clamped to ``MAX_STRETCH``.

    ``spacing_mm`` that is missing, of another length than ``dims``, or not positive and finite
    everywhere (NaN, 0, -1, inf from a corrupt header) counts as unknown: square pixels.
    """
    spacing = _usable_spacing(spacing_mm, dims)
    if dims == 2:
        pairs = [(spacing[1], spacing[0])]  # 2D panels are transposed at the end: rows = Y
    else:
        sx, sy, sz = spacing
        pairs = [(sy, sx), (sz, sx), (sz, sy)]
    return [(min(max(rows / cols, 1 / MAX_STRETCH), MAX_STRETCH), 1.0) for rows, cols in pairs]


def _usable_spacing(spacing_mm: Sequence[float] | None, dims: int) -> tuple[float, ...]:
    square = (1.0,) * dims
    if spacing_mm is None:
        return square
    try:
        spacing = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        return square
    if len(spacing) != dims or not all(math.isfinite(s) and s > 0 for s in spacing):
        return square
    return spacing


def panel_size(shape: tuple[int, int], aspect: tuple[float, float]) -> tuple[int, int]:
    """``(height, width)`` in display pixels of a ``(rows, cols)`` panel whose pixels are ``aspect`` mm.

    The shorter side becomes ``DISPLAY_PX`` unless the longer would then pass ``MAX_PANEL_PX``.
    """
    height, width = shape[0] * aspect[0], shape[1] * aspect[1]
    factor = min(DISPLAY_PX / max(min(height, width), 1e-8), MAX_PANEL_PX / max(height, width, 1e-8))
    return max(int(round(height * factor)), 1), max(int(round(width * factor)), 1)


def _enlarge(panel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour zoom of ``panel (rows, cols, 3)`` to ``size = (height, width)``."""
    from PIL import Image as PILImage

    return np.asarray(PILImage.fromarray(panel).resize((size[1], size[0]), PILImage.NEAREST))


def _side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels]
    return np.concatenate(padded, axis=1)[:, :-4] if len(panels) > 1 else padded[0][:, :-4]


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG-encode ``uint8 (H, W, 3)``."""
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def map_on_grid(image, cam: np.ndarray) -> np.ndarray:
    """A map of the network's grid ``(*input_size)`` resampled onto ``image``'s own grid (an
    :class:`~medlens.io.Image`), in [0, 1]."""
    from medlens.transforms.volume import resample

    on_grid = resample(cam[None].astype(np.float32), image.spatial_shape,
                       what="resampling the heat map onto the image's grid")
    return np.clip(on_grid[0], 0, 1)


def overlay_png(image, cam_on_grid: np.ndarray) -> bytes:
    """The PNG overlay of a map on ``image`` as it was read (three orthogonal slices in 3D)."""
    return png_bytes(overlay_rgb(image.array, cam_on_grid, spacing_mm=image.spacing_mm))
