"""medlens: deep learning on medical images, from a folder of studies to a validated model.

The public API is imported lazily so that ``medlens --help`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medlens")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "Image": "medlens.io",
    "read_image": "medlens.io",
    "write_image": "medlens.io",
    "open_dataset": "medlens.data",
    "inspect_dataset": "medlens.data",
    "make_splits": "medlens.data",
    "Case": "medlens.types",
    "Task": "medlens.types",
    "MedlensError": "medlens.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medlens' has no attribute {name!r}")
