"""Published figures for known benchmarks (``published.json`` beside this module), to print beside ours.

A MedMNIST dataset is recognised by its archive's name (``pneumoniamnist.npz``,
``organmnist3d_64.npz``), the Medical Segmentation Decathlon's Hippocampus by its
``dataset.json`` name or a ``Task04`` folder. Only numbers are shipped, never data.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def published() -> dict:
    with open(Path(__file__).with_name("published.json"), encoding="utf-8") as f:
        return json.load(f)


def medmnist_benchmark(source: str) -> dict | None:
    """``{"name", "size", "reference", "best_auc", "plus", "source", "plus_source"}`` for a MedMNIST file.

    Returns:
        ``None`` when ``source`` is not a MedMNIST archive.
    """
    from medlens.data.medmnist import parse_name
    from medlens.errors import DatasetError

    if not str(source).lower().endswith(".npz"):
        return None
    try:
        name, size = parse_name(Path(source).name)
    except DatasetError:
        return None
    tables = published()
    rows = tables["medmnist_v2"]["datasets"].get(name)
    if rows is None:
        return None
    plus = tables["medmnist_plus"]["datasets"].get(name, {}).get(str(size))
    return {"name": name, "size": size, **rows, "plus": plus, "source": tables["medmnist_v2"]["source"],
            "protocol": tables["medmnist_v2"]["protocol"], "plus_source": tables["medmnist_plus"]["source"]}


def decathlon_benchmark(card: dict) -> dict | None:
    """The published Dice per class for a Decathlon task medlens knows (Task04 Hippocampus), else ``None``."""
    dataset = card.get("dataset", {})
    name = str(dataset.get("meta", {}).get("name", "")).lower()
    source = str(dataset.get("source", "")).lower()
    if name == "hippocampus" or "task04" in source:
        return published()["decathlon"]["task04_hippocampus"]
    return None


def approx(entry: dict, key: str) -> str:
    """``0.991`` or ``≈0.991`` where the figure is marked approximate."""
    mark = "≈" if key in entry.get("approximate", []) else ""
    return f"{mark}{entry[key]:.3f}"
