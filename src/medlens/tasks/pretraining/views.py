"""Two augmented views of every image: what contrastive pretraining learns to match.

A view is a random crop (at least ``pretrain.crop_scale`` of each axis, anywhere in the image) resized back
to the input size, then the plan's medical augmentations (:class:`~medlens.transforms.BatchAugment`: flips,
rotation, zoom, intensity scale/shift, gamma, noise). There is no colour jitter and no grey-scale
conversion: on grey scans they would teach nothing, and on stained slides intensity scale/shift plays
their part. The crop is one batched affine resampling (MONAI's ``AffineTransform``), 2D or 3D alike.
"""

from __future__ import annotations

import torch

from medlens.config import Config
from medlens.transforms import BatchAugment


def two_views(images: torch.Tensor, config: Config, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views (B, C, *S) of a batch (B, C, *S), same shape, 2D or 3D.

    Args:
        images: preprocessed images ``(B, C, *S)`` with ``len(S)`` 2 or 3.
        config: the run's configuration: ``pretrain.crop_scale`` and the ``augment`` section.
        generator: the source of every random draw, on the images' device; the same generator state
            gives the same views.

    Returns:
        ``(view_a, view_b)``, each ``(B, C, *S)`` with the images' dtype and device.

    Raises:
        ValueError: images that are not ``(B, C, H, W)`` or ``(B, C, D, H, W)``, or a crop scale outside (0, 1].
    """
    if images.ndim not in (4, 5):
        raise ValueError(f"two_views: expected images (B, C, H, W) or (B, C, D, H, W), got shape "
                         f"{tuple(images.shape)}; add the batch and channel axes")
    scale = config.pretrain.crop_scale
    if not 0 < scale <= 1:
        raise ValueError(f"pretrain.crop_scale={scale}: expected a share of each axis in (0, 1]; set e.g. 0.5")
    augment = BatchAugment(config.augment, images.ndim - 2).to(images.device)
    return tuple(augment(random_crops(images, scale, generator), generator) for _ in range(2))


def random_crops(images: torch.Tensor, crop_scale: float, generator: torch.Generator) -> torch.Tensor:
    """One random crop per image, resized back (linear interpolation) to the image's own size.

    Each axis keeps a share drawn uniformly from ``[crop_scale, 1]`` (axes drawn independently, so the
    aspect ratio changes too, as in SimCLR's random resized crop), at a uniformly drawn position.

    Args:
        images: ``(B, C, *S)``.
        crop_scale: the smallest share of an axis a crop keeps.
        generator: on the images' device.

    Returns:
        ``(B, C, *S)``.
    """
    from monai.networks.layers import AffineTransform

    b, dims, device = images.shape[0], images.ndim - 2, images.device
    share = crop_scale + (1 - crop_scale) * torch.rand(b, dims, generator=generator, device=device)
    # normalised coordinates span [-1, 1]: a crop of share s may be centred anywhere in [-(1 - s), 1 - s]
    centre = (torch.rand(b, dims, generator=generator, device=device) * 2 - 1) * (1 - share)
    theta = torch.cat([torch.diag_embed(share), centre[:, :, None]], dim=2).to(images.dtype)
    # theta in array-axis order (MONAI reverses to grid_sample's x, y[, z]); maps output to input coordinates
    warp = AffineTransform(normalized=True, padding_mode="border", align_corners=False)
    return warp(images, theta)
