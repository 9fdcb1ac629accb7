"""Heat maps drawn over the image a person knows: PNG overlays, and three orthogonal slices in 3D.

Arrays follow medlens' order, ``(C, X, Y[, Z])`` with X the column index, so a 2D image is shown
as ``array[0].T`` (rows = Y, as it was written to PNG). A 3D volume shows the axial (X-Y), coronal
(X-Z) and sagittal (Y-Z) slices through the hottest voxel of the map, each stretched by the voxel
spacing so anatomy keeps its proportions.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

DISPLAY_PX = 256  # the shorter side of a panel is enlarged to at least this many pixels
ALPHA = 0.45  # how much of the heat map shows over the image at its hottest


def overlay_rgb(image: np.ndarray, cam: np.ndarray, *, spacing_mm: Sequence[float] | None = None,
                colormap: str = "jet") -> np.ndarray:
    """The image in grey (or its own colours) with ``cam`` blended over it.

    Args:
        image: ``(C, *spatial)``, any intensity range (shown between its 1st and 99th percentile);
            three channels are shown as RGB, otherwise the first channel in grey.
        cam: ``(*spatial)`` in [0, 1].
        spacing_mm: voxel size; panels are stretched to square millimetres when given.

    Returns:
        uint8 ``(H, W, 3)``; in 3D the axial, coronal and sagittal panels side by side.
    """
    image, cam = np.asarray(image, dtype=np.float32), np.asarray(cam, dtype=np.float32)
    if image.shape[1:] != cam.shape:
        raise ValueError(f"image {image.shape[1:]} and heat map {cam.shape} must share the spatial shape")
    base = display_rgb(image)
    panels = ([(np.swapaxes(base, 0, 1), cam.T)] if cam.ndim == 2
              else orthogonal_slices(base, cam, hottest_point(cam)))
    spacing = tuple(spacing_mm) if spacing_mm is not None else (1.0,) * cam.ndim
    drawn = [_blend(b, c, colormap) for b, c in panels]
    sized = [_enlarge(p, aspect) for p, aspect in zip(drawn, _aspects(spacing, cam.ndim))]
    return _side_by_side(sized)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """``(C, *spatial)`` -> float ``(*spatial, 3)`` in [0, 1]: RGB for 3 channels, else channel 0 in grey."""
    channels = image[:3] if image.shape[0] == 3 else image[:1]
    low, high = np.percentile(channels, [1, 99]) if channels.size else (0.0, 1.0)
    scaled = np.clip((channels - low) / max(high - low, 1e-8), 0, 1)
    rgb = np.repeat(scaled, 3, axis=0) if scaled.shape[0] == 1 else scaled
    return np.moveaxis(rgb, 0, -1)


def hottest_point(cam: np.ndarray) -> tuple[int, ...]:
    """Index of the map's maximum (the centre of the volume when the map is all zero)."""
    if not cam.size or cam.max() <= 0:
        return tuple(n // 2 for n in cam.shape)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(cam)), cam.shape))


def orthogonal_slices(base: np.ndarray, cam: np.ndarray, point: Sequence[int]):
    """``[(rgb (rows, cols, 3), cam (rows, cols))]`` for the axial, coronal and sagittal planes through ``point``.

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


def _aspects(spacing: Sequence[float], dims: int) -> list[tuple[float, float]]:
    """(row, column) pixel size of each panel, in mm."""
    if dims == 2:
        return [(spacing[1], spacing[0])]  # 2D panels are transposed at the end: rows = Y
    sx, sy, sz = spacing
    return [(sy, sx), (sz, sx), (sz, sy)]


def _enlarge(panel: np.ndarray, aspect: tuple[float, float]) -> np.ndarray:
    """Nearest-neighbour zoom so the shorter side reaches ``DISPLAY_PX`` and pixels are square in mm."""
    from PIL import Image as PILImage

    rows, cols = panel.shape[:2]
    height, width = rows * aspect[0], cols * aspect[1]
    factor = DISPLAY_PX / max(min(height, width), 1e-8)
    size = (max(int(round(width * factor)), 1), max(int(round(height * factor)), 1))
    return np.asarray(PILImage.fromarray(panel).resize(size, PILImage.NEAREST))


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

    return np.clip(resample(cam[None].astype(np.float32), image.spatial_shape)[0], 0, 1)


def overlay_png(image, cam_on_grid: np.ndarray) -> bytes:
    """The PNG overlay of a map on ``image`` as it was read (three orthogonal slices in 3D)."""
    return png_bytes(overlay_rgb(image.array, cam_on_grid, spacing_mm=image.spacing_mm))
