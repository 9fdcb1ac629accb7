"""Fixtures of the federated tests: one torch thread in this process, and the environment of Flower's processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_thread():
    """Local training in this process on one thread (the sites of a test share the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def flower_env(monkeypatch):
    """The SuperNodes' ClientApp processes import medlens (and the test-only poisoned app) from this repository, on
    one thread each."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
