"""Detection outputs: box records in voxels and world mm, the CSV / JSON files, Slicer ROI markups, overlays."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest

from medlens.io import Image
from medlens.tasks.detection.files import (
    box_rows,
    boxes_png,
    crop_window,
    overlay_png,
    slicer_markups,
    write_boxes,
    write_slicer_markups,
)


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation matrix about ``axis`` by ``angle`` radians."""
    k = axis / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


@pytest.fixture
def oblique() -> Image:
    """A 3D volume with anisotropic spacing and a direction that is neither symmetric nor axis-aligned."""
    direction = rotation(np.array([1.0, 2.0, 0.5]), 0.7)
    assert not np.allclose(direction, direction.T)
    return Image(np.zeros((1, 40, 30, 20), np.float32), (0.7, 0.9, 2.5), (-12.0, 30.0, 5.5),
                 tuple(direction.ravel()))


def test_box_rows_in_2d_without_spacing_carry_voxels_only_highest_score_first():
    image = Image(np.zeros((1, 64, 48), np.float32), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0),
                  spacing_known=False)
    rows = box_rows(np.array([[1.004, 2, 10, 12], [5, 6, 7, 8]]), np.array([0.3, 0.8]), np.array([1, 0]),
                    ["RBC", "WBC"], image)
    assert rows == [{"label": "RBC", "score": 0.8, "box": [5.0, 6.0, 7.0, 8.0]},
                    {"label": "WBC", "score": 0.3, "box": [1.0, 2.0, 10.0, 12.0]}]


