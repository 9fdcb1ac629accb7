"""Detection preprocessing: the plan's grid, box scaling, box-keeping crops, seeded patches, flips, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.config import DataSection
from medlens.errors import DatasetError
from medlens.io import Image, identity_direction
from medlens.tasks.detection.prepare import (
    BoxImage,
    BoxPatches,
    collate,
    crop_with_boxes,
    grid_shape,
    prepare_array,
    scale_boxes,
)


def image(shape, *, channels=1, spacing=None, seed=0) -> Image:
    """A random image; ``spacing=None`` is a PNG's: unknown, stored as 1 mm placeholders."""
    dims = len(shape)
    array = np.random.default_rng(seed).normal(100, 20, (channels, *shape)).astype(np.float32)
    return Image(array, spacing or (1.0,) * dims, (0.0,) * dims, identity_direction(dims),
                 spacing_known=spacing is not None)


def item(array: np.ndarray, boxes, labels=None) -> BoxImage:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 2 * (array.ndim - 1))
    labels = np.zeros(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64)
    return BoxImage("case", array.astype(np.float32), boxes, labels, np.ones(array.ndim - 1))


def coordinates(shape) -> np.ndarray:
    """``(D, *shape)``: channel ``a`` holds 1 + the voxel's index along axis ``a`` (0 marks padding)."""
    return np.stack(np.meshgrid(*[np.arange(n) + 1.0 for n in shape], indexing="ij")).astype(np.float32)


# ---- the plan's grid ---------------------------------------------------------------------------------------


def test_grid_shape_counts_a_pixel_without_spacing_as_one_mm():
    png = image((40, 30), spacing=None)
    assert grid_shape(png, DataSection(target_spacing=(2.0, 2.0))) == (20, 15)
    assert grid_shape(png, DataSection(target_spacing=())) == (40, 30)


def test_grid_shape_uses_a_known_spacing():
    ct = image((40, 30, 10), spacing=(0.5, 0.5, 3.0))
    assert grid_shape(ct, DataSection(target_spacing=(1.0, 1.0, 1.5))) == (20, 15, 20)


def test_grid_shape_refuses_a_corrupt_spacing():
    with pytest.raises(DatasetError, match="not a positive finite size"):
        grid_shape(image((8, 8), spacing=(0.0, 1.0)), DataSection(target_spacing=(1.0, 1.0)))


def test_prepare_array_resamples_normalises_and_returns_the_scale():
    data = DataSection(channels=3, target_spacing=(2.0, 2.0), normalization="zscore")
    array, scale = prepare_array(image((40, 30), channels=3), data, "case_1")

    assert array.shape == (3, 20, 15) and array.dtype == np.float32
    assert scale.tolist() == [0.5, 0.5]
    assert abs(float(array.mean())) < 0.1 and abs(float(array.std()) - 1) < 0.1


def test_prepared_images_and_scaled_boxes_stay_together():
    array = np.zeros((1, 40, 30, 12), np.float32)
    array[0, 8:16, 6:12, 4:8] = 1.0
    ct = Image(array, (0.5, 0.5, 1.0), (0.0,) * 3, identity_direction(3))
    data = DataSection(channels=1, target_spacing=(1.0, 1.0, 2.0), normalization="none")

    grid, scale = prepare_array(ct, data, "case_1")
    x0, y0, z0, x1, y1, z1 = scale_boxes(np.asarray([[8, 6, 4, 16, 12, 8]]), scale)[0].astype(int)

    assert grid.shape == (1, 20, 15, 6) and (x0, y0, z0, x1, y1, z1) == (4, 3, 2, 8, 6, 4)
    inside = np.zeros_like(grid, bool)
    inside[0, x0:x1, y0:y1, z0:z1] = True
    assert grid[inside].min() == pytest.approx(1.0) and grid[~inside].max() == pytest.approx(0.0)


def test_prepare_array_refuses_other_channels():
    with pytest.raises(DatasetError, match=r"case_1: 3 channel\(s\) but the plan expects 1"):
        prepare_array(image((16, 16), channels=3), DataSection(channels=1), "case_1")


