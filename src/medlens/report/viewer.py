"""The 3D viewer (NiiVue) shared by the service's web page and the segmentation report.

NiiVue's browser build is copied into the package by ``make viewer`` (``static/niivue.umd.js``, 2.3 MB,
npm ``@niivue/niivue`` pinned in ``viewer/package-lock.json``); ``static/medlens_viewer.js`` (ours) shows
one volume with its overlays in it: the base image in grey (window / level by NiiVue's right-drag or the
two fields), masks with a label colour table, a heat map with the ``warm`` colour map above a threshold,
boxes as a label volume of outlines; the three planes or one, slice scrolling, one toggle per overlay.

Volumes travel as gzipped NIfTI in base64 (:func:`viewer_volumes`), on the image's own grid or, past
``max_voxels``, on every n-th voxel of it (the same stride for the image and its overlays).

>>> volumes = viewer_volumes(image, overlays=[mask_overlay(mask, {1: "lesion"})])
>>> html = viewer_block(volumes, "case-1") if installed() else fallback_html()
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.io import Image, write_image

STATIC = Path(__file__).with_name("static")
#: NiiVue's browser build (UMD: ``window.niivue.Niivue``), there once ``make viewer`` has run.
NIIVUE_JS = STATIC / "niivue.umd.js"
#: Our helper, ``window.medlensViewer.show(element, volumes)`` (always in the package).
HELPER_JS = STATIC / "medlens_viewer.js"
NOT_INSTALLED = "3D viewer not installed: run make viewer"
#: the service's limit per volume: a 512 x 512 x 200 CT is shown on every second voxel (6.6 M voxels)
SERVICE_MAX_VOXELS = 1 << 23
#: the report's limit per case (about 128 x 128 x 64), so three cases stay a few MB of the report
REPORT_MAX_VOXELS = 1 << 20
#: the report's classes / boxes colours (matplotlib tab10), label value 1 -> the first
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
HEAT_THRESHOLD = 0.3  # the heat map's default lower threshold (the map is in [0, 1])


@dataclass(frozen=True)
class Overlay:
    """One volume drawn over the image.

    Attributes:
        key: its id in the page (``mask``, ``heatmap``, ``boxes``, ``reference``).
        title: the toggle's text.
        kind: ``label`` (integer values, one colour each: masks and box outlines) or ``heat`` (a map in [0, 1]).
        array: ``(X, Y, Z)`` on the image's grid.
        names: label value -> name (``label`` only).
        colours: label value -> ``#rrggbb`` (``label`` only).
        opacity: its starting opacity.
    """

    key: str
    title: str
    kind: str
    array: np.ndarray
    names: Mapping[int, str] | None = None
    colours: Mapping[int, str] | None = None
    opacity: float = 0.5


def installed() -> bool:
    """Whether NiiVue's browser build is in the package (``make viewer`` copies it)."""
    return NIIVUE_JS.is_file()


def niivue_script() -> str:
    """NiiVue's browser build as text.

    Raises:
        FileNotFoundError: not installed; the message says to run ``make viewer``.
    """
    if not installed():
        raise FileNotFoundError(f"{NIIVUE_JS} is missing: {NOT_INSTALLED}")
    return NIIVUE_JS.read_text(encoding="utf-8")


def helper_script() -> str:
    return HELPER_JS.read_text(encoding="utf-8")


def mask_overlay(mask: np.ndarray, names: Mapping[int, str], *, key: str = "mask", title: str = "mask",
                 colours: Sequence[str] = PALETTE, opacity: float = 0.5) -> Overlay:
    """A label map ``(X, Y, Z)`` (mask values ``names`` lists; 0 background) as a label overlay."""
    colours_by_value = {int(v): colours[i % len(colours)] for i, v in enumerate(names)}
    return Overlay(key, title, "label", np.asarray(mask), dict(names), colours_by_value, opacity)


def heat_overlay(heatmap: np.ndarray, *, title: str = "heat map") -> Overlay:
    """A map ``(X, Y, Z)`` in [0, 1] (Grad-CAM on the image's grid), drawn in ``warm`` above the threshold."""
    return Overlay("heatmap", title, "heat", np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1), opacity=0.6)


def boxes_overlay(boxes: Sequence[dict], shape: Sequence[int], class_names: Sequence[str]) -> Overlay:
    """3D boxes as a label volume of their outlines (one voxel thick, the value of their class).

    Args:
        boxes: records with ``label`` (a class name) and ``box`` ``[x0, y0, z0, x1, y1, z1]`` voxel corners.
        shape: the image's spatial shape ``(X, Y, Z)``.
        class_names: the detector's classes; value ``i + 1`` is ``class_names[i]``.
    """
    outlines = np.zeros(tuple(shape), dtype=np.uint8)
    values = {name: i + 1 for i, name in enumerate(class_names)}
    for record in boxes:
        corners = np.asarray(record["box"], dtype=float)
        if corners.size != 6:
            continue
        low = np.clip(np.floor(corners[:3]).astype(int), 0, np.array(shape) - 1)
        high = np.clip(np.ceil(corners[3:]).astype(int) - 1, low, np.array(shape) - 1)
        face = np.ones(tuple(high - low + 1), dtype=bool)
        face[1:-1, 1:-1, 1:-1] = False  # the box's six faces, one voxel thick
        outlines[tuple(slice(a, b + 1) for a, b in zip(low, high))][face] = values.get(record["label"], len(values) + 1)
    names = {v: n for n, v in values.items()}
    return mask_overlay(outlines, names, key="boxes", title="boxes", opacity=1.0)


