"""Checking and averaging the weights sites send back: a bad update is refused with its reason, never averaged.

A site's update is a ``dict[str, np.ndarray]`` keyed like the global model's ``state_dict``. It is refused when
its keys differ from the ones the server sent, when an array has another shape, or when a floating-point array
holds NaN or Inf (a diverged or poisoned site); the reason names the site and the first offending key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# FedBN (Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch Normalization"): the
# normalisation layers' statistics and affine parameters stay on each site; these are the state_dict keys of
# torch's BatchNorm layers (running_mean, running_var, num_batches_tracked, and the layer's weight / bias).
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class Update:
    """One site's answer to a training round.

    Attributes:
        site: the site's name (from its node config, never a patient or a file).
        weights: state_dict-like arrays.
        n_examples: training cases the site used (the weight in the average).
        metrics: the site's training metrics (numbers only).
    """

    site: str
    weights: dict[str, np.ndarray]
    n_examples: int
    metrics: dict


def check_update(update: Update, expected: dict[str, tuple[int, ...]]) -> str | None:
    """Why this update cannot be averaged in, or None when it can.

    Args:
        update: the site's update.
        expected: key -> shape of every array the site must send back.

    Returns:
        The reason, naming the site and the key (None: the update is sound).
    """
    missing = sorted(set(expected) - set(update.weights))
    extra = sorted(set(update.weights) - set(expected))
    if missing or extra:
        return (f"site {update.site!r} sent the wrong keys (missing {missing[:3]}, unexpected {extra[:3]}): it runs "
                "another model or plan than the server's")
    for key, shape in expected.items():
        array = update.weights[key]
        if tuple(array.shape) != tuple(shape):
            return (f"site {update.site!r} sent {key} of shape {tuple(array.shape)}, expected {tuple(shape)}: it "
                    "runs another model or plan than the server's")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int(np.size(array) - np.isfinite(array).sum())
            return (f"site {update.site!r} sent {bad} NaN / Inf value(s) in {key}: its training diverged or the "
                    "update is corrupt; it is left out of this round's average")
    if update.n_examples < 1:
        return f"site {update.site!r} reported {update.n_examples} training cases; an update needs at least one"
    return None


def is_batchnorm_key(key: str, batchnorm_layers: set[str]) -> bool:
    """Whether ``key`` is a BatchNorm layer's (a buffer, or weight / bias of a layer in ``batchnorm_layers``)."""
    layer, _, leaf = key.rpartition(".")
    return leaf in _BN_BUFFERS or (leaf in ("weight", "bias") and layer in batchnorm_layers)


def batchnorm_layers(keys) -> set[str]:
    """The layers of a state_dict that are BatchNorm layers: those holding a ``running_mean`` buffer."""
    return {re.sub(r"\.running_mean$", "", key) for key in keys if key.endswith(".running_mean")}


def shared_keys(keys, strategy: str) -> list[str]:
    """The keys the server averages and sends: all of them, or (FedBN) all but the BatchNorm layers'."""
    keys = list(keys)
    if strategy != "fedbn":
        return keys
    layers = batchnorm_layers(keys)
    return [key for key in keys if not is_batchnorm_key(key, layers)]


def average(updates: list[Update], keys: list[str]) -> dict[str, np.ndarray]:
    """Weighted average of ``keys`` over sound updates, by training cases (FedAvg, McMahan et al. 2017).

    Integer arrays (BatchNorm's ``num_batches_tracked``) are averaged and rounded back to their dtype.

    Returns:
        key -> array of the same shape and dtype as the sites'.
    """
    if not updates:
        raise ValueError("no update to average")
    total = float(sum(update.n_examples for update in updates))
    result = {}
    for key in keys:
        stacked = sum(update.weights[key].astype(np.float64) * (update.n_examples / total) for update in updates)
        dtype = updates[0].weights[key].dtype
        result[key] = (np.rint(stacked) if np.issubdtype(dtype, np.integer) else stacked).astype(dtype)
    return result
