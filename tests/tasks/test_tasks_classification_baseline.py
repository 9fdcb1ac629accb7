"""medmnist_metrics against hand values; knn_baseline on easy synthetic images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from medlens.errors import ConfigError
from medlens.tasks.classification.baseline import _vote, knn_baseline, medmnist_metrics, pool_features
from medlens.tasks.classification.metrics import classification_metrics
from medlens.types import Task


def test_medmnist_binary_uses_a_strict_threshold():
    y = np.array([[0], [0], [1], [0]])                       # MedMNIST's (N, 1) label column
    p1 = np.array([0.5, 0.1, 0.9, 0.2])
    got = medmnist_metrics(y, np.stack([1 - p1, p1], axis=1), Task.BINARY)
    assert got == {"auc": pytest.approx(1.0), "acc": pytest.approx(1.0)}     # 0.5 is not > 0.5
    ours = classification_metrics(y, np.stack([1 - p1, p1], axis=1), "binary", ["n", "p"], n_boot=0)
    assert ours["accuracy"]["value"] == pytest.approx(0.75)                 # ours: p >= 0.5


def test_medmnist_multiclass_is_the_plain_mean_of_one_vs_rest_aucs():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.2, 0.3]])
    # Class 2: the positive 0.6 beats both negatives, 0.3 beats 0.1 and ties 0.3 -> 3.5 / 4.
    got = medmnist_metrics(y, probs, "multiclass")
    assert got["auc"] == pytest.approx((1 + 1 + 0.875) / 3)
    assert got["acc"] == pytest.approx(0.75)


def test_medmnist_multilabel_and_absent_class():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0]])
    probs = np.array([[0.9, 0.2], [0.4, 0.7], [0.3, 0.6], [0.2, 0.4], [0.6, 0.1]])
    assert medmnist_metrics(y, probs, "multilabel") == {"auc": pytest.approx((1 + 5 / 6) / 2),
                                                        "acc": pytest.approx(0.7)}
    assert math.isnan(medmnist_metrics(np.array([0, 1, 0]), np.full((3, 3), 1 / 3), "multiclass")["auc"])
    with pytest.raises(ConfigError, match="NaN"):
        medmnist_metrics(np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), "binary")


def blob_images(labels: np.ndarray, rng: np.random.Generator, side: int = 20) -> np.ndarray:
    """(N, 1, side, side) noise with a bright square in quadrant j wherever label j is on."""
    labels = labels if labels.ndim == 2 else np.eye(4, dtype=int)[labels]
    x = rng.normal(0, 1, size=(len(labels), 1, side, side)).astype(np.float32)
    h = side // 2
    corners = [(0, 0), (0, h), (h, 0), (h, h)]
    for j in range(labels.shape[1]):
        r, c = corners[j]
        x[labels[:, j] == 1, 0, r + 2:r + h - 2, c + 2:c + h - 2] += 2.0
    return x


def split(labels_fn, rng):
    return [(blob_images(y, rng), y) for y in (labels_fn(150), labels_fn(60), labels_fn(60))]


@pytest.mark.parametrize("task, labels_fn, width", [
    (Task.BINARY, lambda n: np.arange(n) % 2, 2),
    (Task.MULTICLASS, lambda n: np.arange(n) % 3, 3),
    (Task.MULTILABEL, lambda n: np.stack([np.arange(n) % 2, (np.arange(n) // 2) % 2], axis=1), 2),
])
def test_knn_baseline_separates_easy_images(task, labels_fn, width):
    rng = np.random.default_rng(0)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = split(labels_fn, rng)
    probs, info = knn_baseline(x_tr, y_tr, x_va, y_va, x_te, task, ks=(1, 5, 15))
    assert probs.shape == (60, width)
    assert info["k"] in (1, 5, 15) and info["features"] == 16 * 16 and info["val_auc"] > 0.9
    names = [f"c{i}" for i in range(width)]
    assert classification_metrics(y_te, probs, task, names, n_boot=0)["auc"]["value"] > 0.95
    if task is not Task.MULTILABEL:
        np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_knn_vote_matches_sklearn_distance_weights():
    rng = np.random.default_rng(0)
    x_tr, y_tr = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    x_q = np.r_[rng.normal(size=(10, 5)), x_tr[:2]]                      # 2 exact matches
    clf = KNeighborsClassifier(n_neighbors=7, weights="distance").fit(x_tr, y_tr)
    dist, index = clf.kneighbors(x_q)
    np.testing.assert_allclose(_vote(dist, y_tr[index], Task.MULTICLASS, 3), clf.predict_proba(x_q))


def test_pool_features_shapes_and_errors():
    assert pool_features(np.zeros((3, 2, 28, 28))).shape == (3, 2 * 16 * 16)
    assert pool_features(np.zeros((3, 1, 28, 28, 28))).shape == (3, 8 * 8 * 8)
    assert pool_features(np.zeros((3, 1, 10, 12))).shape == (3, 120)   # small images are not upsampled
    with pytest.raises(ConfigError, match=r"x\[:, None\]"):
        pool_features(np.zeros((3, 28, 28)))


def test_knn_baseline_3d_and_train_cap():
    rng = np.random.default_rng(1)
    y = np.arange(40) % 2
    x = rng.normal(size=(40, 1, 10, 10, 10)).astype(np.float32)
    x[y == 1, :, 2:6, 2:6, 2:6] += 3
    probs, info = knn_baseline(x, y, x[:20], y[:20], x[20:], "binary", ks=(3, 5, 99), max_train=30)
    assert probs.shape == (20, 2) and info["features"] == 512 and info["n_train"] == 30
    assert set(info["val_auc_by_k"]) == {"3", "5"}
    with pytest.raises(ConfigError, match="no k in"):
        knn_baseline(x, y, x, y, x, "binary", ks=(100,))
