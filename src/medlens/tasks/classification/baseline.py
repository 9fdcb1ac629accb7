"""Numbers comparable with the MedMNIST benchmark: its evaluator's metrics and a k-NN baseline.

:func:`medmnist_metrics` reproduces ``getAUC`` / ``getACC`` of the MedMNIST v2 evaluator
(``medmnist/evaluator.py``; Yang et al. 2023, "MedMNIST v2"), quirks included: a binary
prediction is positive when ``probs[:, -1] > 0.5`` (strictly), a multi-label one when the label's
probability is ``>= 0.5``, and the multi-class AUC is the plain mean of every class's
one-vs-rest AUC.

:func:`knn_baseline` is the classical yardstick a deep model must beat: k nearest neighbours
on standardised, average-pooled pixels, with ``k`` chosen on the validation split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from medlens.errors import ConfigError
from medlens.evaluation.arrays import to_numpy
from medlens.tasks.classification.metrics import as_task, check_inputs
from medlens.types import Task

#: Largest pooled side per spatial dimensionality: 16 x 16 in 2D, 8 x 8 x 8 in 3D.
MAX_SIDE = {2: 16, 3: 8}


def _auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, NaN when ``truth`` holds one class only."""
    return float(roc_auc_score(truth, scores)) if len(np.unique(truth)) == 2 else float("nan")


def medmnist_metrics(y_true, probs, task: Task | str) -> dict[str, float]:
    """AUC and ACC exactly as the MedMNIST v2 evaluator defines them.

    Args:
        y_true: ``(N,)`` (or MedMNIST's ``(N, 1)``) class indices; ``(N, L)`` 0/1 for multi-label.
        probs: ``(N, K)`` probabilities (binary: ``K == 2``).
        task: :class:`Task` or its value.

    Returns:
        ``{"auc": float, "acc": float}``. Where MedMNIST's evaluator would fail (a class absent
        from ``y_true``), ``auc`` is NaN.

    Raises:
        ConfigError: shapes that disagree or NaN probabilities.
    """
    task = as_task(task)
    y, p = check_inputs(y_true, probs, task)
    if task is Task.BINARY:
        score = p[:, -1]
        return {"auc": _auc(y, score), "acc": float(np.mean((score > 0.5) == y))}
    if task is Task.MULTILABEL:
        auc = np.mean([_auc(y[:, j], p[:, j]) for j in range(p.shape[1])])
        return {"auc": float(auc), "acc": float(np.mean((p >= 0.5) == y))}
    auc = np.mean([_auc(y == j, p[:, j]) for j in range(p.shape[1])])
    return {"auc": float(auc), "acc": float(np.mean(p.argmax(axis=1) == y))}


def pool_features(x) -> np.ndarray:
    """Average-pool images to at most 16 x 16 (2D) or 8 x 8 x 8 (3D) and flatten.

    Args:
        x: ``(N, C, X, Y)`` or ``(N, C, X, Y, Z)`` images.

    Returns:
        ``(N, D)`` float32 features, ``D = C * prod(min(side, 16 or 8))``.

    Raises:
        ConfigError: no channel axis / wrong number of axes, or NaN values.
    """
    import torch
    import torch.nn.functional as F

    x = to_numpy(x)
    dims = x.ndim - 2
    if dims not in MAX_SIDE:
        raise ConfigError(f"expected images of shape (N, C, X, Y) or (N, C, X, Y, Z), got {x.shape}; "
                          "add a channel axis with x[:, None] if it is missing")
    size = tuple(min(side, MAX_SIDE[dims]) for side in x.shape[2:])
    pool = F.adaptive_avg_pool2d if dims == 2 else F.adaptive_avg_pool3d
    blocks = [pool(torch.as_tensor(np.ascontiguousarray(x[i:i + 1024]), dtype=torch.float32), size)
              .flatten(1).numpy() for i in range(0, len(x), 1024)]
    features = np.concatenate(blocks) if blocks else np.zeros((0, x.shape[1] * int(np.prod(size))), np.float32)
    if not np.isfinite(features).all():
        raise ConfigError("the images contain NaN/inf values; fix the preprocessing before the k-NN baseline")
    return features


