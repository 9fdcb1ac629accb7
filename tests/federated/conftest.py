"""The environment of the federated tests' Flower processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def flower_env(monkeypatch):
    """The SuperNodes' ClientApp processes import medlens (and the test-only poisoned app) from this repository, on
    one thread each."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