def stride_for(shape: Sequence[int], max_voxels: int) -> int:
    """The smallest step n so that every n-th voxel along each axis of ``shape`` stays within ``max_voxels``."""
    step = max(1, math.ceil((math.prod(shape) / max_voxels) ** (1 / len(shape))))
    while math.prod(math.ceil(s / step) for s in shape) > max_voxels:
        step += 1
    return step


def _on_grid(image: Image, array: np.ndarray, step: int) -> Image:
    """``array (X, Y, Z)`` on ``image``'s grid, every ``step``-th voxel (the first voxel's centre stays put)."""
    spacing = tuple(s * step for s in image.spacing_mm)
    return Image(array[None, ::step, ::step, ::step], spacing, image.origin_mm, image.direction,
                 spacing_known=image.spacing_known)


def nifti_base64(image: Image) -> str:
    """``image`` as gzipped NIfTI, base64 text (what NiiVue's ``NVImage.loadFromBase64`` reads)."""
    with tempfile.TemporaryDirectory(prefix="medlens-viewer-") as folder:
        return base64.b64encode(write_image(image, Path(folder) / "volume.nii.gz").read_bytes()).decode("ascii")


def display_array(array: np.ndarray, quantize: bool) -> np.ndarray:
    """The grey volume to send: float32 (or its integer type), or with ``quantize`` uint8 between its 0.5th and
    99.5th percentile (the report: a quarter of the size; window / level then works on that range)."""
    if not quantize:
        return array if array.dtype.kind in "iub" and array.dtype.itemsize <= 2 else array.astype(np.float32)
    finite = array[np.isfinite(array)]
    low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    scaled = (np.nan_to_num(array.astype(np.float32), nan=low) - low) / max(high - low, 1e-6)
    return np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def viewer_volumes(image: Image, overlays: Sequence[Overlay] = (), *, max_voxels: int = SERVICE_MAX_VOXELS,
                   quantize: bool = False) -> dict:
    """What the viewer shows, as JSON: the image (its first channel) and its overlays as base64 NIfTI.

    Args:
        image: a 3D :class:`~medlens.io.Image` ``(C, X, Y, Z)``.
        overlays: volumes ``(X, Y, Z)`` on its grid.
        max_voxels: past this many voxels, every n-th voxel along each axis (:func:`stride_for`).
        quantize: send the image as uint8 (see :func:`display_array`).

    Returns:
        ``{"image": {"nifti"}, "overlays": [{"key", "title", "kind", "nifti", "names", "colours", "opacity",
        "threshold"}], "shape": [X, Y, Z] as sent, "step": n}``.

    Raises:
        ValueError: not a 3D image, or an overlay off its grid.
    """
    if image.spatial_dims != 3:
        raise ValueError(f"the 3D viewer shows 3D images; got a {image.spatial_dims}D image of shape "
                         f"{image.array.shape}")
    step = stride_for(image.spatial_shape, max_voxels)
    grey = _on_grid(image, display_array(image.array[0], quantize), step)
    sent = []
    for overlay in overlays:
        if tuple(overlay.array.shape) != image.spatial_shape:
            raise ValueError(f"the {overlay.key} overlay has shape {overlay.array.shape}, the image "
                             f"{image.spatial_shape}; overlays must be on the image's grid")
        array = overlay.array.astype(np.uint8 if overlay.kind == "label" else np.float32)
        sent.append({"key": overlay.key, "title": overlay.title, "kind": overlay.kind,
                     "nifti": nifti_base64(_on_grid(image, array, step)), "opacity": overlay.opacity,
                     "names": {str(k): v for k, v in (overlay.names or {}).items()},
                     "colours": {str(k): v for k, v in (overlay.colours or {}).items()},
                     "threshold": HEAT_THRESHOLD if overlay.kind == "heat" else None})
    return {"image": {"nifti": nifti_base64(grey)}, "overlays": sent, "shape": list(grey.spatial_shape),
            "step": step}


def viewer_block(volumes: dict, element_id: str, caption: str = "") -> str:
    """A ``<div>`` the helper fills with the viewer, and its volumes as a JSON ``<script>`` (no code runs here:
    :func:`viewer_scripts` does, once per page)."""
    data = json.dumps(volumes).replace("</", "<\\/")
    title = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (f'<figure class="medlens-viewer-case" style="width:480px;max-width:100%">'
            f'<div class="medlens-viewer" id="{html.escape(element_id)}" '
            f'data-volumes="{html.escape(element_id)}-volumes"></div>{title}'
            f'<script type="application/json" data-medlens-viewer id="{html.escape(element_id)}-volumes">{data}'
            '</script></figure>')


def viewer_scripts() -> str:
    """NiiVue and the helper inlined, then a call that shows every ``.medlens-viewer`` of the page (a report
    opened from disk: one file, nothing fetched)."""
    start = ("for (const el of document.querySelectorAll('.medlens-viewer')) {"
             " const data = JSON.parse(document.getElementById(el.dataset.volumes).textContent);"
             " window.medlensViewer.show(el, data).catch((e) => { el.textContent = 'viewer error: ' + e; }); }")
    return "".join(f"<script data-medlens-viewer>{_inline(code)}</script>"
                   for code in (niivue_script(), helper_script(), start))


def fallback_html() -> str:
    """What a page shows instead of the viewer when NiiVue is not installed."""
    return f'<p class="medlens-viewer-missing">{html.escape(NOT_INSTALLED)} (the 2D figures stay).</p>'


def _inline(code: str) -> str:
    """Script text safe inside ``<script>`` (a ``</script`` in a string would end the element)."""
    return code.replace("</script", "<\\/script")
