"""PatchCore's memory: a greedy k-center coreset of normal patch features, and nearest-memory distances.

Roth et al., "Towards total recall in industrial anomaly detection", CVPR 2022. The memory bank keeps
a subset of the normal training patch features chosen so that every feature left out lies close to
one kept (greedy k-center: repeatedly add the feature farthest from those already kept), which bounds
the memory however many normal images there are. A patch's anomaly score is its distance to the
nearest memory vector (or the mean over the ``k`` nearest).
"""

from __future__ import annotations

import torch

PROJECTION_DIM = 128  # coreset selection runs on a random projection (Johnson-Lindenstrauss), as PatchCore does
CANDIDATES_PER_SLOT = 10  # at most this many candidate features per memory slot (a seeded random subset)
CHUNK = 2048  # memory vectors per distance block: (queries x CHUNK) floats at a time


def greedy_coreset(features: torch.Tensor, size: int, *, seed: int = 0) -> torch.Tensor:
    """Indices of ``size`` rows of ``features`` chosen by greedy k-center selection.

    Args:
        features: ``(N, D)`` float patch features.
        size: ``M``, how many to keep; ``M >= N`` keeps every row.
        seed: the first centre, the candidate subset and the projection come from it.

    Returns:
        ``(min(M, N),)`` int64 row indices into ``features``, in the order they were chosen.
    """
    n = len(features)
    if size >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    pool = torch.arange(n)
    if n > CANDIDATES_PER_SLOT * size:
        pool = torch.randperm(n, generator=generator)[: CANDIDATES_PER_SLOT * size].sort().values
    points = _project(features[pool].float(), generator)
    chosen = torch.empty(size, dtype=torch.int64)
    chosen[0] = int(torch.randint(len(points), (1,), generator=generator))
    squares = points.pow(2).sum(1)
    nearest = torch.full((len(points),), float("inf"), device=points.device)
    for i in range(size):
        if i:
            chosen[i] = int(nearest.argmax())
        centre = points[chosen[i]]
        # |p - c|^2 as |p|^2 - 2 p.c + |c|^2: one matrix-vector product, no (N, D) temporary per step
        torch.minimum(nearest, squares - 2 * (points @ centre) + squares[chosen[i]], out=nearest)
    return pool[chosen]


def fill_bank(memory: torch.Tensor, features: torch.Tensor, *, seed: int = 0) -> int:
    """Copy the greedy k-center coreset of ``features (N, D)`` into ``memory (M, D)``; returns the rows kept.

    When ``N < M`` every feature is kept and the rows left over repeat them (a repeated vector changes no
    nearest-neighbour distance with one neighbour).
    """
    chosen = features[greedy_coreset(features, memory.shape[0], seed=seed)]
    rows = torch.arange(memory.shape[0]) % len(chosen)
    memory.copy_(chosen[rows].to(memory))
    return len(chosen)


def _project(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(N, D) -> (N, min(D, 128))``: distances approximately kept (a Gaussian random projection)."""
    if points.shape[1] <= PROJECTION_DIM:
        return points
    matrix = torch.randn(points.shape[1], PROJECTION_DIM, generator=generator) / PROJECTION_DIM**0.5
    return points @ matrix.to(points.device)


def nearest_distances(queries: torch.Tensor, memory: torch.Tensor, neighbours: int = 1) -> torch.Tensor:
    """Mean Euclidean distance of each query to its ``neighbours`` nearest memory vectors.

    The squared distances are ``|q|^2 - 2 q.m + |m|^2``, one block of memory vectors at a time, keeping
    a running top-k: the same as ``torch.cdist`` chunked, but it exports to ONNX, and its loop runs over
    the fixed memory size, never over the batch, so a traced network takes any batch size.

    Args:
        queries: ``(Q, D)``.
        memory: ``(M, D)``.
        neighbours: ``k``, at most ``M``.

    Returns:
        ``(Q,)`` distances.
    """
    q2 = queries.pow(2).sum(1, keepdim=True)
    best, size = None, int(memory.shape[0])  # fixed for a network: a constant of its trace
    for start in range(0, size, CHUNK):
        block = memory[start:start + CHUNK]
        d2 = (q2 - 2 * queries @ block.T + block.pow(2).sum(1)[None]).clamp_min(0)
        columns = min(CHUNK, size - start) + (0 if best is None else best.shape[1])
        if best is not None:
            d2 = torch.cat([best, d2], dim=1)
        best = torch.topk(d2, min(neighbours, columns), dim=1, largest=False).values
    return best.sqrt().mean(1)
