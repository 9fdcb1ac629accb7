"""Fixtures of the anomaly tests: the synthetic blob set (see :mod:`anomaly_blobs`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from anomaly_blobs import write_blob_set


@pytest.fixture(scope="session")
def blob_csv(tmp_path_factory) -> Path:
    """The 2D blob set: 60 normal, 24 blob images of 32 x 32."""
    return write_blob_set(tmp_path_factory.mktemp("blobs"))
