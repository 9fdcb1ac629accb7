"""Synthetic one-class data: textured normal images, anomalies are planted bright blobs (2D PNG or 3D NIfTI)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def textured(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth random texture around grey 100 with stripes, ``shape`` float."""
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    phase = rng.uniform(0, 2 * np.pi)
    image = 100 + 25 * np.sin(grids[0] * 0.8 + phase) + rng.normal(0, 12, shape)
    return image


def blob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A bright Gaussian blob at a random place away from the border."""
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [rng.uniform(0.25 * s, 0.75 * s) for s in shape]
    radius = rng.uniform(1.5, 2.5)
    return 110 * np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / (2 * radius**2))


def write_blob_set(root: Path, *, normal: int = 60, abnormal: int = 24, shape=(32, 32), seed: int = 0,
                   with_masks: bool = False) -> Path:
    """``root/blobs.csv`` (image, label, patient_id[, mask]) over 2D PNGs or 3D NIfTI volumes."""
    from medlens.io import Image, identity_direction, write_image

    rng = np.random.default_rng(seed)
    dims, rows = len(shape), []
    suffix = ".png" if dims == 2 else ".nii.gz"
    for i in range(normal + abnormal):
        label = "normal" if i < normal else "blob"
        image = textured(rng, shape)
        spot = blob(rng, shape) if label == "blob" else np.zeros(shape)
        pixels = np.clip(image + spot, 0, 255).astype(np.uint8)
        rel = f"{label}/case{i:03d}{suffix}"
        write_image(Image(pixels[None], (1.0,) * dims, (0.0,) * dims, identity_direction(dims)), root / rel)
        row = {"image": rel, "label": label, "patient_id": f"P{i:03d}"}
        if with_masks:
            mask_rel = f"masks/case{i:03d}{suffix}"
            write_image(Image((spot > 30).astype(np.uint8)[None], (1.0,) * dims, (0.0,) * dims,
                              identity_direction(dims)), root / mask_rel)
            row["mask"] = mask_rel
        rows.append(row)
    with open(root / "blobs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "blobs.csv"