def _labels(y, task: Task, name: str) -> np.ndarray:
    """Labels ``(N,)`` int64, or ``(N, L)`` for multi-label."""
    y = to_numpy(y)
    if task is not Task.MULTILABEL and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != (2 if task is Task.MULTILABEL else 1):
        raise ConfigError(f"{name} has shape {y.shape}; a {task.value} task expects "
                          f"{'(N, L) 0/1 labels' if task is Task.MULTILABEL else '(N,) class indices'}")
    return y.astype(np.int64)


def _subsample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices of a random subset of at most ``cap`` rows."""
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, cap, replace=False))


def _vote(dist: np.ndarray, neighbour_y: np.ndarray, task: Task, num_classes: int) -> np.ndarray:
    """Inverse-distance-weighted neighbour vote, as scikit-learn's ``weights="distance"``.

    Args:
        dist: ``(n, k)`` neighbour distances; a row with exact matches votes with those only.
        neighbour_y: ``(n, k)`` neighbour classes, or ``(n, k, L)`` 0/1 labels.

    Returns:
        ``(n, K)`` class probabilities, or ``(n, L)`` positive-label probabilities.
    """
    with np.errstate(divide="ignore"):
        w = 1.0 / dist
    exact = np.isinf(w)
    rows = exact.any(axis=1)
    w[rows] = exact[rows]
    if task is Task.MULTILABEL:
        votes = np.einsum("nk,nkl->nl", w, neighbour_y.astype(float))
    else:
        votes = np.stack([(w * (neighbour_y == c)).sum(axis=1) for c in range(num_classes)], axis=1)
    return votes / w.sum(axis=1, keepdims=True)


def _macro_auc(y: np.ndarray, probs: np.ndarray, task: Task) -> float:
    """Validation AUC for choosing k: binary AUC, else the mean of the defined per-class AUCs."""
    if task is Task.BINARY:
        return _auc(y, probs[:, 1])
    truth = y if task is Task.MULTILABEL else np.eye(probs.shape[1], dtype=int)[y]
    aucs = [_auc(truth[:, j], probs[:, j]) for j in range(probs.shape[1])]
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def _predict(clf: KNeighborsClassifier, x: np.ndarray, task: Task, num_classes: int) -> np.ndarray:
    """Test probabilities in medlens' ``probs`` convention, whatever classes training held."""
    proba = clf.predict_proba(x)
    if task is Task.MULTILABEL:
        out = np.zeros((len(x), len(proba)))
        for j, (p, classes) in enumerate(zip(proba, clf.classes_)):
            out[:, j] = p[:, list(classes).index(1)] if 1 in classes else 0.0
        return out
    out = np.zeros((len(x), num_classes))
    out[:, clf.classes_] = proba
    return out


