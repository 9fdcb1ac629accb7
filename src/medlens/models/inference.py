"""Batched inference over preprocessed arrays, with optional flip test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch

from medlens.transforms import flip_variants


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray, *, batch_size: int = 256,
                   tta_flip_axes: tuple[int, ...] = (), device: torch.device | None = None,
                   clinical: np.ndarray | None = None) -> np.ndarray:
    """Logits ``(N, K)`` for ``images (N, C, *spatial)`` (and ``clinical (N, F)`` values, for a network that takes
    them); with TTA, logits averaged over mirrored copies."""
    device = device or best_device()
    model = model.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)).to(device)
        more = () if clinical is None else (torch.from_numpy(np.ascontiguousarray(
            clinical[start:start + batch_size], dtype=np.float32)).to(device),)
        variants = flip_variants(x, tta_flip_axes)
        out.append(torch.stack([model(v, *more).float() for v in variants]).mean(0).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def to_probs(logits: np.ndarray, *, multilabel: bool, temperature: float = 1.0) -> np.ndarray:
    """Softmax (or sigmoid for multi-label) of ``logits / temperature``."""
    scaled = torch.from_numpy(np.asarray(logits, dtype=np.float32)) / temperature
    return (torch.sigmoid(scaled) if multilabel else torch.softmax(scaled, dim=1)).numpy()
