"""Training augmentation applied to whole batches on the training device.

Per-sample CPU transforms cost more than the network itself on small images (a MONAI
``RandAffine`` takes about 0.8 ms per 28x28 image, a whole PneumoniaMNIST epoch of compute
takes a few seconds), so the recipe draws one random transform per sample and applies them to
the batch at once: MONAI's batched ``AffineTransform`` for rotation / zoom / shift, tensor ops
for flips, intensity and noise. Randomness comes from a ``torch.Generator`` the caller seeds,
so a resumed run repeats exactly the augmentation of an uninterrupted one.
"""

from __future__ import annotations

import math

import torch

from medlens.config import AugmentSection


class BatchAugment(torch.nn.Module):
    """Random flips, affine, intensity scale/shift and Gaussian noise on ``(B, C, *spatial)``."""

    def __init__(self, augment: AugmentSection, spatial_dims: int):
        super().__init__()
        self.cfg, self.dims = augment, spatial_dims
        from monai.networks.layers import AffineTransform

        self.warp = AffineTransform(normalized=True, padding_mode="zeros", align_corners=False)

    @property
    def active(self) -> bool:
        c = self.cfg
        return bool(c.flip_axes or c.rotate_deg or c.scale or c.translate or c.intensity or c.noise_std)

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.active:
            return x
        x = self._flip(x, generator)
        if self.cfg.rotate_deg or self.cfg.scale or self.cfg.translate:
            x = self._affine(x, generator)
        if self.cfg.intensity:
            x = self._intensity(x, generator)
        if self.cfg.noise_std:
            chosen = self._chosen(x, generator).view(-1, *[1] * (x.ndim - 1))
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + chosen * noise * self.cfg.noise_std
        return x

    def _chosen(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A 0/1 float per sample: whether this transform applies to it."""
        draw = torch.rand(x.shape[0], generator=generator, device=x.device)
        return (draw < self.cfg.probability).to(x.dtype)

    def _flip(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for axis in self.cfg.flip_axes:
            chosen = self._chosen(x, generator).bool()
            if chosen.any():
                x = torch.where(chosen.view(-1, *[1] * (x.ndim - 1)), x.flip(2 + axis), x)
        return x

    def _affine(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Rotate (about the centre, in millimetre-free pixel units), zoom and shift each sample."""
        b, device, d = x.shape[0], x.device, self.dims
        chosen = self._chosen(x, generator)
        uniform = lambda *shape: torch.rand(*shape, generator=generator, device=device) * 2 - 1  # noqa: E731
        angles = uniform(b, 1 if d == 2 else 3) * math.radians(self.cfg.rotate_deg) * chosen[:, None]
        zoom = 1 + uniform(b, 1) * self.cfg.scale * chosen[:, None]
        shift = uniform(b, d) * 2 * self.cfg.translate * chosen[:, None]  # normalised coords span 2
        size = torch.tensor(x.shape[2:], device=device, dtype=x.dtype)
        to_pixels, to_unit = torch.diag(size / 2), torch.diag(2 / size)  # keep rotations rigid on non-square grids
        linear = to_unit @ rotation_matrices(angles, d) @ to_pixels / zoom[:, :, None]
        theta = torch.cat([linear, shift[:, :, None]], dim=2)
        return self.warp(x, theta.to(x.dtype))

    def _intensity(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, shape = x.shape[0], [x.shape[0]] + [1] * (x.ndim - 1)
        chosen = self._chosen(x, generator).view(shape)
        factor = 1 + (torch.rand(b, generator=generator, device=x.device).view(shape) * 2 - 1) * self.cfg.intensity
        offset = (torch.rand(b, generator=generator, device=x.device).view(shape) * 2 - 1) * self.cfg.intensity
        std = x.flatten(1).std(dim=1).view(shape)
        return x + chosen * (x * (factor - 1) + offset * std)


def rotation_matrices(angles: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Rotation matrices ``(B, D, D)`` from angles ``(B, 1)`` in 2D or Euler angles ``(B, 3)`` in 3D."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])
    if spatial_dims == 2:
        return torch.stack([torch.stack([cos[:, 0], -sin[:, 0]], -1), torch.stack([sin[:, 0], cos[:, 0]], -1)], 1)
    rx = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos[:, 0], -sin[:, 0]], -1),
                      torch.stack([zero, sin[:, 0], cos[:, 0]], -1)], 1)
    ry = torch.stack([torch.stack([cos[:, 1], zero, sin[:, 1]], -1), torch.stack([zero, one, zero], -1),
                      torch.stack([-sin[:, 1], zero, cos[:, 1]], -1)], 1)
    rz = torch.stack([torch.stack([cos[:, 2], -sin[:, 2], zero], -1), torch.stack([sin[:, 2], cos[:, 2], zero], -1),
                      torch.stack([zero, zero, one], -1)], 1)
    return rz @ ry @ rx


def flip_variants(x: torch.Tensor, flip_axes: tuple[int, ...]) -> list[torch.Tensor]:
    """Test-time augmentation inputs: the batch itself plus one mirrored copy per flip axis."""
    return [x] + [x.flip(2 + axis) for axis in flip_axes]