def test_scale_boxes_scales_each_axis_and_maps_back():
    boxes = np.asarray([[2, 4, 10, 20], [0, 0, 7.5, 3]], np.float32)
    scale = np.asarray([0.5, 0.25])

    scaled = scale_boxes(boxes, scale)

    assert scaled.tolist() == [[1, 1, 5, 5], [0, 0, 3.75, 0.75]]
    np.testing.assert_allclose(scale_boxes(scaled, 1 / scale), boxes, rtol=1e-6)
    assert scale_boxes(np.zeros((0, 6)), np.ones(3)).shape == (0, 6)


# ---- crops -------------------------------------------------------------------------------------------------


def test_a_crop_centred_on_a_box_keeps_it_and_its_pixels():
    array = np.zeros((1, 100, 80), np.float32)
    array[0, 40:50, 30:36] = 1.0
    for seed in range(20):
        out, boxes, labels = crop_with_boxes(item(array, [40, 30, 50, 36], [2]), (32, 32),
                                             np.random.default_rng(seed), positive_fraction=1.0)
        assert out.shape == (1, 32, 32) and labels.tolist() == [2]
        x0, y0, x1, y1 = boxes[0]
        assert (x1 - x0, y1 - y0) == (10, 6)  # the box is whole inside the crop
        assert out[0, int(x0):int(x1), int(y0):int(y1)].min() == 1.0 and out.sum() == 60


def test_a_box_larger_than_the_crop_is_clipped_to_it():
    array = np.zeros((1, 100, 100), np.float32)
    _, boxes, _ = crop_with_boxes(item(array, [10, 10, 90, 90]), (32, 32), np.random.default_rng(0), 1.0)
    assert boxes.tolist() == [[0, 0, 32, 32]]


def test_a_crop_stays_inside_the_image_near_its_border():
    array = coordinates((100, 100))
    for seed in range(10):
        out, boxes, _ = crop_with_boxes(item(array, [0, 0, 10, 10]), (32, 32), np.random.default_rng(seed), 1.0)
        assert out.min() > 0  # no padding: the crop starts at the image's corner
        assert out[:, 0, 0].tolist() == [1, 1] and boxes.tolist() == [[0, 0, 10, 10]]


def test_boxes_whose_centre_leaves_the_crop_are_dropped_the_rest_shifted_and_clipped():
    array = coordinates((120, 90))
    rng = np.random.default_rng(0)
    all_boxes = np.concatenate([rng.uniform(0, 100, (40, 2)), rng.uniform(0, 70, (40, 2))], axis=1)
    all_boxes = np.concatenate([all_boxes, all_boxes + rng.uniform(2, 20, (40, 4))], axis=1)[:, [0, 2, 4, 6]]
    patch = np.asarray([32, 48])
    seen_kept = seen_dropped = 0
    for seed in range(10):
        out, boxes, labels = crop_with_boxes(item(array, all_boxes, np.arange(40)), tuple(patch),
                                             np.random.default_rng(seed), positive_fraction=0.5)
        start = out[:, 0, 0] - 1  # the crop's first voxel holds its own coordinates
        shifted = all_boxes - np.concatenate([start, start])
        centres = (shifted[:, :2] + shifted[:, 2:]) / 2
        inside = np.all((centres >= 0) & (centres < patch), axis=1)
        assert labels.tolist() == np.flatnonzero(inside).tolist()
        clipped = np.concatenate([np.clip(shifted[:, :2], 0, patch), np.clip(shifted[:, 2:], 0, patch)], axis=1)
        np.testing.assert_allclose(boxes, clipped[inside], atol=1e-4)
        seen_kept, seen_dropped = seen_kept + inside.sum(), seen_dropped + (~inside).sum()
    assert seen_kept > 0 and seen_dropped > 0


def test_an_image_smaller_than_the_patch_is_zero_padded_with_its_boxes_unchanged():
    array = coordinates((20, 12))
    out, boxes, _ = crop_with_boxes(item(array, [2, 3, 8, 9]), (32, 16), np.random.default_rng(0), 0.0)
    assert out.shape == (2, 32, 16)
    np.testing.assert_array_equal(out[:, :20, :12], array)
    assert out[:, 20:].max() == 0 and out[:, :, 12:].max() == 0
    assert boxes.tolist() == [[2, 3, 8, 9]]


