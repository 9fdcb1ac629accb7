"""PyTorch datasets and samplers over preprocessed arrays, reproducible across resumes.

The training sampler's order depends only on ``(seed, epoch)`` (Lightning calls ``set_epoch``), and
each process of a DDP run takes its own equal share, so an interrupted run that resumes at
epoch *e* sees exactly the batches an uninterrupted run sees at epoch *e*.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


class ArrayDataset(torch.utils.data.Dataset):
    """``(image (C, *spatial) float32, label)`` pairs from arrays (in memory or memory-mapped); with
    ``clinical (N, F)`` values, ``(image, clinical (F,), label)`` triples."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, clinical: np.ndarray | None = None):
        self.images, self.labels, self.clinical = images, labels, clinical

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = torch.from_numpy(np.array(self.images[index], dtype=np.float32, copy=True))
        if self.labels is None:
            return image
        label = torch.as_tensor(self.labels[index])
        if self.clinical is None:
            return image, label
        return image, torch.from_numpy(np.asarray(self.clinical[index], dtype=np.float32)), label


class EpochSampler(Sampler[int]):
    """Shuffled (or class-weighted) indices drawn from ``(seed, epoch)``; sharded across DDP ranks.

    Args:
        n: dataset length.
        weights: per-sample weights for sampling with replacement (the ``weighted`` sampler for
            imbalanced classes); ``None`` = a permutation.
    """

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None):
        self.n, self.seed, self.weights, self.epoch = n, seed, weights, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // _rank()[1]

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is None:
            order = rng.permutation(self.n)
        else:
            order = rng.choice(self.n, size=self.n, replace=True, p=self.weights / self.weights.sum())
        rank, world = _rank()
        share = self.n // world
        return iter(order[rank * share:(rank + 1) * share].tolist())


class ShardSampler(Sampler[int]):
    """Indices ``0..n-1`` in order, each DDP rank taking its own contiguous share (the whole range alone).

    For datasets whose item ``i`` is already a random draw from ``(seed, epoch, i)``, such as the
    segmentation patch sampler: the order needs no shuffling, only a fair split across processes.
    """

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n // _rank()[1]

    def __iter__(self):
        rank, world = _rank()
        share = self.n // world
        return iter(range(rank * share, (rank + 1) * share))


def _rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside distributed training."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights so every class is drawn equally often (``labels`` int ``(N,)``)."""
    counts = np.bincount(labels)
    return 1.0 / counts[labels]


def make_loader(images: np.ndarray, labels: np.ndarray | None, batch_size: int, *, sampler: Sampler | None = None,
                num_workers: int = 0, clinical: np.ndarray | None = None) -> DataLoader:
    """A DataLoader over arrays (with ``clinical (N, F)`` values beside the images when given); no sampler = the
    fixed order (validation, test, prediction)."""
    return DataLoader(ArrayDataset(images, labels, clinical), batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=num_workers, persistent_workers=num_workers > 0, drop_last=False)
