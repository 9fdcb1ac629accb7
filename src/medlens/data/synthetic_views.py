"""A synthetic set of several inputs per case that only a fused model can learn.

``write_interaction_set(out)`` writes ``front/`` and ``side/`` PNG views (8-bit, ``size x size``, pictures
without patient geometry, so the views are encoded apart) and
``cases.csv``, a manifest with ``image:front``, ``image:side``, ``label``, ``patient_id`` and three clinical
columns. Each view holds one blob, brighter or darker than the grey around it (a bit each); ``marker`` is a
number whose sign is a third bit; ``age`` and ``site`` are noise. The label is the parity of the three bits
(``positive`` when an odd number of them are set), so each input alone, and any two of them, say nothing about
it: only a network that sees both views and the clinical value together can.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

VIEWS = ("front", "side")


def blob_image(rng: np.random.Generator, bright: bool, size: int = 24) -> np.ndarray:
    """``(size, size)`` uint8: grey noise and one blob, brighter or darker than its surroundings, anywhere."""
    rows, cols = np.mgrid[0:size, 0:size]
    centre_row, centre_col = rng.uniform(size / 4, 3 * size / 4, size=2)
    blob = np.exp(-((rows - centre_row) ** 2 + (cols - centre_col) ** 2) / (2 * (size / 6) ** 2))
    image = 128 + 20 * rng.standard_normal((size, size)) + (100 if bright else -100) * blob
    return np.clip(image, 0, 255).astype(np.uint8)


def write_interaction_set(out: str | Path, *, cases: int = 240, size: int = 24, seed: int = 0) -> Path:
    """Write the set into ``out`` (created); returns the manifest ``out/cases.csv``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(cases):
        bits = rng.integers(0, 2, size=3)
        paths = []
        for view, bit in zip(VIEWS, bits[:2]):
            path = out / view / f"case{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(blob_image(rng, bool(bit), size)).save(path)  # a picture: no patient geometry
            paths.append(f"{view}/{path.name}")
        marker = (1.0 if bits[2] else -1.0) * rng.uniform(0.5, 2.0)
        rows.append([*paths, "positive" if bits.sum() % 2 else "negative", f"p{i:04d}", f"{marker:.3f}",
                     f"{rng.uniform(30, 80):.0f}", rng.choice(["A", "B"])])
    manifest = out / "cases.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*(f"image:{v}" for v in VIEWS), "label", "patient_id", "marker", "age", "site"])
        writer.writerows(rows)
    return manifest
