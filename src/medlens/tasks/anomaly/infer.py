"""The anomaly network over arrays of preprocessed images: maps, image scores and patch features, batched."""

from __future__ import annotations

import numpy as np
import torch

from medlens.models.inference import best_device, predict_logits
from medlens.tasks.anomaly.models import image_scores


def batch_size_for(images: np.ndarray) -> int:
    """Images per forward pass: ~2 M input voxels (64 images of 128 x 128, 8 volumes of 64^3)."""
    voxels = int(np.prod(images.shape[1:])) if images.ndim > 1 else 1
    return int(max(1, min(256, 2_000_000 // max(voxels, 1))))


def anomaly_maps(model, images: np.ndarray) -> np.ndarray:
    """Maps ``(N, *input_size)`` float32 of images ``(N, C, *input_size)``."""
    maps = predict_logits(model, images, batch_size=batch_size_for(images))
    return maps[:, 0] if len(maps) else np.zeros((0, *images.shape[2:]), dtype=np.float32)


def scores_of(maps: np.ndarray) -> np.ndarray:
    """Image scores ``(N,)``: the maximum of each map."""
    return image_scores(torch.from_numpy(maps[:, None])).numpy().astype(np.float64)


@torch.no_grad()
def patch_features(model, images: np.ndarray, *, per_image: int | None = None, seed: int = 0) -> torch.Tensor:
    """Patch features of ``images (N, C, *input_size)`` as rows ``(R, D)`` on the model's device (PatchCore).

    Args:
        per_image: keep this many of each image's ``prod(grid)`` patches, a seeded random choice (``None``: all),
            so that the rows stay bounded however many images there are (``R = N * min(per_image, prod(grid))``).
    """
    device = best_device()
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    rows, size = [], batch_size_for(images)
    for start in range(0, len(images), size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + size], dtype=np.float32)).to(device)
        features = model.patch_features(x).float().flatten(2).transpose(1, 2)  # (B, P, D)
        if per_image is not None and per_image < features.shape[1]:
            keep = torch.stack([torch.randperm(features.shape[1], generator=generator)[:per_image]
                                for _ in range(len(features))]).to(device)
            features = torch.gather(features, 1, keep[..., None].expand(-1, -1, features.shape[2]))
        rows.append(features.reshape(-1, features.shape[2]))
    return torch.cat(rows)
