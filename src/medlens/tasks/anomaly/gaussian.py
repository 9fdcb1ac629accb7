"""The ``gaussian`` and ``gaussian_knn`` methods: whole-image statistics at the encoder's deepest stage.

``gaussian`` (Rippel et al., "Modeling the distribution of normal data in pre-trained deep features for
anomaly detection", ICPR 2020): a stage of the encoder summarises an image by its channel means and
standard deviations over space; a multivariate Gaussian (mean, Ledoit-Wolf shrunk covariance) is fitted to
these vectors of the normal training images; an image scores its squared Mahalanobis distance divided by the
vector's length (about 1 for a normal image; summed when several stages are listed in :data:`STAGES`).

``gaussian_knn`` adds the distance from the image's L2-normalised channel means (the encoder's pooled
feature) to the nearest normal training image's (Bergman et al., "Deep nearest neighbor anomaly detection",
2020; with a contrastive encoder, Tack et al., CSI, NeurIPS 2020). The Gaussian sees an image far from the
bulk of the normal ones; the nearest neighbour sees one unlike any single normal image even when the normal
images are too varied for one Gaussian. Each term is divided by its median over the normal validation
cases, so both count alike and a typical normal image scores about 2.

Both judge the whole image, which suits diffuse changes (pneumonia, a tumour's texture); the map is the score
over the whole image (no localisation). The choices were made on validation; the figures are in
:mod:`medlens.tasks.anomaly`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medlens.errors import ConfigError
from medlens.tasks.anomaly.memory import nearest_distances

#: (the modules run first, the stages summarised) per classifier family: the deepest stage, chosen on validation
STAGES = {
    "resnet": (("conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3"), ("layer4",)),
    "seedcnn": (("features.0", "features.1", "features.2"), ("features.3",)),
}


def stages_of(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(modules run first, the stages summarised)`` for registry classifier ``name``.

    Raises:
        ConfigError: a family whose stages are not named here.
    """
    family = name.rsplit("_", 1)[0]
    for prefix, stages in STAGES.items():
        if family.startswith(prefix):
            return stages
    raise ConfigError(f"model.name={name}: anomaly.method=gaussian summarises the stages of a ResNet or SeedCNN "
                      "encoder; use one of resnet18/34/50 or seedcnn (_2d / _3d), or anomaly.method=autoencoder")


