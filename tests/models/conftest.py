"""Fixtures shared by the network tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run each module's many small convolutions on one thread.

    On a shared 2-core machine, two OpenMP threads that spin at every barrier can make a DenseNet
    forward/backward 50x slower (13 s instead of 0.2 s) as soon as other processes are busy.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
