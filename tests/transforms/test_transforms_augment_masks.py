"""BatchAugment with a label map: spatial transforms move image and mask together; intensity ones spare the mask.

The trick: when the image *is* the mask (``x = mask.float()[:, None]``), any spatial transform
must leave them equal (flips), or equal but for boundary voxels where bilinear and
nearest-neighbour interpolation differ (rotation, zoom, elastic).
"""

from __future__ import annotations

import pytest
import torch

from medlens.config import AugmentSection
from medlens.transforms import BatchAugment


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def balls(dims: int, batch: int = 3, size: int | None = None, value: int = 1) -> torch.Tensor:
    """``(B, *spatial)`` int64 masks: one off-centre ball of ``value`` per sample, at different places."""
    size = size or (32 if dims == 2 else 20)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * dims, indexing="ij"), dim=-1)
    masks = []
    for b in range(batch):
        centre = torch.tensor([size * 0.4 + b, size * 0.55 - b, size * 0.5][:dims])
        masks.append(((grid - centre).norm(dim=-1) <= size * 0.25).long() * value)
    return torch.stack(masks)


def two_labels(dims: int) -> torch.Tensor:
    """Labels 0, 2 and 5 side by side, so a bilinear mix would create 1, 3 or 4."""
    mask = balls(dims, value=2)
    inner = balls(dims, size=mask.shape[1], value=1)
    inner = torch.roll(inner, shifts=3, dims=1)
    return torch.where(inner.bool() & ~mask.bool(), torch.full_like(mask, 5), mask)


def agreement(x: torch.Tensor, mask: torch.Tensor) -> float:
    return ((x[:, 0] > 0.5) == (mask > 0)).float().mean().item()


SPATIAL = {
    "flip": AugmentSection(flip_axes=(0, 1), probability=1.0),
    "rotate": AugmentSection(rotate_deg=30.0, probability=1.0),
    "scale": AugmentSection(scale=0.3, probability=1.0),
    "translate": AugmentSection(translate=0.1, probability=1.0),
    "affine": AugmentSection(rotate_deg=20.0, scale=0.2, translate=0.05, probability=1.0),
    "elastic": AugmentSection(elastic=0.05, probability=1.0),
}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1)])
def test_flips_keep_image_and_mask_identical(dims, axes):
    mask = balls(dims)
    augment = BatchAugment(AugmentSection(flip_axes=axes, probability=0.5), dims)

    x, out = augment(mask.float()[:, None], gen(1), mask)

    assert out.dtype == torch.int64
    torch.testing.assert_close(x[:, 0], out.float(), rtol=0, atol=0)


def test_flip_moves_both():
    mask = balls(2)
    x, out = BatchAugment(AugmentSection(flip_axes=(0,), probability=1.0), 2)(mask.float()[:, None], gen(0), mask)

    torch.testing.assert_close(out, mask.flip(1))
    torch.testing.assert_close(x[:, 0], mask.flip(1).float())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kind", ["rotate", "scale", "translate", "affine", "elastic"])
def test_spatial_transforms_move_image_and_mask_together(dims, kind):
    mask = balls(dims)
    augment = BatchAugment(SPATIAL[kind], dims)

    x, out = augment(mask.float()[:, None], gen(2), mask)

    assert x.shape == (mask.shape[0], 1, *mask.shape[1:])
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert not torch.equal(out, mask)  # it did move
    assert agreement(x, out) > 0.97
    assert out.sum() > 0


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kind", ["rotate", "scale", "affine", "elastic"])
def test_mask_keeps_integer_values_from_the_original_set(dims, kind):
    mask = two_labels(dims)
    assert set(mask.unique().tolist()) == {0, 2, 5}

    _, out = BatchAugment(SPATIAL[kind], dims)(torch.randn(mask.shape[0], 2, *mask.shape[1:]), gen(3), mask)

    assert out.dtype == torch.int64
    assert set(out.unique().tolist()) <= {0, 2, 5}
    assert {2, 5} <= set(out.unique().tolist())


def test_uint8_masks_stay_uint8():
    mask = balls(3).to(torch.uint8)

    _, out = BatchAugment(SPATIAL["affine"], 3)(mask.float()[:, None], gen(0), mask)

    assert out.dtype == torch.uint8


@pytest.mark.parametrize("dims", [2, 3])
def test_gamma_keeps_each_samples_min_and_max(dims):
    x = torch.rand(4, 1, *[12] * dims, generator=gen(5)) * torch.tensor([1.0, 10.0, 100.0, 3.0]).view(4, 1, *[1] * (
        dims + 1)) - 1.0
    mask = torch.zeros(4, *[12] * dims, dtype=torch.int64)

    out, out_mask = BatchAugment(AugmentSection(gamma=0.3, probability=1.0), dims)(x, gen(6), mask)

    torch.testing.assert_close(out.flatten(1).min(1).values, x.flatten(1).min(1).values)
    torch.testing.assert_close(out.flatten(1).max(1).values, x.flatten(1).max(1).values)
    assert not torch.allclose(out, x)
    assert out_mask is mask or torch.equal(out_mask, mask)


def test_intensity_and_noise_leave_the_mask_alone():
    mask = balls(3)
    x = mask.float()[:, None]
    augment = BatchAugment(AugmentSection(intensity=0.2, noise_std=0.1, gamma=0.3, probability=1.0), 3)

    out, out_mask = augment(x, gen(0), mask)

    torch.testing.assert_close(out_mask, mask)
    assert not torch.allclose(out, x)


@pytest.mark.parametrize("dims", [2, 3])
def test_same_seed_same_output(dims):
    everything = AugmentSection(flip_axes=tuple(range(dims)), rotate_deg=15.0, scale=0.15, translate=0.05,
                                intensity=0.1, noise_std=0.1, gamma=0.3, elastic=0.05, probability=0.5)
    augment = BatchAugment(everything, dims)
    mask = balls(dims)
    x = torch.randn(mask.shape[0], 1, *mask.shape[1:], generator=gen(9))

    first = augment(x, gen(4), mask)
    second = augment(x, gen(4), mask)
    other = augment(x, gen(5), mask)

    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    torch.testing.assert_close(first[1], second[1], rtol=0, atol=0)
    assert not torch.equal(first[0], other[0])


def test_without_a_mask_only_the_image_comes_back():
    augment = BatchAugment(SPATIAL["affine"], 2)
    x = torch.randn(2, 1, 16, 16)

    out = augment(x, gen(0))

    assert isinstance(out, torch.Tensor) and out.shape == x.shape


def test_inactive_augmentation_returns_both_unchanged():
    mask = balls(2)
    x = mask.float()[:, None]

    out, out_mask = BatchAugment(AugmentSection(), 2)(x, gen(0), mask)

    assert out is x and out_mask is mask
    assert BatchAugment(AugmentSection(), 2)(x, gen(0)) is x


def test_probability_zero_changes_nothing():
    mask = balls(3)
    x = mask.float()[:, None]
    section = AugmentSection(flip_axes=(0, 1, 2), rotate_deg=30.0, scale=0.2, elastic=0.05, gamma=0.3,
                             probability=0.0)

    out, out_mask = BatchAugment(section, 3)(x, gen(0), mask)

    torch.testing.assert_close(out_mask, mask)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
