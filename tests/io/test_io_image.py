"""The Image carrier: shape and geometry checks, and the SimpleITK conversions behind every ITK reader."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medlens.io import Image, identity_direction
from medlens.io.image import from_sitk, to_sitk


def test_image_normalises_geometry_to_float_tuples():
    image = Image(np.zeros((1, 4, 5), np.uint8), [1, 2], np.array([3, 4]), [1, 0, 0, 1])

    assert image.spacing_mm == (1.0, 2.0) and image.origin_mm == (3.0, 4.0) and image.direction == (1.0, 0.0, 0.0, 1.0)
    assert (image.spatial_dims, image.channels, image.spatial_shape) == (2, 1, (4, 5))


@pytest.mark.parametrize("shape", [(4, 5), (1, 2, 3, 4, 5)])
def test_image_refuses_arrays_that_are_not_channel_first_2d_or_3d(shape):
    with pytest.raises(ValueError, match=r"Image\.array must be \(C, X, Y\) or \(C, X, Y, Z\)"):
        Image(np.zeros(shape), (1.0,) * 3, (0.0,) * 3, identity_direction(3))


def test_image_refuses_geometry_of_the_wrong_dimensionality():
    with pytest.raises(ValueError, match=r"geometry does not match a 3D array: .*expected 3, 3, 9"):
        Image(np.zeros((1, 4, 5, 6)), (1.0, 1.0), (0.0, 0.0, 0.0), identity_direction(3))


def test_with_array_keeps_the_geometry_and_copies_the_metadata():
    image = Image(np.zeros((1, 4, 5, 6)), (0.5, 0.6, 0.7), (1.0, 2.0, 3.0), identity_direction(3), meta={"a": 1})

    mask = image.with_array(np.ones((2, 4, 5, 6), np.uint8))
    mask.meta["a"] = 2

    assert (mask.spacing_mm, mask.origin_mm, mask.direction) == (image.spacing_mm, image.origin_mm, image.direction)
    assert mask.channels == 2 and image.meta == {"a": 1}


def test_with_array_refuses_another_spatial_shape():
    image = Image(np.zeros((1, 4, 5, 6)), (1.0,) * 3, (0.0,) * 3, identity_direction(3))

    with pytest.raises(ValueError, match=r"new array shape \(1, 4, 5, 7\) does not match spatial shape \(4, 5, 6\)"):
        image.with_array(np.zeros((1, 4, 5, 7)))


def test_same_geometry_tolerates_rounding_but_not_a_shift():
    image = Image(np.zeros((1, 4, 5, 6)), (0.5, 0.6, 0.7), (1.0, 2.0, 3.0), identity_direction(3))
    rounded = Image(np.zeros((1, 4, 5, 6)), (0.5 + 1e-5, 0.6, 0.7), (1.0, 2.0, 3.0 - 1e-5), identity_direction(3))
    shifted = Image(np.zeros((1, 4, 5, 6)), (0.5, 0.6, 0.7), (1.0, 2.0, 3.1), identity_direction(3))
    resized = Image(np.zeros((1, 4, 5, 7)), (0.5, 0.6, 0.7), (1.0, 2.0, 3.0), identity_direction(3))

    assert image.same_geometry(rounded)
    assert not image.same_geometry(shifted)
    assert not image.same_geometry(resized)


@pytest.mark.parametrize("name", ["oblique_volume", "vector_volume", "rotated_slice", "rgb_slice"])
def test_to_sitk_and_back_is_lossless(make_image, name):
    image = make_image.in_memory(name)

    back = from_sitk(to_sitk(image))

    np.testing.assert_array_equal(back.array, image.array)
    assert (back.spacing_mm, back.origin_mm, back.direction) == (image.spacing_mm, image.origin_mm, image.direction)


def test_to_sitk_puts_x_first_as_itk_indexes_do(make_image):
    image = make_image.in_memory("oblique_volume")

    sitk_image = to_sitk(image)

    assert sitk_image.GetSize() == image.spatial_shape
    assert sitk_image.GetPixel(4, 1, 2) == image.array[0, 4, 1, 2]


def test_from_sitk_copies_the_pixels_so_they_outlive_the_sitk_image():
    sitk_image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))

    image = from_sitk(sitk_image)
    del sitk_image

    np.testing.assert_array_equal(image.array[0], np.arange(24, dtype=np.int16).reshape(2, 3, 4).T)
