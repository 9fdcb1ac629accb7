"""Array conversion shared by the statistics: anything array-like (NumPy, lists, torch tensors) to NumPy."""

from __future__ import annotations

import numpy as np


def to_numpy(x) -> np.ndarray:
    """A NumPy view of an array-like or a (CPU or GPU, grad or not) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
