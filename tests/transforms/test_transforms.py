"""Preprocessor (channels, intensity, NaN, resize, errors) and BatchAugment (seeding, flips, rotations)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from medlens.config import AugmentSection, DataSection
from medlens.errors import ConfigError, DatasetError
from medlens.io import Image, identity_direction
from medlens.transforms import BatchAugment, Preprocessor, flip_variants
from medlens.transforms.augment import rotation_matrices


def prep(input_size=(4, 4), channels=1, normalization="none", intensity_range=()) -> Preprocessor:
    return Preprocessor(DataSection(input_size=input_size, channels=channels, normalization=normalization,
                                    intensity_range=intensity_range))


def image(array: np.ndarray) -> Image:
    dims = array.ndim - 1
    return Image(array, (0.5,) * dims, (0.0,) * dims, identity_direction(dims))


# ---- channels ---------------------------------------------------------------------------------

def test_grey_is_repeated_to_three_channels():
    grey = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)

    out = prep(channels=3)(image(grey))

    assert out.shape == (3, 4, 4) and out.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(out[c], grey[0].astype(np.float32))


def test_rgb_is_averaged_to_grey():
    rgb = np.stack([np.full((4, 4), 30), np.full((4, 4), 60), np.full((4, 4), 120)]).astype(np.uint8)

    out = prep(channels=1)(rgb)

    assert out.shape == (1, 4, 4)
    np.testing.assert_allclose(out, 70.0)


def test_rgba_alpha_is_ignored():
    rgba = np.stack([np.full((4, 4), 30), np.full((4, 4), 60), np.full((4, 4), 120), np.full((4, 4), 255)])

    np.testing.assert_allclose(prep(channels=1)(rgba.astype(np.uint8)), 70.0)


def test_two_channels_when_three_expected_are_refused():
    with pytest.raises(DatasetError, match=r"case_7\.png: 2 channels but the plan expects 3; .*data\.channels"):
        prep(channels=3)(np.zeros((2, 4, 4), np.float32), where="case_7.png")


def test_image_and_raw_array_give_the_same_result():
    array = np.random.default_rng(0).normal(size=(1, 6, 6)).astype(np.float32)
    p = prep(input_size=(6, 6), normalization="zscore")

    np.testing.assert_array_equal(p(image(array)), p(array))


def test_input_array_is_not_modified():
    array = np.array([[[np.nan, 1.0], [2.0, 3.0]]], dtype=np.float32)
    before = array.copy()

    prep(input_size=(2, 2), normalization="zscore")(array)

    np.testing.assert_array_equal(array, before)


# ---- intensity --------------------------------------------------------------------------------

def test_scale01_maps_the_range_and_clips():
    array = np.array([[[-10.0, 0.0], [127.5, 255.0], [300.0, 51.0]]], dtype=np.float32)  # (1, 3, 2)

    out = prep(input_size=(3, 2), normalization="scale01", intensity_range=(0.0, 255.0))(array)

    np.testing.assert_allclose(out, [[[0.0, 0.0], [0.5, 1.0], [1.0, 0.2]]], atol=1e-6)


def test_ct_window():
    hu = np.array([[[-2000.0, -1000.0], [0.0, 500.0], [1000.0, 3000.0]]], dtype=np.float32)

    out = prep(input_size=(3, 2), normalization="ct_window", intensity_range=(-1000.0, 1000.0))(hu)

    np.testing.assert_allclose(out, [[[0.0, 0.0], [0.5, 0.75], [1.0, 1.0]]], atol=1e-6)


def test_zscore_per_channel():
    rng = np.random.default_rng(1)
    array = np.stack([rng.normal(100, 20, (8, 8)), rng.normal(-5, 0.1, (8, 8)), rng.uniform(0, 1, (8, 8))])

    out = prep(input_size=(8, 8), channels=3, normalization="zscore")(array.astype(np.float32))

    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1.0, atol=1e-4)


def test_zscore_hand_computed():
    out = prep(input_size=(2, 2), normalization="zscore")(np.array([[[1.0, 3.0], [1.0, 3.0]]], dtype=np.float32))

    np.testing.assert_allclose(out, [[[-1.0, 1.0], [-1.0, 1.0]]], atol=1e-6)


def test_zscore_of_a_constant_image_is_zero():
    out = prep(input_size=(3, 3), normalization="zscore")(np.full((1, 3, 3), 7.0, np.float32))

    np.testing.assert_array_equal(out, 0.0)


def test_nan_becomes_zero_after_normalisation():
    array = np.array([[[np.nan, 2.0], [3.0, 4.0]]], dtype=np.float32)

    scaled = prep(input_size=(2, 2), normalization="scale01", intensity_range=(0.0, 10.0))(array)
    zscored = prep(input_size=(2, 2), normalization="zscore")(array)
    raw = prep(input_size=(2, 2), normalization="none")(array)

    np.testing.assert_allclose(scaled, [[[0.0, 0.2], [0.3, 0.4]]], atol=1e-6)
    # the statistics ignore the NaN: mean 3, std sqrt(2/3)
    np.testing.assert_allclose(zscored, [[[0.0, -1.224745], [0.0, 1.224745]]], atol=1e-5)
    np.testing.assert_allclose(raw, [[[0.0, 2.0], [3.0, 4.0]]])


def test_infinite_voxels_are_clipped_by_scale01():
    array = np.array([[[np.inf, 2.0], [-np.inf, 4.0]]], dtype=np.float32)

    out = prep(input_size=(2, 2), normalization="scale01", intensity_range=(0.0, 10.0))(array)

    np.testing.assert_allclose(out, [[[1.0, 0.2], [0.0, 0.4]]], atol=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_zscore_of_an_image_with_one_infinite_voxel_keeps_the_others():
    array = np.array([[[np.inf, 2.0], [3.0, 4.0]]], dtype=np.float32)

    out = prep(input_size=(2, 2), normalization="zscore")(array)

    assert np.isfinite(out).all()
    assert out[0, 0, 1] < out[0, 1, 0] < out[0, 1, 1]  # the finite voxels keep their order


def test_missing_intensity_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.intensity_range must be \[low, high\] for normalization=scale01, "
                                          r"found \[\]; e\.g\. --set data\.intensity_range=\[0,255\]"):
        prep(normalization="scale01")
    with pytest.raises(ConfigError, match=r"normalization=ct_window, found \[-1000\.0\]"):
        prep(normalization="ct_window", intensity_range=(-1000.0,))


# ---- resize -----------------------------------------------------------------------------------

def test_shrinking_2d_averages_blocks():
    array = np.arange(16, dtype=np.float32).reshape(1, 4, 4)

    out = prep(input_size=(2, 2))(array)

    # the mean of each 2 x 2 block: (0+1+4+5)/4 = 2.5, ...
    np.testing.assert_allclose(out, [[[2.5, 4.5], [10.5, 12.5]]], atol=1e-5)


def test_enlarging_2d_is_bilinear():
    array = np.array([[[0.0, 0.0], [1.0, 1.0]]], dtype=np.float32)  # (1, X=2, Y=2), varies along X

    out = prep(input_size=(4, 4))(array)

    # half-pixel centres: source x = -0.25, 0.25, 0.75, 1.25 -> clamped 0, 0.25, 0.75, 1
    expected = np.array([0.0, 0.25, 0.75, 1.0])[:, None] * np.ones((1, 4))
    assert out.shape == (1, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_non_square_resize_keeps_the_axis_order():
    array = np.zeros((1, 8, 4), np.float32)
    array[0, :4] = 1.0  # the first half along X

    out = prep(input_size=(4, 2))(array)

    np.testing.assert_allclose(out[0], [[1, 1], [1, 1], [0, 0], [0, 0]], atol=1e-6)


def test_shrinking_3d_averages_blocks():
    array = np.arange(64, dtype=np.float32).reshape(1, 4, 4, 4)

    out = prep(input_size=(2, 2, 2))(array)

    expected = array.reshape(1, 2, 2, 2, 2, 2, 2).mean(axis=(2, 4, 6))
    assert out.shape == (1, 2, 2, 2)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_enlarging_3d_is_trilinear():
    array = np.zeros((1, 2, 2, 2), np.float32)
    array[0, :, :, 1] = 1.0  # varies along Z

    out = prep(input_size=(3, 3, 4))(array)

    assert out.shape == (1, 3, 3, 4)
    np.testing.assert_allclose(out[0, 1, 2], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[0, :, :, 2], 0.75, atol=1e-6)


def test_native_size_is_kept_unchanged():
    array = np.random.default_rng(2).uniform(size=(1, 5, 7)).astype(np.float32)

    np.testing.assert_array_equal(prep(input_size=(5, 7))(array), array)


def test_wrong_dimensionality_names_both():
    with pytest.raises(DatasetError, match=r"vol\.nii: a 3D image \(shape \(4, 4, 4\)\) but the model takes 2D input "
                                           r"\(4, 4\); use a 3D dataset or model"):
        prep(input_size=(4, 4))(np.zeros((1, 4, 4, 4), np.float32), where="vol.nii")
    with pytest.raises(DatasetError, match=r"a 2D image .* takes 3D input \(4, 4, 4\)"):
        prep(input_size=(4, 4, 4))(np.zeros((1, 4, 4), np.float32))


# ---- augmentation -----------------------------------------------------------------------------

def batch(dims: int, b: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 2, *(size,) * dims, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


EVERYTHING = AugmentSection(flip_axes=(0, 1), rotate_deg=20.0, scale=0.1, translate=0.1, intensity=0.2,
                            noise_std=0.05, probability=0.8)


def test_all_zero_ranges_are_inactive_and_return_the_batch():
    augment = BatchAugment(AugmentSection(), spatial_dims=2)
    x = batch(2)

    assert not augment.active
    assert augment(x, gen(0)) is x


def test_probability_zero_leaves_the_batch_unchanged():
    augment = BatchAugment(dataclasses.replace(EVERYTHING, probability=0.0), spatial_dims=2)
    x = batch(2)

    assert augment.active
    torch.testing.assert_close(augment(x, gen(0)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_same_seed_same_output(dims):
    augment = BatchAugment(EVERYTHING, spatial_dims=dims)
    x = batch(dims)

    torch.testing.assert_close(augment(x, gen(7)), augment(x, gen(7)), atol=0, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_different_seeds_different_output(dims):
    augment = BatchAugment(EVERYTHING, spatial_dims=dims)
    x = batch(dims)

    assert not torch.allclose(augment(x, gen(1)), augment(x, gen(2)))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_are_kept(dims, dtype):
    x = batch(dims).to(dtype)
    x = x[..., :-1]  # a non-square grid

    out = BatchAugment(EVERYTHING, spatial_dims=dims)(x, gen(0))

    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert not torch.equal(out, x)


@pytest.mark.parametrize(("dims", "axis"), [(2, 0), (2, 1), (3, 0), (3, 2)])
def test_flip_with_probability_one(dims, axis):
    augment = BatchAugment(AugmentSection(flip_axes=(axis,), probability=1.0), spatial_dims=dims)
    x = batch(dims)

    torch.testing.assert_close(augment(x, gen(0)), x.flip(2 + axis), atol=0, rtol=0)


def test_flip_on_two_axes_with_probability_one():
    augment = BatchAugment(AugmentSection(flip_axes=(0, 1), probability=1.0), spatial_dims=2)
    x = batch(2)

    torch.testing.assert_close(augment(x, gen(0)), x.flip(2).flip(3), atol=0, rtol=0)


def test_flip_picks_samples_independently():
    augment = BatchAugment(AugmentSection(flip_axes=(0,), probability=0.5), spatial_dims=2)
    x = batch(2, b=64)

    out = augment(x, gen(3))

    flipped = [torch.equal(out[i], x[i].flip(1)) for i in range(64)]
    kept = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 <= sum(flipped) <= 48


def test_intensity_with_probability_one_is_a_per_sample_affine_map():
    augment = BatchAugment(AugmentSection(intensity=0.3, probability=1.0), spatial_dims=2)
    x = batch(2, b=3)

    out = augment(x, gen(0))

    for i in range(3):  # out = a * x + b per sample: exactly linear in x
        a, b = np.polyfit(x[i].flatten().numpy(), out[i].flatten().numpy(), 1)
        np.testing.assert_allclose(out[i].numpy(), a * x[i].numpy() + b, atol=1e-5)
        assert 0.7 - 1e-6 <= a <= 1.3 + 1e-6


def test_noise_has_the_configured_size():
    augment = BatchAugment(AugmentSection(noise_std=0.1, probability=1.0), spatial_dims=2)
    x = torch.zeros(8, 1, 32, 32)

    out = augment(x, gen(0))

    assert out.std().item() == pytest.approx(0.1, rel=0.1)


def test_rotation_matrix_2d_90_degrees():
    r = rotation_matrices(torch.tensor([[math.pi / 2]]), 2)

    torch.testing.assert_close(r, torch.tensor([[[0.0, -1.0], [1.0, 0.0]]]), atol=1e-6, rtol=0)


def test_rotation_matrices_3d_about_each_axis():
    angles = torch.tensor([[math.pi / 2, 0.0, 0.0], [0.0, math.pi / 2, 0.0], [0.0, 0.0, math.pi / 2]])

    r = rotation_matrices(angles, 3)

    expected = torch.tensor([[[1.0, 0, 0], [0, 0, -1], [0, 1, 0]],  # about x
                             [[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]],  # about y
                             [[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]])  # about z
    torch.testing.assert_close(r, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_rotation_matrices_are_orthonormal_with_determinant_one(dims):
    angles = torch.rand(16, 1 if dims == 2 else 3, generator=gen(0)) * 2 * math.pi - math.pi

    r = rotation_matrices(angles, dims).double()

    eye = torch.eye(dims, dtype=torch.float64).expand(16, dims, dims)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(16, dtype=torch.float64), atol=1e-6, rtol=0)


def test_zero_angles_give_identity():
    torch.testing.assert_close(rotation_matrices(torch.zeros(2, 3), 3), torch.eye(3).expand(2, 3, 3))


def test_flip_variants():
    x = batch(3)

    variants = flip_variants(x, (0, 2))

    assert len(variants) == 3
    assert variants[0] is x
    torch.testing.assert_close(variants[1], x.flip(2), atol=0, rtol=0)
    torch.testing.assert_close(variants[2], x.flip(4), atol=0, rtol=0)
    assert flip_variants(x, ()) == [x]
