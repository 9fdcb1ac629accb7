"""Coreset, nearest-memory distances and the threshold, on hand-computable numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.errors import ConfigError
from medlens.tasks.anomaly import memory
from medlens.tasks.anomaly.memory import greedy_coreset, nearest_distances
from medlens.tasks.anomaly.threshold import share_above, threshold_at_fpr


def test_coreset_covers_every_cluster():
    # three tight clusters far apart: k-center with 3 centres must take one of each, whatever the start
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0], [0.0, 10.0], [0.0, 10.1]])
    for seed in range(4):
        chosen = greedy_coreset(points, 3, seed=seed)
        assert sorted(int(i) // 2 for i in chosen) == [0, 1, 2]


def test_coreset_keeps_everything_when_memory_is_larger():
    assert greedy_coreset(torch.zeros(4, 3), 10).tolist() == [0, 1, 2, 3]


def test_coreset_subsamples_candidates_and_projects(monkeypatch):
    monkeypatch.setattr(memory, "CANDIDATES_PER_SLOT", 2)
    points = torch.randn(200, 300)  # 300 > 128 dims: selection on a random projection
    chosen = greedy_coreset(points, 5, seed=1)
    assert len(set(chosen.tolist())) == 5 and chosen.max() < 200
    assert torch.equal(chosen, greedy_coreset(points, 5, seed=1))  # seeded


def test_nearest_distances_match_cdist_across_chunks(monkeypatch):
    monkeypatch.setattr(memory, "CHUNK", 7)  # several blocks, the last one short
    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(11, 5, generator=generator), torch.randn(30, 5, generator=generator)
    exact = torch.cdist(queries, bank)
    assert torch.allclose(nearest_distances(queries, bank, 1), exact.min(1).values, atol=1e-5)
    assert torch.allclose(nearest_distances(queries, bank, 3), exact.topk(3, largest=False).values.mean(1), atol=1e-5)


def test_nearest_distance_of_a_memory_vector_is_zero():
    bank = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert nearest_distances(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), bank).tolist() == pytest.approx([0.0, 1.0],
                                                                                                      abs=1e-3)


def test_threshold_allows_the_false_positive_rate_above_it():
    scores = np.arange(1.0, 21.0)  # 20 normal scores 1..20
    assert threshold_at_fpr(scores, 0.05) == 19.0  # one of 20 (5%) strictly above
    assert share_above(scores, threshold_at_fpr(scores, 0.05)) == 0.05
    assert threshold_at_fpr(scores, 0.0) == 20.0
    assert threshold_at_fpr(scores, 0.12) == 18.0  # floor(2.4) = 2 above
    assert threshold_at_fpr(np.array([5.0]), 0.05) == 5.0


@pytest.mark.parametrize("fpr", [-0.1, 1.0, 1.5])
def test_threshold_refuses_a_rate_outside_0_1(fpr):
    with pytest.raises(ConfigError, match=r"anomaly.fpr=.*\[0, 1\)"):
        threshold_at_fpr(np.arange(5.0), fpr)


def test_threshold_needs_scores():
    with pytest.raises(ConfigError, match="no normal validation score"):
        threshold_at_fpr(np.array([]), 0.05)