def test_a_box_centred_crop_of_a_small_image_keeps_the_whole_image_and_moves_its_boxes_with_it():
    array = coordinates((20, 12))
    for seed in range(10):
        out, boxes, _ = crop_with_boxes(item(array, [2, 3, 8, 9]), (32, 16), np.random.default_rng(seed), 1.0)
        placed = np.argwhere(out[0] == 1)[0]  # where the image's first voxel went
        np.testing.assert_array_equal(out[:, placed[0]:placed[0] + 20, placed[1]:placed[1] + 12], array)
        assert boxes.tolist() == [[2 + placed[0], 3 + placed[1], 8 + placed[0], 9 + placed[1]]]


# ---- patches -----------------------------------------------------------------------------------------------


def patches(items, **options) -> BoxPatches:
    settings = {"length": 6, "positive_fraction": 0.5, "seed": 3} | options
    return BoxPatches(items, (16, 16), **settings)


def random_items(n=3):
    rng = np.random.default_rng(1)
    return [item(rng.normal(size=(1, 40, 30)), [[5, 5, 15, 12], [20, 10, 30, 25]], [0, 1]) for _ in range(n)]


def test_patches_depend_on_seed_epoch_and_index_only():
    items = random_items()
    first = patches(items, noise_std=0.1, intensity=0.1, flip_axes=(0, 1), probability=1.0)
    again = patches(items, noise_std=0.1, intensity=0.1, flip_axes=(0, 1), probability=1.0)
    for index in (0, 4, 5):
        for a, b in zip(first[index], again[index]):
            assert torch.equal(a, b)
    image, *_ = first[2]
    first.epoch = 1
    assert not torch.equal(first[2][0], image)
    first.epoch = 0
    assert torch.equal(first[2][0], image)
    assert not torch.equal(patches(items, seed=4, noise_std=0.1, probability=1.0)[2][0], image)


def test_each_epoch_passes_over_every_image_once():
    items = [item(np.full((1, 16, 16), float(k)), [2, 2, 6, 6]) for k in range(4)]
    data = patches(items, length=8)
    for epoch in (0, 1):
        data.epoch = epoch
        seen = [int(data[i][0][0, 0, 0]) for i in range(8)]
        assert sorted(seen[:4]) == [0, 1, 2, 3] and seen[4:] == seen[:4]


@pytest.mark.parametrize("axis", [0, 1])
def test_a_flip_moves_the_box_with_the_bright_pixels(axis):
    array = np.zeros((1, 16, 16), np.float32)
    array[0, 3:7, 10:15] = 1.0
    data = patches([item(array, [3, 10, 7, 15])], length=12, flip_axes=(axis,))
    flipped = 0
    for index in range(len(data)):
        out, boxes, _ = data[index]
        x0, y0, x1, y1 = boxes[0].round().int().tolist()
        bright = torch.zeros_like(out)
        bright[0, x0:x1, y0:y1] = 1.0
        assert torch.equal(out, bright)  # the box covers exactly the bright pixels
        flipped += not torch.equal(out, torch.from_numpy(array))
    assert 0 < flipped < len(data)


def test_a_3d_flip_along_the_last_axis_moves_the_box():
    array = np.zeros((1, 8, 8, 8), np.float32)
    array[0, 1:3, 2:5, 0:2] = 1.0
    data = BoxPatches([item(array, [1, 2, 0, 3, 5, 2])], (8, 8, 8), length=8, positive_fraction=0.0,
                      flip_axes=(2,))
    boxes = {tuple(data[i][1][0].tolist()) for i in range(len(data))}
    assert boxes == {(1, 2, 0, 3, 5, 2), (1, 2, 6, 3, 5, 8)}


def test_collate_stacks_images_and_keeps_boxes_per_image():
    data = patches(random_items(2), length=2)
    images, targets = collate([data[0], data[1]])

    assert images.shape == (2, 1, 16, 16) and images.dtype == torch.float32
    assert [sorted(t) for t in targets] == [["box", "label"], ["box", "label"]]
    for (_, boxes, labels), target in zip([data[0], data[1]], targets):
        assert torch.equal(target["box"], boxes) and target["box"].shape[1] == 4
        assert torch.equal(target["label"], labels) and target["label"].dtype == torch.int64