class GaussianModel(nn.Module):
    """A classifier's encoder, one Gaussian per summarised stage (:data:`STAGES`) of its channel statistics, and
    optionally a memory of normal pooled features.

    Args:
        classifier: a registry :class:`~medlens.models.Classifier` (ResNet or SeedCNN); its ``backbone``
            is kept (the classifier's key names, so ``--init-from`` loads into it), its head dropped.
        memory_size: ``M`` > 0 adds the nearest-normal-image term (``gaussian_knn``): a bank of the normal
            training images' normalised pooled features (a coreset when there are more than ``M``).

    Shapes: ``forward``: ``(B, C, *input_size) -> (B, 1, *input_size)`` (the image score everywhere);
    ``stage_statistics``: ``(B, C, *input_size) -> [(B, 2 C_s) per stage s]``; buffers ``mean_s`` ``(2 C_s,)``
    and ``precision_s`` ``(2 C_s, 2 C_s)`` (zeros until :meth:`fit_gaussians`); with a memory, ``memory``
    ``(M, C_last)`` and ``term_scales`` ``(2,)``, what each term is divided by (ones until :meth:`set_scales`).
    """

    def __init__(self, classifier: nn.Module, *, memory_size: int = 0):
        super().__init__()
        self.name, self.input_size = classifier.name, tuple(classifier.input_size)
        self.in_channels, self.num_features = classifier.in_channels, classifier.num_features
        self.backbone = classifier.backbone
        stem, self.stages = stages_of(self.name)
        self.stem = [n for n in stem if n != "maxpool" or not getattr(self.backbone, "no_max_pool", False)]
        with torch.no_grad():
            probe = self.stage_statistics(torch.zeros(2, self.in_channels, *self.input_size))
        for s, stats in enumerate(probe):
            self.register_buffer(f"mean_{s}", torch.zeros(stats.shape[1]))
            self.register_buffer(f"precision_{s}", torch.zeros(stats.shape[1], stats.shape[1]))
        self.has_memory = memory_size > 0
        if self.has_memory:
            self.register_buffer("memory", torch.zeros(memory_size, probe[-1].shape[1] // 2))
            self.register_buffer("term_scales", torch.ones(2))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, num_features)``, as the classifier's (what contrastive pretraining trains)."""
        return self.backbone(x)

    def head_parameters(self):
        """No head: every parameter belongs to the encoder."""
        return iter(())

    def stage_statistics(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per stage, the channel means and standard deviations over space, ``[(B, 2 C_s)]``."""
        for name in self.stem:
            x = self.backbone.get_submodule(name)(x)
        stats = []
        for name in self.stages:
            x = self.backbone.get_submodule(name)(x)
            flat = x.flatten(2).float()
            stats.append(torch.cat([flat.mean(2), flat.std(2, unbiased=False)], dim=1))
        return stats

    def terms(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T)``: the squared Mahalanobis distance over the vector's length, summed over the stages, and
        (with a memory) the distance of the normalised pooled feature to its nearest in the memory."""
        stats = self.stage_statistics(x)
        mahalanobis = []
        for s, row in enumerate(stats):
            centred = row - getattr(self, f"mean_{s}")
            mahalanobis.append((centred @ getattr(self, f"precision_{s}") * centred).sum(1) / row.shape[1])
        terms = [torch.stack(mahalanobis, 1).sum(1)]
        if self.has_memory:
            terms.append(nearest_distances(F.normalize(pooled_of(stats), dim=1), self.memory))
        return torch.stack(terms, 1)

    def image_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)``: the sum of :meth:`terms`, each divided by its scale (``gaussian``: the Mahalanobis term)."""
        terms = self.terms(x)
        return (terms / self.term_scales).sum(1) if self.has_memory else terms[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The anomaly map ``(B, 1, *input_size)``: the image score at every voxel."""
        scores = self.image_scores(x)
        return scores.view(-1, 1, *[1] * len(self.input_size)).expand(-1, 1, *self.input_size)

    @torch.no_grad()
    def fit_gaussians(self, stats: list[np.ndarray]) -> None:
        """Fit each stage's Gaussian to the normal training statistics ``[(N, 2 C_s)]`` (N >= 2)."""
        from sklearn.covariance import LedoitWolf

        for s, rows in enumerate(stats):
            fitted = LedoitWolf().fit(rows.astype(np.float64))
            getattr(self, f"mean_{s}").copy_(torch.from_numpy(fitted.location_))
            getattr(self, f"precision_{s}").copy_(torch.from_numpy(fitted.precision_))

    @torch.no_grad()
    def fill_memory(self, pooled: torch.Tensor, *, seed: int = 0) -> int:
        """Keep the coreset of the normal pooled features ``(N, C_last)`` (normalised here); returns the rows kept."""
        from medlens.tasks.anomaly.memory import fill_bank

        return fill_bank(self.memory, F.normalize(pooled.float(), dim=1), seed=seed)

    @torch.no_grad()
    def set_scales(self, normal_terms: np.ndarray) -> tuple[float, ...]:
        """Divide each term by its median over ``normal_terms (N, 2)`` (normal validation cases); returns them."""
        medians = np.maximum(np.median(normal_terms, axis=0), 1e-6)  # a zero median must not blow a term up
        self.term_scales.copy_(torch.from_numpy(medians))
        return tuple(float(m) for m in medians)


def pooled_of(stats: list):
    """The encoder's pooled feature ``(B, C_last)``: the channel means, the first half of the last stage's
    statistics (:meth:`GaussianModel.stage_statistics`; tensors or arrays)."""
    return stats[-1][:, : stats[-1].shape[1] // 2]


@torch.no_grad()
def _over_batches(model: GaussianModel, images: np.ndarray, compute) -> list:
    """``compute(model, x)`` for every batch ``x`` of ``images (N, C, *input_size)`` on the best device, as numpy."""
    from medlens.models.inference import best_device
    from medlens.tasks.anomaly.infer import batch_size_for

    device = best_device()
    model = model.to(device).eval()
    size = batch_size_for(images)
    return [compute(model, torch.from_numpy(np.ascontiguousarray(images[i:i + size], dtype=np.float32)).to(device))
            for i in range(0, len(images), size)]


@torch.no_grad()
def fit_normal_gaussians(model: GaussianModel, images: np.ndarray, *, seed: int = 0) -> int:
    """Fit ``model``'s Gaussians to the normal training ``images (N, C, *input_size)`` (and fill its memory, the
    coreset drawn with ``seed``); returns ``N``.

    Raises:
        ValueError: fewer than two images (no covariance).
    """
    if len(images) < 2:
        raise ValueError(f"anomaly.method=gaussian fits a covariance to the normal training images and found "
                         f"{len(images)}; add normal training cases or use anomaly.method=patchcore")
    parts = _over_batches(model, images, lambda net, x: [s.cpu().numpy() for s in net.stage_statistics(x)])
    stats = [np.concatenate(column) for column in zip(*parts)]
    model.fit_gaussians(stats)
    if model.has_memory:
        model.fill_memory(torch.from_numpy(pooled_of(stats)), seed=seed)
    return len(images)


@torch.no_grad()
def scale_terms(model: GaussianModel, images: np.ndarray) -> tuple[float, ...]:
    """Set ``model``'s term scales from normal validation ``images (N, C, *input_size)``; returns the scales."""
    return model.set_scales(np.concatenate(_over_batches(model, images, lambda net, x: net.terms(x).cpu().numpy())))
