"""What each input adds: the fused network beside itself with inputs withheld, and a model of the clinical
values alone (scikit-learn gradient boosting), each scored with 95% CIs on the evaluated split.

Rows, as applicable: all inputs fused; the images alone (clinical values withheld); each view alone (the other
views and the clinical values withheld); the clinical values alone. Withholding is what the network met in
training through ``train.modality_dropout``, so the rows are the trained network's own answers with less to
go on, not separately trained networks.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from medlens.config import Config
from medlens.models.inference import predict_logits, to_probs
from medlens.tasks.classification.inputs import view_count

KEPT = ("accuracy", "auc", "balanced_accuracy")


def compare_sources(model, config: Config, data, train, probs: np.ndarray, calibration: dict,
                    common: dict) -> tuple[dict, str]:
    """``{"rows": [{"source", "how", accuracy, auc, balanced_accuracy}]}`` for the split ``data``, and the
    per-case probabilities of every source as CSV text (``sources_<split>.csv``).

    Args:
        data: the evaluated :class:`~medlens.data.prepared.SplitData` (``clinical`` set when the plan has it).
        train: the training cases' clinical values and labels, ``(clinical (N, F), labels (N,))``, for the
            gradient-boosting model; ``None`` without clinical inputs.
        probs: ``(N, K)`` calibrated probabilities of the fused network on ``data``.
        common: ``groups``, ``n_boot``, ``seed`` for the bootstrap.
    """
    from medlens.data.clinical import absent_vector

    names, kind = list(config.dataset.class_names), config.dataset.task
    answers: dict[str, np.ndarray] = {}

    def score(source: str, p: np.ndarray) -> dict:
        answers[source] = p
        return _scored(data.labels, p, kind, names, common)

    rows = [{"source": "all inputs", "how": "the fused network", **score("all inputs", probs)}]
    absent = None
    if data.clinical is not None:
        absent = np.broadcast_to(absent_vector(config.clinical), data.clinical.shape).astype(np.float32)
        rows.append({"source": "images only", "how": "the fused network, clinical values withheld",
                     **score("images only", _probs(model, data.images, absent, config, calibration))})
    views = view_count(config.data)
    if views > 1:
        for v, name in enumerate(config.data.views):
            alone = _only_view(data.images, v, views)
            if np.isnan(alone.reshape(len(alone), views, -1)[:, v]).all():
                continue
            rows.append({"source": f"view {name} only", "how": "the fused network, other views"
                         + (" and clinical values" if absent is not None else "") + " withheld",
                         **score(f"view {name} only", _probs(model, alone, absent, config, calibration))})
    if train is not None and data.clinical is not None:
        rows.append({"source": "clinical values only", "how": "gradient boosting (scikit-learn) fitted on the "
                     "training split's encoded clinical values",
                     **score("clinical values only", _boosted(train, data.clinical, config))})
    return {"rows": rows}, _answers_csv(data, answers, names)


def _answers_csv(data, answers: dict[str, np.ndarray], names: list[str]) -> str:
    """One row per case: its id and, per source, the probability of the positive class (binary) or of each class."""
    binary = len(names) == 2 and answers["all inputs"].shape[1] == 2
    columns = [s if binary else f"{s}:p_{n}" for s in answers for n in (names[1:] if binary else names)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case_id", "patient_id", *columns])
    for i, case in enumerate(data.cases):
        values = [p[i, 1:] if binary else p[i] for p in answers.values()]
        writer.writerow([case.case_id, case.patient_id or "", *[f"{v:.6f}" for row in values for v in row]])
    return buffer.getvalue()


def _probs(model, images: np.ndarray, clinical: np.ndarray | None, config: Config, calibration: dict) -> np.ndarray:
    logits = predict_logits(model, images, clinical=clinical)
    return to_probs(logits, multilabel=config.dataset.task == "multilabel", temperature=calibration["temperature"])


def _only_view(images: np.ndarray, keep: int, views: int) -> np.ndarray:
    """``images (N, V * C, *S)`` with every view but ``keep`` set to NaN (withheld)."""
    out = np.array(images, dtype=np.float32, copy=True)
    grouped = out.reshape(len(out), views, -1)
    grouped[:, [v for v in range(views) if v != keep]] = np.nan
    return out


def _boosted(train: tuple[np.ndarray, np.ndarray], clinical: np.ndarray, config: Config) -> np.ndarray:
    """Probabilities ``(N, K)`` of a gradient-boosting classifier of the clinical values alone (one per label for
    multi-label)."""
    features, labels = train
    k, seed = len(config.dataset.class_names), config.train.seed
    if config.dataset.task == "multilabel":
        return np.stack([_fit_one(features, labels[:, j], clinical, seed, 2)[:, 1] for j in range(k)], 1)
    return _fit_one(features, labels, clinical, seed, k)


def _fit_one(features, labels, clinical, seed: int, k: int) -> np.ndarray:
    """``(N, k)`` probabilities of classes ``0..k-1`` (a class absent from training gets 0)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    probs = np.zeros((len(clinical), k), dtype=np.float64)
    present = np.unique(labels)
    if len(present) < 2:
        probs[:, int(present[0])] = 1.0
        return probs
    model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=seed, early_stopping=False)
    model.fit(features, labels)
    probs[:, model.classes_.astype(int)] = model.predict_proba(clinical)
    return probs


def _scored(labels, probs, kind, names, common) -> dict:
    from medlens.tasks.classification.metrics import classification_metrics

    metrics = classification_metrics(labels, probs, kind, names, **common)
    return {key: metrics[key] for key in KEPT}


def sources_table(doc: dict) -> str:
    """The rows as text lines: source, accuracy and AUC with their 95% CIs."""
    fmt = lambda m: f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"  # noqa: E731
    lines = ["what each input adds (95% CIs):"]
    for row in doc["rows"]:
        lines.append(f"  {row['source']:<28} accuracy {fmt(row['accuracy'])}  AUC {fmt(row['auc'])}  ({row['how']})")
    return "\n".join(lines)
