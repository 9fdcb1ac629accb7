"""From a user's folder, CSV or archive to a list of cases; audit; patient-level splits."""

from __future__ import annotations

from medlens.data.dataset import Dataset, Finding
from medlens.data.open import open_dataset

__all__ = ["Dataset", "Finding", "open_dataset", "inspect_dataset", "make_splits", "boxes_on_grid", "boxes_to_world"]


def __getattr__(name: str):
    if name == "inspect_dataset":
        from medlens.data.audit import inspect_dataset

        return inspect_dataset
    if name == "make_splits":
        from medlens.data.splits import make_splits

        return make_splits
    if name in ("boxes_on_grid", "boxes_to_world"):
        from medlens.data import boxes

        return getattr(boxes, name)
    raise AttributeError(name)
