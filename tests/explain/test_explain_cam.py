"""Class activation maps, overlays and the randomisation test (library level)."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medlens.errors import ConfigError
from medlens.explain import compute_cams, hottest_point, normalize_maps, overlay_rgb, png_bytes, randomisation_check
from medlens.explain.regions import region_cam, window_around
from medlens.explain.sanity import randomised_copy, rank_correlation
from medlens.models import CLASSIFIERS, build_classifier, build_segmenter


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small convolutions: one thread is faster on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


def input_size(name: str) -> tuple[int, ...]:
    return (28, 28) if name.endswith("_2d") else (16, 16, 16) if name.startswith(("resnet", "densenet")) else (28,) * 3


@pytest.mark.parametrize("name", CLASSIFIERS.names())
def test_every_registered_classifier_gives_finite_maps_of_the_input_shape(name):
    size = input_size(name)
    torch.manual_seed(0)
    model = build_classifier(name, in_channels=2, num_classes=3, input_size=size)
    images = np.random.default_rng(0).normal(size=(2, 2, *size)).astype(np.float32)

    maps = compute_cams(model, images, class_indices=[0, 2])

    assert maps.shape == (2, *size) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() in (0.0, 1.0) for m in maps)  # each map scaled by its own peak


@pytest.mark.parametrize("name, size", [("seedcnn_2d", (28, 28)), ("resnet18_3d", (16, 16, 16))])
def test_gradcam_plus_plus_runs_in_2d_and_3d(name, size):
    torch.manual_seed(0)
    model = build_classifier(name, in_channels=1, num_classes=2, input_size=size)
    maps = compute_cams(model, np.ones((3, 1, *size), np.float32), method="gradcam++")
    assert maps.shape == (3, *size) and np.isfinite(maps).all()


def test_unknown_method_and_mismatched_classes_are_refused():
    model = build_classifier("seedcnn_2d", in_channels=1, num_classes=2, input_size=(28, 28))
    images = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(ConfigError, match="unknown explanation method 'lime'; choose one of gradcam, gradcam"):
        compute_cams(model, images, method="lime")
    with pytest.raises(ConfigError, match="1 target classes for 2 images"):
        compute_cams(model, images, class_indices=[1])


def test_normalize_maps_scales_each_map_by_its_peak_and_keeps_zero_maps_zero():
    maps = np.array([[[0.0, 2.0], [1.0, -1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_allclose(normalize_maps(maps), [[[0, 1], [0.5, 0]], [[0, 0], [0, 0]]])


def test_the_heat_map_finds_the_finding_where_it_was_put(blob_model, make_blob_images):
    model, _ = blob_model
    test = make_blob_images(120, seed=9)
    positive = test.labels == 1
    assert (model(torch.from_numpy(test.images)).argmax(1).numpy() == test.labels).mean() >= 0.95

    maps = compute_cams(model, test.images[positive], class_indices=np.ones(positive.sum(), int))

    hits = [np.hypot(*(np.asarray(hottest_point(m)) - c)) <= 4 for m, c in zip(maps, test.centres[positive])]
    assert np.mean(hits) >= 0.9, f"hottest point within 4 px of the blob in {np.mean(hits):.0%} of the images"


def test_randomisation_check_passes_a_trained_model_and_flags_an_untrained_one(blob_model, make_blob_images):
    model, initial = blob_model
    images = make_blob_images(40, seed=5).images

    trained = randomisation_check(model, initial, images)
    # a network that never left its initial weights, checked against them as `medlens explain` does
    untrained = randomisation_check(initial, copy.deepcopy(initial), images)

    assert trained["passed"] and trained["spearman_mean"] < 0.5 and trained["n_images"] == 40
    assert not untrained["passed"] and untrained["spearman_mean"] > 0.99
    assert "barely change" in untrained["message"]


def test_rank_correlation_hand_cases():
    assert rank_correlation(np.array([1, 2, 3]), np.array([10, 20, 30])) == pytest.approx(1.0)
    assert rank_correlation(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert rank_correlation(np.zeros(3), np.array([1, 2, 3])) == 0.0


def test_randomised_copy_redraws_every_weight_and_leaves_the_model_alone():
    model = build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(28, 28))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clone = randomised_copy(model, seed=3)
    weights = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point and v.ndim > 1]
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert all(not torch.equal(model.state_dict()[k], clone.state_dict()[k]) for k in weights)


def test_overlay_2d_shows_rows_as_y_and_enlarges_small_images():
    image = np.zeros((1, 8, 4), np.float32)  # X = 8 columns, Y = 4 rows
    cam = np.zeros((8, 4), np.float32)
    cam[7, 0] = 1.0  # last column, first row

    rgb = overlay_rgb(image, cam)

    assert rgb.dtype == np.uint8 and rgb.shape == (256, 512, 3)
    top_right, bottom_left = rgb[:64, -64:].astype(int), rgb[-64:, :64].astype(int)
    assert np.ptp(top_right, axis=-1).mean() > 50 and np.ptp(bottom_left, axis=-1).max() == 0  # colour vs grey


def test_overlay_3d_puts_three_slices_through_the_hottest_voxel_side_by_side():
    cam = np.zeros((10, 12, 6), np.float32)
    cam[2, 3, 4] = 1.0
    rgb = overlay_rgb(np.random.default_rng(0).random((1, 10, 12, 6)), cam, spacing_mm=(1.0, 1.0, 2.0))
    assert hottest_point(cam) == (2, 3, 4)
    assert rgb.ndim == 3 and rgb.shape[1] > 2 * rgb.shape[0]  # three panels
    decoded = PILImage.open(io.BytesIO(png_bytes(rgb)))
    assert decoded.format == "PNG" and decoded.size == (rgb.shape[1], rgb.shape[0])


def test_overlay_refuses_a_map_of_another_shape():
    with pytest.raises(ValueError, match=r"image \(4, 4\) and heat map \(3, 3\)"):
        overlay_rgb(np.zeros((1, 4, 4)), np.zeros((3, 3)))


def test_region_cam_covers_the_training_window_around_the_region():
    torch.manual_seed(0)
    model = build_segmenter("unet_3d", in_channels=1, num_classes=2, filters=(4, 8, 16),
                            strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), kernels=((3, 3, 3),) * 3)
    array = np.random.default_rng(0).normal(size=(1, 40, 24, 24)).astype(np.float32)
    region = np.zeros((40, 24, 24), bool)
    region[30:34, 10:14, 10:14] = True

    cam = region_cam(model, array, region, 1, (16, 16, 16))

    window = window_around(region, (16, 16, 16))
    assert window[0] == slice(24, 40)  # centred on the region, clipped to the image
    outside = np.ones_like(region)
    outside[window] = False
    assert cam.shape == region.shape and np.isfinite(cam).all() and cam.max() == pytest.approx(1.0)
    assert not cam[outside].any()
