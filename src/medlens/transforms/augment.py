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
    """Random flips, affine, elastic, intensity scale/shift, gamma and Gaussian noise on ``(B, C, *spatial)``.

    Given a label map ``mask (B, *spatial)`` as well, the spatial transforms move it with the image
    (nearest neighbour) and ``(x, mask)`` is returned.
    """

    def __init__(self, augment: AugmentSection, spatial_dims: int):
        super().__init__()
        self.cfg, self.dims = augment, spatial_dims
        from monai.networks.layers import AffineTransform

        self.warp = AffineTransform(normalized=True, padding_mode="zeros", align_corners=False)
        self.warp_labels = AffineTransform(normalized=True, mode="nearest", padding_mode="zeros", align_corners=False)

    @property
    def active(self) -> bool:
        c = self.cfg
        return bool(c.flip_axes or c.rotate_deg or c.scale or c.translate or c.intensity or c.noise_std
                    or c.gamma or c.elastic)

    def forward(self, x: torch.Tensor, generator: torch.Generator, mask: torch.Tensor | None = None):
        if not self.active:
            return x if mask is None else (x, mask)
        x, mask = self._flip(x, generator, mask)
        if self.cfg.rotate_deg or self.cfg.scale or self.cfg.translate:
            x, mask = self._affine(x, generator, mask)
        if self.cfg.elastic:
            x, mask = self._elastic(x, generator, mask)
        if self.cfg.gamma:
            x = self._gamma(x, generator)
        if self.cfg.intensity:
            x = self._intensity(x, generator)
        if self.cfg.noise_std:
            chosen = self._chosen(x, generator).view(-1, *[1] * (x.ndim - 1))
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + chosen * noise * self.cfg.noise_std
        return x if mask is None else (x, mask)

    def _chosen(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A 0/1 float per sample: whether this transform applies to it."""
        draw = torch.rand(x.shape[0], generator=generator, device=x.device)
        return (draw < self.cfg.probability).to(x.dtype)

    def _flip(self, x: torch.Tensor, generator: torch.Generator, mask: torch.Tensor | None):
        for axis in self.cfg.flip_axes:
            chosen = self._chosen(x, generator).bool()
            if chosen.any():
                x = torch.where(chosen.view(-1, *[1] * (x.ndim - 1)), x.flip(2 + axis), x)
                if mask is not None:
                    mask = torch.where(chosen.view(-1, *[1] * (mask.ndim - 1)), mask.flip(1 + axis), mask)
        return x, mask

    def _affine(self, x: torch.Tensor, generator: torch.Generator, mask: torch.Tensor | None):
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
        theta = torch.cat([linear, shift[:, :, None]], dim=2).to(x.dtype)
        if mask is not None:
            mask = self.warp_labels(mask[:, None].to(x.dtype), theta)[:, 0].round().to(mask.dtype)
        return self.warp(x, theta), mask

    def _elastic(self, x: torch.Tensor, generator: torch.Generator, mask: torch.Tensor | None):
        """A smooth random displacement (coarse 4^D noise, up-sampled) of up to ``elastic`` x the patch."""
        b, d = x.shape[0], self.dims
        chosen = self._chosen(x, generator).view(b, *[1] * (d + 1))
        coarse = torch.rand(b, d, *[4] * d, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        mode = "bilinear" if d == 2 else "trilinear"
        field = torch.nn.functional.interpolate(coarse, size=x.shape[2:], mode=mode, align_corners=True)
        field = field * 2 * self.cfg.elastic * chosen  # normalised coordinates span 2
        axes = [torch.linspace(-1, 1, n, device=x.device, dtype=x.dtype) for n in x.shape[2:]]
        identity = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)  # grid_sample wants (x, y[, z])
        grid = identity[None] + torch.movedim(field, 1, -1).flip(-1)
        warped = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        if mask is not None:
            mask = torch.nn.functional.grid_sample(mask[:, None].to(x.dtype), grid, mode="nearest",
                                                   padding_mode="zeros", align_corners=True)[:, 0].to(mask.dtype)
        return warped, mask

    def _gamma(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per sample, ``((x - min) / range) ** g * range + min`` with ``g`` in ``[1 - gamma, 1 + gamma]``."""
        b, shape = x.shape[0], [x.shape[0]] + [1] * (x.ndim - 1)
        chosen = self._chosen(x, generator).view(shape)
        g = 1 + (torch.rand(b, generator=generator, device=x.device).view(shape) * 2 - 1) * self.cfg.gamma
        low = x.flatten(1).min(dim=1).values.view(shape)
        span = (x.flatten(1).max(dim=1).values.view(shape) - low).clamp_min(1e-8)
        adjusted = ((x - low) / span).clamp(0, 1) ** g * span + low
        return torch.where(chosen.bool(), adjusted, x)

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
