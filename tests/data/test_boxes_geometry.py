"""Box geometry against hand-computed cases: corners / centre+size, voxel / mm on an oblique grid, boxes from masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medlens.data.boxes import boxes_from_mask, boxes_on_grid, boxes_to_world, usable_boxes
from medlens.errors import DatasetError
from medlens.io import Image, identity_direction
from medlens.types import Boxes

# a 90 degree rotation about z: index x runs along world +y, index y along world -x
ROTATED_Z = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def volume(spacing=(2.0, 1.0, 3.0), origin=(10.0, 20.0, 30.0), direction=ROTATED_Z, known=True) -> Image:
    return Image(np.zeros((1, 6, 6, 6), np.float32), spacing, origin, direction, spacing_known=known)


def test_voxel_corners_pass_through_and_centre_size_becomes_corners():
    image = volume()
    corners, labels = boxes_on_grid(Boxes(((1, 2, 3, 4, 5, 6),), (0,)), image)
    centred, _ = boxes_on_grid(Boxes(((2.5, 3.5, 4.5, 3, 3, 3),), (1,), form="center_size"), image)

    np.testing.assert_array_equal(corners, [[1, 2, 3, 4, 5, 6]])
    assert corners.dtype == np.float32 and labels.dtype == np.int64 and labels.tolist() == [0]
    np.testing.assert_array_equal(centred, [[1, 2, 3, 4, 5, 6]])


def test_world_mm_centre_size_on_a_rotated_volume_matches_the_hand_computation():
    # world x = 10 - (c_y - 0.5); world y = 20 + 2 (c_x - 0.5); world z = 30 + 3 (c_z - 0.5)
    # the world box x in [6, 10], y in [22, 28], z in [31.5, 40.5] is c_x in [1.5, 4.5], c_y in [0.5, 4.5],
    # c_z in [1, 4]
    image = volume()
    boxes = Boxes(((8.0, 25.0, 36.0, 4.0, 6.0, 9.0),), (0,), form="center_size", unit="mm")

    corners, _ = boxes_on_grid(boxes, image)

    np.testing.assert_allclose(corners, [[1.5, 0.5, 1.0, 4.5, 4.5, 4.0]], atol=1e-5)
    np.testing.assert_allclose(boxes_to_world(corners, image), [[8.0, 25.0, 36.0, 4.0, 6.0, 9.0]], atol=1e-5)


def test_world_corners_in_mm_give_the_same_box():
    image = volume()
    boxes = Boxes(((6.0, 22.0, 31.5, 10.0, 28.0, 40.5),), (0,), unit="mm")

    corners, _ = boxes_on_grid(boxes, image)

    np.testing.assert_allclose(corners, [[1.5, 0.5, 1.0, 4.5, 4.5, 4.0]], atol=1e-5)


def test_a_box_on_a_45_degree_grid_becomes_its_enclosing_world_box():
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    image = Image(np.zeros((1, 4, 4), np.float32), (1.0, 1.0), (0.0, 0.0), (c, -s, s, c))

    world = boxes_to_world(np.array([[0.0, 0.0, 2.0, 2.0]]), image)

    np.testing.assert_allclose(world[0, 2:], [2 * math.sqrt(2)] * 2, atol=1e-9)  # a 2 x 2 square turned 45 degrees
    # centre of the square: continuous (1, 1) is world direction @ (0.5, 0.5) = (0, sqrt(2)/2)
    np.testing.assert_allclose(world[0, :2], [0.0, math.sqrt(2) / 2], atol=1e-9)


def test_mm_boxes_on_an_image_without_geometry_are_refused_naming_the_case():
    image = volume(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=identity_direction(3), known=False)
    boxes = Boxes(((1.0, 1.0, 1.0, 2.0, 2.0, 2.0),), (0,), form="center_size", unit="mm")

    with pytest.raises(DatasetError, match="case lung_7: boxes are in millimetres .* stores no geometry"):
        boxes_on_grid(boxes, image, case_id="lung_7")


def test_boxes_of_the_wrong_dimensionality_are_refused():
    with pytest.raises(DatasetError, match="4 numbers each but the image is 3D"):
        boxes_on_grid(Boxes(((0, 0, 1, 1),), (0,)), volume())


def test_boxes_from_a_mask_one_per_component_with_full_connectivity():
    mask = np.zeros((8, 8), np.uint8)
    mask[0:2, 0:2] = 1
    mask[2, 2] = 1  # touches the first component at a corner only: the same object
    mask[5:7, 4:8] = 1  # a second component of label 1
    mask[0, 6:8] = 2

    corners, labels = boxes_from_mask(mask, [1, 2])

    assert labels.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(corners, [[0, 0, 3, 3], [5, 4, 7, 8], [0, 6, 1, 8]])


def test_usable_boxes_clip_to_the_image_and_drop_inverted_and_empty_ones():
    corners = np.array([[-2, 1, 3, 9], [4, 4, 2, 6], [1, 1, 1, 5], [9, 9, 12, 12]], np.float32)

    kept, labels = usable_boxes(corners, np.array([0, 1, 2, 3]), (8, 8))

    np.testing.assert_array_equal(kept, [[0, 1, 3, 8]])
    assert labels.tolist() == [0]
