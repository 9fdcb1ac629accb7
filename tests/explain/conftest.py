"""A small network trained on images whose finding sits at a known place, for the explanation tests."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medlens.models import build_classifier

SIZE = 32
RADIUS_PX = 2.0


def blob_images(n: int, seed: int) -> SimpleNamespace:
    """``images (n, 1, 32, 32)`` of noise; label 1 adds a bright Gaussian blob at ``centres[i]`` (x, y)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 0.3, (n, 1, SIZE, SIZE)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    centres = rng.integers(6, SIZE - 6, (n, 2))
    xx, yy = np.mgrid[0:SIZE, 0:SIZE]
    for image, label, (cx, cy) in zip(images, labels, centres):
        if label:
            image[0] += 2.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * RADIUS_PX ** 2))
    return SimpleNamespace(images=images, labels=labels, centres=centres)


@pytest.fixture(scope="session")
def make_blob_images():
    """``make_blob_images(n, seed)``: see :func:`blob_images`."""
    return blob_images


@pytest.fixture(scope="session")
def blob_model():
    """``(model, initial)``: seedcnn_2d trained to find the blob, and the same network before training."""
    torch.manual_seed(0)
    model = build_classifier("seedcnn_2d", in_channels=1, num_classes=2, input_size=(SIZE, SIZE), width=0.5)
    initial = build_classifier("seedcnn_2d", in_channels=1, num_classes=2, input_size=(SIZE, SIZE), width=0.5)
    initial.load_state_dict(model.state_dict())
    data = blob_images(320, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    order = np.random.default_rng(2)
    for _ in range(4):
        for rows in np.array_split(order.permutation(len(data.images)), 10):
            x, y = torch.from_numpy(data.images[rows]), torch.from_numpy(data.labels[rows])
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), initial.eval()
