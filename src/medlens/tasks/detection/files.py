"""What a detection writes for a person and for other tools: box tables, 3D Slicer markups, PNG overlays.

Boxes arrive as corners ``(x_min, y_min[, z_min], x_max, y_max[, z_max])`` in continuous voxel
coordinates of the image's ``(C, X, Y[, Z])`` array, voxel ``i`` spanning ``[i, i + 1)``. Where the
image has a geometry (every 3D image, and a 2D image whose spacing is known) each box also gets its
centre in world millimetres, ``origin + direction @ (spacing * (c - 0.5))`` for continuous
coordinate ``c`` (ITK's LPS patient coordinates), and its size along the image axes in mm.

3D Slicer reads boxes as ROI markups (``NAME.mrk.json``). Slicer's ROI ``orientation`` is a 3 x 3
matrix flattened row by row whose columns are the ROI's axes ("``[orientation[0], orientation[3],
orientation[6]]`` is the x vector", markups-schema-v1.0.3; ``vtkMRMLMarkupsROIJsonStorageNode``
writes ``orientation[3 * i + j] = ROIToLocal(i, j)`` and flips rows 0 and 1 for LPS files). That is
exactly SimpleITK's row-major direction layout, so an LPS file takes the image's direction as it is,
and the ROI lies along the voxel grid of an oblique volume.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens._files import write_bytes_atomic, write_text_atomic
from medlens.data.boxes import index_to_world
from medlens.io import Image

SLICER_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/main/Modules/Loadable/Markups/Resources/Schema/"
                 "markups-schema-v1.0.3.json#")
#: One colour per class (matplotlib's tab10), cycled past ten classes.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
AXES = "xyz"


@dataclass(frozen=True)
class ImageResult:
    """One evaluated image: what was there and what the detector said, on the preprocessed grid.

    Attributes:
        case_id: the case's id (shown in the report's galleries).
        image: the image the boxes refer to, ``(C, X, Y[, Z])``.
        truth_boxes: ``(G, 2D)`` reference corners, voxel coordinates of ``image``.
        truth_labels: ``(G,)`` class index of each reference box (into the run's class names).
        boxes: ``(P, 2D)`` detected corners.
        scores: ``(P,)`` detection scores in [0, 1].
        labels: ``(P,)`` class index of each detection.
    """

    case_id: str
    image: Image
    truth_boxes: np.ndarray
    truth_labels: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def class_name(label, class_names: Sequence[str]) -> str:
    """The name of class index ``label``; the index itself when the names do not reach it."""
    index = int(label)
    return class_names[index] if 0 <= index < len(class_names) else str(index)


def class_colour(name: str, class_names: Sequence[str]) -> str:
    """The colour of class ``name``: its place in ``class_names`` (an unknown name: a fixed one from its text)."""
    index = list(class_names).index(name) if name in class_names else sum(name.encode())
    return COLOURS[index % len(COLOURS)]


def has_world(image: Image | None) -> bool:
    """Whether boxes on ``image`` have a place in millimetres: 3D, or 2D with a known spacing."""
    return image is not None and (image.spatial_dims == 3 or image.spacing_known)


def box_rows(corners: np.ndarray, scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
             image: Image | None) -> list[dict]:
    """One record per box, highest score first.

    Args:
        corners: ``(N, 2D)`` voxel corners on ``image``'s grid.
        scores: ``(N,)``.
        labels: ``(N,)`` class index of each box (into ``class_names``).
        class_names: the names of the classes the labels index.
        image: the image the boxes are on; ``None`` for voxel coordinates only.

    Returns:
        ``[{"label", "score", "box"}]`` with ``box`` the corners rounded to 0.01 voxel, plus ``center_mm``
        (world point of the box centre) and ``size_mm`` (extent along the image axes) when the image has a
        geometry (:func:`has_world`), rounded to 0.001 mm.

    Raises:
        ValueError: the arrays disagree in length, or the corners are not ``2D`` per box for ``image``.
    """
    corners = np.asarray(corners, dtype=float).reshape(len(corners), -1) if len(corners) else np.zeros((0, 0))
    scores, labels = np.asarray(scores, dtype=float).ravel(), np.asarray(labels).ravel()
    if not len(corners) == len(scores) == len(labels):
        raise ValueError(f"expected one score and one label per box; got {len(corners)} boxes, {len(scores)} "
                         f"scores and {len(labels)} labels")
    if len(corners) and image is not None and corners.shape[1] != 2 * image.spatial_dims:
        raise ValueError(f"expected {2 * image.spatial_dims} corner values per box for a {image.spatial_dims}D "
                         f"image, got boxes of shape {corners.shape}")
    rows = []
    for i in np.argsort(-scores, kind="stable"):
        box = corners[i]
        row = {"label": class_name(labels[i], class_names), "score": round(float(scores[i]), 4),
               "box": [round(float(v), 2) for v in box]}
        if has_world(image):
            dims = len(box) // 2
            centre = index_to_world(((box[:dims] + box[dims:]) / 2)[None], image)[0]
            row["center_mm"] = [round(float(v), 3) for v in centre]
            row["size_mm"] = [round(float(v), 3) for v in (box[dims:] - box[:dims]) * np.asarray(image.spacing_mm)]
        rows.append(row)
    return rows


def csv_header(spatial_dims: int, world: bool) -> list[str]:
    axes = AXES[:spatial_dims]
    header = ["image", "label", "score", *(f"{a}_min" for a in axes), *(f"{a}_max" for a in axes)]
    if world:
        header += [*(f"center_{a}_mm" for a in axes), *(f"size_{a}_mm" for a in axes)]
    return header


def boxes_csv(rows: list[dict], *, image_name: str = "", spatial_dims: int | None = None) -> str:
    """The CSV text of :func:`box_rows` records (a row's own ``image`` key wins over ``image_name``).

    ``spatial_dims`` sets the columns when there are no rows (millimetre columns then only in 3D).
    """
    dims = len(rows[0]["box"]) // 2 if rows else (spatial_dims or 2)
    world = any("center_mm" in r for r in rows) if rows else dims == 3
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header(dims, world))
    for row in rows:
        mm = []
        if world:
            mm = [*row["center_mm"], *row["size_mm"]] if "center_mm" in row else [""] * (2 * dims)
        writer.writerow([row.get("image", image_name), row["label"], row["score"], *row["box"], *mm])
    return buffer.getvalue()


def write_boxes(rows: list[dict], csv_path: str | Path, json_path: str | Path, *, image_name: str = "",
                spatial_dims: int | None = None) -> tuple[Path, Path]:
    """Write the boxes as CSV and as JSON (``{"image", "convention", "boxes": rows}``), each atomically."""
    text = boxes_csv(rows, image_name=image_name, spatial_dims=spatial_dims)
    doc = {"image": image_name,
           "convention": "box: corners (x_min, y_min[, z_min], x_max, y_max[, z_max]) in continuous voxel "
                         "coordinates of the image array (x = column), voxel i spanning [i, i+1); center_mm: world "
                         "LPS millimetres; size_mm: extent along the image axes",
           "boxes": rows}
    return (write_text_atomic(csv_path, text),
            write_text_atomic(json_path, json.dumps(doc, indent=2) + "\n"))


def slicer_markups(rows: list[dict], image: Image, class_names: Sequence[str]) -> dict:
    """A 3D Slicer markups document: one ROI (box) per row, aligned with ``image``'s voxel grid.

    Args:
        rows: :func:`box_rows` records made with this ``image`` (they carry ``center_mm`` and ``size_mm``).
        image: the 3D volume the boxes are on; its direction becomes each ROI's orientation.
        class_names: fix each class's colour.

    Raises:
        ValueError: ``image`` is not 3D, or a row has no world position.
    """
    if image.spatial_dims != 3:
        raise ValueError(f"Slicer ROI markups are written for 3D volumes; this image is {image.spatial_dims}D "
                         "(use the CSV / JSON boxes or the PNG overlay)")
    markups = []
    for i, row in enumerate(rows):
        if "center_mm" not in row:
            raise ValueError(f"box {i} has no world position: make the rows with box_rows(..., image=the volume)")
        name = f"{row['label']} {row['score']:.2f}"
        colour = [int(class_colour(row["label"], class_names)[k:k + 2], 16) / 255 for k in (1, 3, 5)]
        markups.append({
            "type": "ROI", "coordinateSystem": "LPS", "coordinateUnits": "mm", "name": name, "locked": True,
            "roiType": "Box", "center": row["center_mm"], "size": row["size_mm"],
            "orientation": [float(v) for v in image.direction],
            "controlPoints": [{"id": "1", "label": name, "position": row["center_mm"], "selected": True,
                               "locked": True, "visibility": True, "positionStatus": "defined"}],
            "display": {"visibility": True, "color": colour, "selectedColor": colour, "opacity": 1.0,
                        "fillOpacity": 0.1, "outlineOpacity": 1.0}})
    return {"@schema": SLICER_SCHEMA, "markups": markups}


def write_slicer_markups(rows: list[dict], image: Image, class_names: Sequence[str], path: str | Path) -> Path:
    """Write :func:`slicer_markups` to ``path`` (``NAME.mrk.json``) atomically."""
    return write_text_atomic(path, json.dumps(slicer_markups(rows, image, class_names), indent=2) + "\n")


def display_plane(image: Image, depth: float | None) -> tuple[np.ndarray, int | None]:
    """The plane to draw, ``(rows = Y, cols = X, 1 or 3)``, and its axial index in 3D.

    ``depth`` is the continuous z of the box to show (the middle slice when ``None``).
    """
    channels = image.array[:3] if image.channels == 3 else image.array[:1]
    if image.spatial_dims == 2:
        return np.moveaxis(channels, 0, -1).swapaxes(0, 1), None
    size = image.spatial_shape[2]
    k = size // 2 if depth is None else int(np.clip(np.floor(depth), 0, size - 1))
    return np.moveaxis(channels[..., k], 0, -1).swapaxes(0, 1), k


def on_slice(box: Sequence[float], k: int | None) -> bool:
    """Whether a box crosses axial slice ``k`` (always, in 2D)."""
    return k is None or (box[2] < k + 1 and box[5] > k)


def crop_window(box: Sequence[float], shape: tuple[int, int], *, context: float = 1.0,
                min_px: int = 32) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` of a window around ``box`` in a plane of ``shape (rows, cols)``:
    the box plus ``context`` times its size on each side, at least ``min_px`` wide, clipped to the plane."""
    dims = len(box) // 2
    window = []
    for axis, extent in ((1, shape[0]), (0, shape[1])):
        low, high = box[axis], box[dims + axis]
        half = max((high - low) * (0.5 + context), min_px / 2)
        middle = (low + high) / 2
        window += [int(np.clip(np.floor(middle - half), 0, extent - 1)),
                   int(np.clip(np.ceil(middle + half), 1, extent))]
    return tuple(window)


def boxes_png(image: Image, rows: list[dict], class_names: Sequence[str], *, truth: list[dict] | None = None,
              focus: Sequence[float] | None = None, title: str = "") -> bytes:
    """PNG of the image with ``rows`` drawn solid (``label score``) and ``truth`` dashed.

    Args:
        image: ``(C, X, Y[, Z])``; three channels are shown as RGB, otherwise the first in grey.
        rows, truth: records with ``label``, ``box`` (and ``score`` for predictions).
        class_names: fix each class's colour.
        focus: a box to show close up (a crop around it, through its axial slice in 3D); ``None`` shows the
            whole image, in 3D the axial slice through the highest-scoring box (the middle one without boxes).
        title: printed above the picture.
    """
    from medlens.budget import check_voxels
    from medlens.explain.overlay import display_aspects, display_range
    from medlens.report.plots import figure, to_png

    dims = image.spatial_dims
    anchor = focus if focus is not None else (max(rows, key=lambda r: r.get("score", 0))["box"] if rows else None)
    plane, k = display_plane(image, None if anchor is None or dims == 2 else (anchor[2] + anchor[5]) / 2)
    window = crop_window(focus, plane.shape[:2]) if focus is not None else (0, plane.shape[0], 0, plane.shape[1])
    plane = plane[window[0]:window[1], window[2]:window[3]]
    check_voxels((*plane.shape[:2], 3), "drawing the box overlay")
    low, high = display_range(plane)
    shown = np.clip((plane.astype(np.float32) - low) / max(high - low, 1e-8), 0, 1)
    fig, axes = figure(size=(3.2, 3.2) if focus is not None else (5.0, 5.0))
    ax = axes[0, 0]
    # imshow puts pixel i at [i - 0.5, i + 0.5]; shift so continuous voxel coordinates land on their voxel
    extent = (window[2] - 0.5, window[3] - 0.5, window[1] - 0.5, window[0] - 0.5)
    ax.imshow(shown if shown.shape[-1] == 3 else shown[..., 0], cmap="gray", vmin=0, vmax=1, extent=extent,
              aspect=display_aspects(image.spacing_mm, dims)[0][0], interpolation="nearest")
    for record, dashed in [*((r, False) for r in rows), *((t, True) for t in truth or [])]:
        if on_slice(record["box"], k):
            _draw_box(ax, record, class_names, dashed=dashed, top=window[0] + 0.06 * (window[1] - window[0]))
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(title + ("" if k is None else f" (axial slice {k})"), fontsize=8)
    ax.axis("off")
    return to_png(fig)


def _draw_box(ax, record: dict, class_names: Sequence[str], *, dashed: bool, top: float) -> None:
    """One rectangle; a detection's ``label score`` above it, or below it when the box starts above row ``top``."""
    from matplotlib.patches import Rectangle

    box = record["box"]
    dims = len(box) // 2
    x0, y0, x1, y1 = box[0] - 0.5, box[1] - 0.5, box[dims] - 0.5, box[dims + 1] - 0.5
    colour = class_colour(record["label"], class_names)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                           linestyle="--" if dashed else "-", linewidth=2.0))
    if not dashed:
        below = y0 < top
        ax.text(x0, y1 if below else y0, f"{record['label']} {record['score']:.2f}", color="white", fontsize=7,
                va="top" if below else "bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1, "alpha": 0.8}, clip_on=True)


def overlay_png(image: Image, rows: list[dict], path: str | Path, class_names: Sequence[str], *,
                truth: list[dict] | None = None) -> Path:
    """Write :func:`boxes_png` of the whole image (3D: the axial slice through the highest-scoring box) atomically."""
    return write_bytes_atomic(path, boxes_png(image, rows, class_names, truth=truth))
