"""What each input of a fused network is worth to it: permutation importance of the clinical columns and the
drop when a view is withheld, measured on the validation split.

Breiman, "Random Forests", Machine Learning 2001 (permutation importance): shuffle one input across the cases,
so it no longer belongs to its case but keeps its distribution, and see how much the score drops. Here a
clinical column's encoded features (``[z-score, missing flag]`` or ``[one-hot..., missing flag]``) are permuted
together, a few seeded times (the mean drop and its standard deviation). A view is withheld instead (set to NaN,
as when a case lacks it, which the network met in training through ``train.modality_dropout``): one number,
nothing random. The score is the run's monitor family (AUC for ``val_auc`` and ``val_loss``, accuracy for
``val_accuracy``, quadratic kappa for ``val_qwk``) on uncalibrated probabilities, without bootstrap: the
importances rank inputs, the metrics of :mod:`.evaluate` carry the CIs.

Measured on validation, not on the evaluated split, so reading the importances never tunes anything on test.
"""

from __future__ import annotations

import numpy as np

from medlens.config import Config
from medlens.models.inference import predict_logits, to_probs
from medlens.tasks.classification.inputs import view_count

REPEATS = 5  # permutations per clinical column


def score_name(config: Config) -> str:
    """The score the importances are drops of: ``"auc"``, ``"accuracy"`` or ``"qwk"`` (the monitor's family)."""
    return {"val_accuracy": "accuracy", "val_qwk": "qwk"}.get(config.train.monitor, "auc")


def score(labels: np.ndarray, probs: np.ndarray, name: str, multilabel: bool) -> float:
    """One number, higher is better, for ``labels (N,)`` (``(N, L)`` multi-label) and ``probs (N, K)``."""
    from medlens.tasks.classification.metrics import quick_qwk
    from medlens.tasks.classification.module import quick_accuracy, quick_auc

    if name == "qwk":
        return quick_qwk(np.asarray(labels, dtype=np.int64), probs)
    if name == "accuracy":
        return quick_accuracy(labels, probs, multilabel)
    return quick_auc(labels, probs, multilabel)


def column_slices(encoder) -> dict[str, slice]:
    """Each clinical input column's encoded features in ``(N, F)``: numeric 2 (z, flag), categorical one-hot + flag."""
    slices, start = {}, 0
    for column in encoder.numeric:
        slices[column], start = slice(start, start + 2), start + 2
    for column, categories in encoder.categories.items():
        slices[column], start = slice(start, start + len(categories) + 1), start + len(categories) + 1
    return slices


def input_importance(model, config: Config, data, encoder=None, *, repeats: int = REPEATS, seed: int = 0,
                     split: str = "val") -> dict:
    """The score's drop when each clinical column is permuted and when each view is withheld.

    Args:
        model: the fused network (``model(images, clinical)``), or an ensemble of them.
        data: the validation :class:`~medlens.data.prepared.SplitData` (``clinical`` encoded by ``encoder``).
        encoder: the run's :class:`~medlens.data.clinical.ClinicalEncoder`; ``None`` without clinical inputs.
        repeats: permutations per clinical column (seeded ``seed, seed + 1, ...``).

    Returns:
        ``{"split", "n_cases", "metric", "baseline", "repeats", "how", "clinical": [{"input", "features", "drop",
        "std", "drops"}], "views": [{"input", "drop", "n_with_view"}]}``; rows sorted by drop, largest first. A
        positive drop means the network relies on the input; about 0 that it does not (or the split is too small
        to tell: compare with ``std``).
    """
    multilabel = config.dataset.task == "multilabel"
    metric = score_name(config)

    def scored(images: np.ndarray, clinical: np.ndarray | None) -> float:
        probs = to_probs(predict_logits(model, images, clinical=clinical), multilabel=multilabel)
        return score(data.labels, probs, metric, multilabel)

    baseline = scored(data.images, data.clinical)
    doc = {"split": split, "n_cases": len(data.labels), "metric": metric, "baseline": _rounded(baseline),
           "repeats": repeats, "how": f"drop in {split} {metric} when a clinical column's encoded features are "
           f"permuted across cases (mean and standard deviation over {repeats} seeded permutations), and when a "
           "view is withheld from every case (set missing)", "clinical": [], "views": []}
    if encoder is not None and data.clinical is not None:
        names = encoder.feature_names()
        for column, part in column_slices(encoder).items():
            drops = [baseline - scored(data.images, _permuted(data.clinical, part, seed + r)) for r in range(repeats)]
            doc["clinical"].append({"input": column, "features": names[part], "drop": _rounded(np.mean(drops)),
                                    "std": _rounded(np.std(drops)), "drops": [_rounded(d) for d in drops]})
    views = view_count(config.data)
    if views > 1:
        for v, name in enumerate(config.data.views):
            withheld, present = _withheld(data.images, v, views)
            drop = baseline - scored(withheld, data.clinical) if present else float("nan")
            doc["views"].append({"input": name, "drop": _rounded(drop), "n_with_view": present})
    for key in ("clinical", "views"):
        doc[key].sort(key=lambda row: -row["drop"] if np.isfinite(row["drop"]) else np.inf)
    return doc


def _permuted(clinical: np.ndarray, part: slice, seed: int) -> np.ndarray:
    """A copy of ``clinical (N, F)`` whose columns ``part`` are shuffled across the cases, together."""
    out = np.array(clinical, dtype=np.float32, copy=True)
    out[:, part] = clinical[np.random.default_rng(seed).permutation(len(clinical)), part]
    return out


def _withheld(images: np.ndarray, v: int, views: int) -> tuple[np.ndarray, int]:
    """A copy of ``images (N, V * C, *S)`` with view ``v`` set to NaN (missing), and how many cases had it."""
    out = np.array(images, dtype=np.float32, copy=True)
    grouped = out.reshape(len(out), views, -1)
    present = int((~np.isnan(grouped[:, v]).all(axis=1)).sum())
    grouped[:, v] = np.nan
    return out, present


def _rounded(value) -> float:
    return round(float(value), 6) if np.isfinite(value) else float("nan")


def importance_lines(doc: dict) -> str:
    """The importances as text lines for the evaluation summary."""
    lines = [f"what each input is worth ({doc['split']} split, {doc['n_cases']} cases, {doc['metric']} "
             f"{doc['baseline']:.3f}; drop when the input is permuted / withheld):"]
    for row in doc["clinical"]:
        lines.append(f"  clinical {row['input']:<20} drop {row['drop']:+.4f} ± {row['std']:.4f}")
    for row in doc["views"]:
        lines.append(f"  view {row['input']:<24} drop {row['drop']:+.4f}  ({row['n_with_view']} cases have it)")
    return "\n".join(lines)
