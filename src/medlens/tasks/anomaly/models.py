"""The anomaly networks: images ``(B, C, *input_size)`` in, an anomaly map ``(B, 1, *input_size)`` out.

* :class:`PatchCoreModel` (Roth et al., CVPR 2022): a registry classifier's encoder, kept under
  ``backbone`` with the classifier's own key names (so ``--init-from`` a classification or pretraining
  run, or converted ImageNet weights, loads into it), and a memory bank of normal patch features
  (the ``memory`` buffer, saved with the weights). Patch features are the outputs of two intermediate
  stages, each averaged over its 3x3(x3) neighbourhood, the deeper one upsampled to the shallower
  one's grid, concatenated; a patch scores its distance to the nearest memory vector(s).
* :class:`AutoencoderModel`: MONAI's ``AutoEncoder`` trained to reconstruct normal images; the map is
  the squared reconstruction error.

Both maps are upsampled to the input grid and smoothed by a Gaussian; the image score is the map's
maximum (:func:`image_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medlens.errors import ConfigError
from medlens.tasks.anomaly.memory import nearest_distances

#: the stages patch features come from, and the modules that run before them, per classifier family
TRUNKS = {
    "resnet": (("conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3"), ("layer2", "layer3")),
    "seedcnn": (("features.0", "features.1", "features.2"), ("features.1", "features.2")),
}
SIGMA_PER_VOXEL = 4 / 224  # PatchCore smooths its 224-pixel maps with sigma 4


def trunk_of(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(modules run in order, the two stages tapped)`` for registry classifier ``name``.

    Raises:
        ConfigError: a family without a known pair of intermediate stages.
    """
    family = name.rsplit("_", 1)[0]
    for prefix, trunk in TRUNKS.items():
        if family.startswith(prefix):
            return trunk
    raise ConfigError(f"model.name={name}: patchcore taps two intermediate stages of a ResNet or SeedCNN encoder; "
                      f"use one of resnet18/34/50 or seedcnn (_2d / _3d), or anomaly.method=autoencoder")


class GaussianSmoothing(nn.Module):
    """Separable Gaussian smoothing of ``(B, 1, *S)`` maps, edges replicated; the kernel is not saved."""

    def __init__(self, spatial_dims: int, sigma_vox: float):
        super().__init__()
        radius = max(int(math.ceil(3 * sigma_vox)), 1)
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (x / max(sigma_vox, 1e-6)) ** 2)
        self.register_buffer("kernel", kernel / kernel.sum(), persistent=False)
        self.spatial_dims, self.radius, self.width = spatial_dims, radius, 2 * radius + 1

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        conv = F.conv2d if self.spatial_dims == 2 else F.conv3d
        for axis in range(self.spatial_dims):
            shape = [1, 1] + [1] * self.spatial_dims
            shape[2 + axis] = self.width
            pad = [0, 0] * self.spatial_dims
            pad[2 * (self.spatial_dims - 1 - axis)] = pad[2 * (self.spatial_dims - 1 - axis) + 1] = self.radius
            maps = conv(F.pad(maps, pad, mode="replicate"), self.kernel.view(shape))
        return maps


