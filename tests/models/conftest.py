"""Fixtures shared by the network tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every module of network tests runs on one torch thread (``one_torch_thread`` in tests/conftest.py)."""
    yield
