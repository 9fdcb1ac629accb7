"""The anomaly methods compared on one encoder: the validation AUROC behind the default (``gaussian_knn``).

    python benchmarks/anomaly_candidates.py RUN [RUN ...]

Each RUN is an anomaly run of method ``gaussian`` or ``gaussian_knn`` (``medlens train FILE --task anomaly
--normal CLASS --time-budget 5m [--set data.normalization=scale01|zscore]``). Its trained encoder is refitted
on the run's normal training images and scored on the validation split (normal against abnormal cases; the
abnormal ones only compare methods). Candidates: the Gaussian term alone, the nearest normal image alone,
their sum (``gaussian_knn``: each term over its median on the normal validation cases), and pixel 1-NN on the
run's preprocessed images. The test split is never read.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medlens.data.prepared import open_config_dataset, prepare_split, split_cases
from medlens.data.splits import read_splits
from medlens.runs import open_run
from medlens.tasks import load_model, task_named
from medlens.tasks.anomaly.cases import is_abnormal, one_class_cases
from medlens.tasks.anomaly.gaussian import fit_normal_gaussians, scale_terms


def candidates(path: str) -> dict[str, float]:
    """Validation AUROC per candidate for the run at ``path``."""
    run = open_run(path)
    config = run.read_config()
    if config.anomaly.method not in ("gaussian", "gaussian_knn"):
        raise SystemExit(f"{path}: method {config.anomaly.method}; give a gaussian or gaussian_knn run")
    dataset = open_config_dataset(config)
    cases = split_cases(dataset, read_splits(run.splits, dataset), config.dataset.fold)
    roles = one_class_cases(cases, config)
    fit, normal_val = (prepare_split(dataset, "train", roles.fit, config),
                       prepare_split(dataset, "val", roles.threshold, config))
    val = prepare_split(dataset, "val", cases["val"], config)
    abnormal = is_abnormal(val.labels, config)

    knn_config = replace(config, anomaly=replace(config.anomaly, method="gaussian_knn",
                                                 memory_size=max(len(fit.images), 1)))
    model = task_named("anomaly").build_model(knn_config)
    model.backbone.load_state_dict(load_model(run, config).backbone.state_dict())
    fit_normal_gaussians(model, fit.images, seed=config.train.seed)
    scale_terms(model, normal_val.images)
    with torch.no_grad():
        terms = model.terms(torch.from_numpy(val.images)).numpy()
        combined = model.image_scores(torch.from_numpy(val.images)).numpy()
    flat = lambda images: images.reshape(len(images), -1)  # noqa: E731
    pixel = np.array([np.sqrt(((flat(fit.images) - row) ** 2).sum(1).min()) for row in flat(val.images)])
    return {"gaussian_knn": roc_auc_score(abnormal, combined), "gaussian": roc_auc_score(abnormal, terms[:, 0]),
            "nearest normal image": roc_auc_score(abnormal, terms[:, 1]),
            "pixel 1-NN": roc_auc_score(abnormal, pixel)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    for path in args.runs:
        config = open_run(path).read_config()
        scores = candidates(path)
        print(f"{path} ({config.data.normalization}): " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