class PatchCoreModel(nn.Module):
    """A classifier's encoder and a memory bank of normal patch features.

    Args:
        classifier: a registry :class:`~medlens.models.Classifier` (ResNet or SeedCNN); its ``backbone``
            is kept, its head dropped.
        memory_size: ``M``, rows of the memory bank (zeros until :meth:`fill_memory`).
        neighbours: nearest memory vectors averaged into a patch's distance.

    Shapes: ``forward``: ``(B, C, *input_size) -> (B, 1, *input_size)``; ``patch_features``:
    ``(B, C, *input_size) -> (B, D, *grid)``; ``memory``: ``(M, D)``.
    """

    def __init__(self, classifier: nn.Module, *, memory_size: int, neighbours: int = 1):
        super().__init__()
        self.name, self.input_size = classifier.name, tuple(classifier.input_size)
        self.in_channels, self.num_features = classifier.in_channels, classifier.num_features
        self.backbone = classifier.backbone
        trunk, self.taps = trunk_of(self.name)
        self.trunk = [n for n in trunk if n != "maxpool" or not getattr(self.backbone, "no_max_pool", False)]
        self.neighbours = neighbours
        self.smooth = GaussianSmoothing(len(self.input_size), max(self.input_size) * SIGMA_PER_VOXEL)
        with torch.no_grad():
            probe = self.patch_features(torch.zeros(1, self.in_channels, *self.input_size))
        self.grid = tuple(probe.shape[2:])
        self.register_buffer("memory", torch.zeros(memory_size, probe.shape[1]))

    @property
    def feature_dim(self) -> int:
        """``D``, the length of a patch feature."""
        return int(self.memory.shape[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, num_features)``, as the classifier's (what contrastive pretraining trains)."""
        return self.backbone(x)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """No head: every parameter belongs to the encoder."""
        return iter(())

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Locally averaged features of the two tapped stages on the first one's grid, ``(B, D, *grid)``."""
        tapped = []
        for name in self.trunk:
            x = self.backbone.get_submodule(name)(x)
            if name in self.taps:
                tapped.append(_local_average(x))
        grid = tapped[0].shape[2:]
        mode = "bilinear" if len(grid) == 2 else "trilinear"
        deeper = [F.interpolate(t, size=grid, mode=mode, align_corners=False) for t in tapped[1:]]
        return torch.cat([tapped[0], *deeper], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The anomaly map ``(B, 1, *input_size)``: each patch's distance to the memory, upsampled, smoothed."""
        features = self.patch_features(x)
        b, d = features.shape[:2]
        queries = features.flatten(2).transpose(1, 2).reshape(-1, d)
        distances = nearest_distances(queries, self.memory, self.neighbours).reshape(b, 1, *features.shape[2:])
        return self.smooth(_to_input(distances, self.input_size))

    @torch.no_grad()
    def fill_memory(self, features: torch.Tensor, *, seed: int = 0) -> int:
        """Keep the greedy k-center coreset of ``features (N, D)`` as the memory; returns how many are distinct.

        When ``N < M`` every feature is kept and the rows left over repeat them (a repeated vector changes no
        nearest-neighbour distance with ``neighbours == 1``).
        """
        from medlens.tasks.anomaly.memory import fill_bank

        return fill_bank(self.memory, features, seed=seed)


class AutoencoderModel(nn.Module):
    """MONAI's ``AutoEncoder``: the map is the channel-mean squared reconstruction error, smoothed.

    Args:
        spatial_dims, in_channels, input_size: the images.
        channels: feature maps per level; each level halves the grid, so ``input_size`` must be divisible by
            ``2 ** len(channels)``.

    Shapes: ``forward``: ``(B, C, *input_size) -> (B, 1, *input_size)``; ``reconstruct``: same shape as input.
    """

    def __init__(self, *, name: str, in_channels: int, input_size: Sequence[int], channels: Sequence[int]):
        super().__init__()
        from monai.networks.nets import AutoEncoder

        self.name, self.input_size, self.in_channels = name, tuple(input_size), in_channels
        self.net = AutoEncoder(spatial_dims=len(self.input_size), in_channels=in_channels, out_channels=in_channels,
                               channels=tuple(channels), strides=(2,) * len(channels), num_res_units=1, norm="BATCH")
        self.smooth = GaussianSmoothing(len(self.input_size), max(self.input_size) * SIGMA_PER_VOXEL)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The anomaly map ``(B, 1, *input_size)``."""
        return self.smooth((x - self.net(x)).pow(2).mean(1, keepdim=True))


def autoencoder_levels(input_size: Sequence[int], most: int = 3) -> int:
    """How many halvings every axis of ``input_size`` allows (at most ``most``)."""
    levels = 0
    while levels < most and all(s % 2 ** (levels + 1) == 0 and s // 2 ** (levels + 1) >= 2 for s in input_size):
        levels += 1
    return levels


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """The image score: the maximum of each map, ``(B, 1, *S) -> (B,)``."""
    return maps.flatten(1).amax(1)


def _local_average(x: torch.Tensor) -> torch.Tensor:
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    return pool(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _to_input(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(maps, size=size, mode=mode, align_corners=False)
