"""What a pretrained encoder is worth, when the data have class labels: a k-nearest-neighbours probe.

The frozen encoder's features of the training images (with their labels) classify the evaluated split's
images by their k nearest neighbours (cosine distance); the accuracy and balanced accuracy, with bootstrap
CIs over the evaluated cases (patients when known), are the quality figure. The same probe on the
encoder's random initialisation stands beside it, so the report says what pretraining added. Without
labels there is nothing to score, and the metrics document says so.
"""

from __future__ import annotations

import numpy as np
import torch

from medlens.config import Config
from medlens.data.prepared import open_config_dataset, split_cases
from medlens.data.splits import read_splits
from medlens.runs import RunFolder, now
from medlens.tasks.base import EvaluateOptions, Evaluation

NEIGHBOURS = 20  # k of the probe (fewer when the training split is smaller)


def evaluate_pretraining(run: RunFolder, config: Config, model, initial, options: EvaluateOptions,
                         log) -> Evaluation:
    """The probe on ``options.split`` with the trained ``model`` and its random ``initial`` network.

    Args:
        model, initial: Classifiers whose ``forward_features`` map ``(B, C, *S)`` to ``(B, F)``.
    """
    from medlens.data.tensors import preprocess_cases

    dataset = open_config_dataset(config)
    cases = split_cases(dataset, read_splits(run.splits, dataset), config.dataset.fold)
    split = options.split
    doc = {"medlens_metrics_version": 1, "run": str(run.root), "split": split, "created": now(), "task": "pretraining",
           "n_cases": len(cases[split]), "metrics": {}}
    labelled = all(isinstance(c.label, (int, np.integer)) for c in cases["train"] + cases[split])
    if not config.dataset.class_names or not labelled or not cases[split]:
        doc["note"] = ("the images carry no class labels, so there is nothing to evaluate: the encoder is judged by "
                       "fine-tuning it (medlens train DATA --init-from RUN)")
        return Evaluation(doc, summary=doc["note"])
    n_boot = config.evaluate.n_bootstrap if options.n_bootstrap is None else options.n_bootstrap
    train_x, test_x = (preprocess_cases(dataset, cases[s], config.data) for s in ("train", split))
    train_y, test_y = (np.asarray([c.label for c in cases[s]]) for s in ("train", split))
    groups = np.asarray([c.patient_id or c.case_id for c in cases[split]])
    doc["grouped_by"] = "patient" if any(c.patient_id for c in cases[split]) else "case"
    for key, network in (("metrics", model), ("random_init", initial)):
        predicted = knn_probe(features(network, train_x), train_y, features(network, test_x))
        doc[key] = probe_metrics(test_y, predicted, groups, n_boot=n_boot, seed=config.train.seed)
    doc["metrics"]["k"] = doc["random_init"]["k"] = min(NEIGHBOURS, len(train_y))
    acc, base = doc["metrics"]["accuracy"], doc["random_init"]["accuracy"]
    summary = (f"k-NN probe on the {split} split ({len(test_y)} images): accuracy {acc['value']:.4f} "
               f"[{acc['ci_low']:.4f}, {acc['ci_high']:.4f}]; random initialisation {base['value']:.4f}")
    return Evaluation(doc, evidence=None, summary=summary)


@torch.no_grad()
def features(model, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Pooled features ``(N, F)`` of preprocessed images ``(N, C, *S)`` through ``model.forward_features``."""
    model = model.eval()
    device = next(model.parameters()).device
    out = [model.forward_features(torch.as_tensor(np.asarray(images[i:i + batch]), device=device)).float().cpu()
           for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


def knn_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray) -> np.ndarray:
    """Class of each test feature by its ``min(20, N)`` nearest training features (cosine, distance-weighted)."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(NEIGHBOURS, len(train_labels)), metric="cosine", weights="distance")
    return knn.fit(train_features, train_labels).predict(test_features)


def probe_metrics(labels: np.ndarray, predicted: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int) -> dict:
    """Accuracy and balanced accuracy ``{"value", "ci_low", "ci_high"}`` with 95% bootstrap CIs."""
    from sklearn.metrics import balanced_accuracy_score

    from medlens.evaluation.bootstrap import bootstrap_ci

    def accuracy(y, p):
        return float(np.mean(y == p))

    out = {}
    for name, metric in (("accuracy", accuracy), ("balanced_accuracy", balanced_accuracy_score)):
        value, low, high = bootstrap_ci(metric, labels, predicted, groups=groups, n_boot=n_boot, seed=seed)
        out[name] = {"value": value, "ci_low": low, "ci_high": high}
    return out