def test_box_rows_in_3d_give_the_world_centre_and_size_by_hand():
    image = Image(np.zeros((1, 20, 30, 10), np.float32), (1.0, 2.0, 3.0), (5.0, 6.0, 7.0),
                  (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    [row] = box_rows(np.array([[2, 3, 4, 8, 9, 6]]), [0.9], [0], ["nodule"], image)
    # centre (5, 6, 5) in voxels -> steps (4.5 * 1, 5.5 * 2, 4.5 * 3) = (4.5, 11, 13.5); direction swaps x / y
    assert row["center_mm"] == [5.0 + 11.0, 6.0 - 4.5, 7.0 + 13.5]
    assert row["size_mm"] == [6.0, 12.0, 6.0]


def test_box_rows_refuse_mismatched_lengths_and_dimensions(oblique):
    with pytest.raises(ValueError, match="one score and one label per box"):
        box_rows(np.zeros((2, 6)), [0.5], [0, 0], ["a"], oblique)
    with pytest.raises(ValueError, match="expected 6 corner values per box for a 3D image"):
        box_rows(np.zeros((1, 4)), [0.5], [0], ["a"], oblique)


def test_write_boxes_writes_csv_with_mm_columns_and_json(oblique, tmp_path):
    rows = box_rows(np.array([[2, 3, 4, 8, 9, 6]]), [0.9], [0], ["nodule"], oblique)
    csv_path, json_path = write_boxes(rows, tmp_path / "b.csv", tmp_path / "b.json", image_name="ct_01")
    with open(csv_path, newline="") as f:
        [line] = list(csv.DictReader(f))
    assert list(line) == ["image", "label", "score", "x_min", "y_min", "z_min", "x_max", "y_max", "z_max",
                          "center_x_mm", "center_y_mm", "center_z_mm", "size_x_mm", "size_y_mm", "size_z_mm"]
    assert (line["image"], line["label"], float(line["z_max"])) == ("ct_01", "nodule", 6.0)
    assert float(line["size_z_mm"]) == pytest.approx(5.0)
    assert json.loads(json_path.read_text())["boxes"] == rows
    assert not list(tmp_path.glob(".*tmp"))


def test_write_boxes_without_boxes_still_writes_the_header(tmp_path):
    csv_path, _ = write_boxes([], tmp_path / "b.csv", tmp_path / "b.json", spatial_dims=2)
    assert csv_path.read_text() == "image,label,score,x_min,y_min,x_max,y_max\n"


def voxel_box_corners_world(box: np.ndarray, image: Image) -> np.ndarray:
    """The 8 corners of a voxel box mapped to world mm by the image geometry, computed here independently."""
    direction = np.asarray(image.direction).reshape(3, 3)
    corners = np.array(list(itertools.product(*[(box[a], box[a + 3]) for a in range(3)])))
    return np.array([np.asarray(image.origin_mm) + direction @ (np.asarray(image.spacing_mm) * (c - 0.5))
                     for c in corners])


def roi_corners(markup: dict) -> np.ndarray:
    """The 8 corners of a Slicer ROI: ``center + R @ (±size / 2)``, R row-major with the ROI axes as columns."""
    r = np.asarray(markup["orientation"]).reshape(3, 3)
    half = np.asarray(markup["size"]) / 2
    return np.array([np.asarray(markup["center"]) + r @ (np.array(s) * half)
                     for s in itertools.product((-1, 1), repeat=3)])


def same_points(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    return all(np.linalg.norm(b - p, axis=1).min() < atol for p in a) and len(a) == len(b)


def test_slicer_roi_on_an_oblique_volume_has_the_corners_of_the_voxel_box(oblique, tmp_path):
    boxes = np.array([[3.0, 4.0, 2.0, 11.0, 9.0, 7.0], [20.5, 1.0, 10.0, 30.0, 25.0, 19.0]])
    rows = box_rows(boxes, [0.91, 0.4], [0, 1], ["nodule", "mass"], oblique)
    doc = json.loads(write_slicer_markups(rows, oblique, ["nodule", "mass"], tmp_path / "x.mrk.json").read_text())
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    assert [m["name"] for m in doc["markups"]] == ["nodule 0.91", "mass 0.40"]
    for markup, box in zip(doc["markups"], boxes):
        assert (markup["type"], markup["roiType"], markup["coordinateSystem"]) == ("ROI", "Box", "LPS")
        assert same_points(voxel_box_corners_world(box, oblique), roi_corners(markup), atol=0.01)
        # the transposed orientation (column-major reading) would put the corners elsewhere
        transposed = {**markup, "orientation": list(np.asarray(markup["orientation"]).reshape(3, 3).T.ravel())}
        assert not same_points(voxel_box_corners_world(box, oblique), roi_corners(transposed), atol=0.01)


def test_slicer_markups_refuse_a_2d_image():
    image = Image(np.zeros((1, 8, 8), np.float32), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="for 3D volumes; this image is 2D"):
        slicer_markups([], image, ["a"])


def png_pixels(data: bytes) -> np.ndarray:
    import io

    from PIL import Image as PILImage

    return np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"))


def test_overlay_draws_the_class_colour_and_writes_atomically(tmp_path):
    image = Image(np.zeros((1, 64, 48), np.float32), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    rows = box_rows(np.array([[10, 10, 40, 30]]), [0.77], [1], ["RBC", "WBC"], image)
    path = overlay_png(image, rows, tmp_path / "o.png", ["RBC", "WBC"],
                       truth=[{"label": "RBC", "box": [5, 5, 20, 20]}])
    pixels = png_pixels(path.read_bytes()).astype(int)
    orange, blue = np.array([0xFF, 0x7F, 0x0E]), np.array([0x1F, 0x77, 0xB4])  # WBC solid, RBC dashed
    assert (np.abs(pixels - orange).sum(axis=-1) < 40).sum() > 50
    assert (np.abs(pixels - blue).sum(axis=-1) < 40).sum() > 20
    empty = png_pixels(overlay_png(image, [], tmp_path / "e.png", ["RBC"]).read_bytes()).astype(int)
    assert (np.abs(empty - orange).sum(axis=-1) < 40).sum() == 0
    assert not list(tmp_path.glob(".*tmp"))


def test_3d_overlay_shows_only_boxes_on_the_slice_of_the_best_box(oblique):
    rows = box_rows(np.array([[3, 4, 2, 11, 9, 5], [20, 1, 12, 30, 25, 19]]), [0.9, 0.4], [0, 1],
                    ["nodule", "mass"], oblique)
    pixels = png_pixels(boxes_png(oblique, rows, ["nodule", "mass"])).astype(int)
    blue, orange = np.array([0x1F, 0x77, 0xB4]), np.array([0xFF, 0x7F, 0x0E])
    assert (np.abs(pixels - blue).sum(axis=-1) < 40).sum() > 20  # slice 3 crosses the nodule box only
    assert (np.abs(pixels - orange).sum(axis=-1) < 40).sum() == 0


def test_crop_window_holds_the_box_with_context_and_stays_inside():
    assert crop_window([10, 20, 30, 60], (100, 50)) == (0, 100, 0, 50)
    assert crop_window([10, 40, 20, 50], (400, 400), context=1.0) == (29, 61, 0, 31)
    assert crop_window([100, 100, 104, 104], (200, 200), min_px=32) == (86, 118, 86, 118)