def knn_baseline(train_x, train_y, val_x, val_y, test_x, task: Task | str, *,
                 ks: Sequence[int] = (1, 3, 5, 9, 15, 25), seed: int = 0, num_classes: int | None = None,
                 max_train: int = 20000) -> tuple[np.ndarray, dict]:
    """k nearest neighbours on pooled, standardised pixels; ``k`` chosen by validation AUC.

    Images are average-pooled (:func:`pool_features`), flattened and standardised with a
    ``StandardScaler`` fitted on the training rows; scikit-learn's ``KNeighborsClassifier``
    (inverse-distance weights; multi-output for multi-label) votes. Training and validation
    splits larger than ``max_train`` rows are randomly subsampled (seeded) to stay fast.

    Args:
        train_x, val_x, test_x: ``(N, C, X, Y)`` or ``(N, C, X, Y, Z)`` preprocessed images.
        train_y, val_y: ``(N,)`` class indices, or ``(N, L)`` 0/1 for multi-label.
        task: :class:`Task` or its value.
        ks: candidate numbers of neighbours (those above the training size are dropped).
        seed: seed of the subsampling.
        num_classes: ``K`` for multi-class tasks; default ``max(label) + 1`` over train and val.
        max_train: largest number of training (and validation) rows used.

    Returns:
        ``(test_probs, info)``: ``(N_test, K)`` probabilities in the ``probs`` convention (binary
        ``(N, 2)``, multi-label ``(N, L)``), and ``{"k", "val_auc", "val_auc_by_k", "features",
        "n_train", "n_val"}``.

    Raises:
        ConfigError: image or label shapes that disagree, no usable ``k``.
    """
    task = as_task(task)
    y_train, y_val = _labels(train_y, task, "train_y"), _labels(val_y, task, "val_y")
    x_train, x_val, x_test, y_train, y_val = _standardised_features(
        (train_x, val_x, test_x), y_train, y_val, max_train, np.random.default_rng(seed))
    k_classes = _num_classes(task, y_train, y_val, num_classes)
    usable = sorted({int(k) for k in ks if 1 <= int(k) <= len(y_train)})
    if not usable:
        raise ConfigError(f"no k in {list(ks)} fits {len(y_train)} training rows; pass smaller `ks`")
    by_k = _val_auc_by_k(x_train, y_train, x_val, y_val, usable, task, k_classes)
    defined = [k for k in usable if np.isfinite(by_k[k])]
    best = max(defined, key=lambda k: by_k[k]) if defined else usable[len(usable) // 2]
    clf = KNeighborsClassifier(n_neighbors=best, weights="distance").fit(x_train, y_train)
    info = {"k": best, "val_auc": by_k[best], "val_auc_by_k": {str(k): v for k, v in by_k.items()},
            "features": int(x_train.shape[1]), "n_train": len(y_train), "n_val": len(y_val)}
    return _predict(clf, x_test, task, k_classes), info


def _standardised_features(images: tuple, y_train: np.ndarray, y_val: np.ndarray, max_train: int,
                           rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Pooled features of train / val / test, standardised on (subsampled) train rows.

    Returns:
        ``(x_train, x_val, x_test, y_train, y_val)``, features float32 ``(n, D)``.
    """
    feats = [pool_features(x) for x in images]
    if len({f.shape[1] for f in feats}) != 1 or len(feats[0]) != len(y_train) or len(feats[1]) != len(y_val):
        raise ConfigError(f"train/val/test images must share their shape after pooling and match their labels: "
                          f"features {[f.shape for f in feats]}, labels {y_train.shape} and {y_val.shape}")
    keep_train, keep_val = _subsample(len(y_train), max_train, rng), _subsample(len(y_val), max_train, rng)
    scaler = StandardScaler().fit(feats[0][keep_train])
    x_train, x_val, x_test = (scaler.transform(f).astype(np.float32)
                              for f in (feats[0][keep_train], feats[1][keep_val], feats[2]))
    return x_train, x_val, x_test, y_train[keep_train], y_val[keep_val]


def _val_auc_by_k(x_train, y_train, x_val, y_val, ks: list[int], task: Task, num_classes: int) -> dict[int, float]:
    """Validation AUC of each k, from one neighbour search with the largest k."""
    dist, index = KNeighborsClassifier(n_neighbors=ks[-1]).fit(x_train, y_train).kneighbors(x_val)
    return {k: _macro_auc(y_val, _vote(dist[:, :k], y_train[index[:, :k]], task, num_classes), task) for k in ks}


def _num_classes(task: Task, y_train: np.ndarray, y_val: np.ndarray, num_classes: int | None) -> int:
    """``K``: 2 for binary, labels per row for multi-label, else given or ``max(label) + 1``."""
    if task is Task.MULTILABEL:
        return y_train.shape[1]
    k = 2 if task is Task.BINARY else num_classes or int(max(y_train.max(), y_val.max())) + 1
    if min(y_train.min(), y_val.min()) < 0 or max(y_train.max(), y_val.max()) >= k:
        raise ConfigError(f"labels must be class indices 0..{k - 1} for this {task.value} task, found "
                          f"{sorted(set(np.unique(y_train)) | set(np.unique(y_val)))}")
    return k
