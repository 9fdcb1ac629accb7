"""Classification evaluation: the split through the trained model, every figure with a 95% CI.

The metrics document (``metrics.json``) holds:

- ``metrics``: accuracy, balanced accuracy, AUC, per-class precision / recall / specificity / F1,
  confusion matrix, each with a bootstrap CI (patients resampled when known), at the 0.5 (or
  argmax) rule on calibrated probabilities; ordinal tasks add the quadratic weighted kappa and the
  mean absolute grade error (``qwk``, ``mae``, ``grade_rule``);
- ``metrics_youden`` (binary): the same at the threshold chosen on validation;
- ``calibration``: ECE before and after temperature scaling (temperature fitted on validation);
- ``medmnist_protocol``: AUC / ACC exactly as the MedMNIST v2 evaluator computes them;
- ``baseline``: k-nearest neighbours on downsampled pixels, beside the network;
- ``ood_guard``: the share of the split's images the out-of-distribution guard flags;
- ``sources`` (several inputs): the fused network beside itself with inputs withheld, and gradient boosting on
  the clinical values alone (:mod:`.sources`);
- ``importance`` (several inputs): on the validation split, the drop in the monitor's score when each clinical
  column is permuted and when each view is withheld (:mod:`.importance`).

``predictions_<split>.csv`` has one row per case. The evidence for the report (probabilities and
the Grad-CAM maps of the gallery cases) is computed here, so the report never runs the model.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from medlens.config import Config
from medlens.data.prepared import SplitData, open_config_dataset, prepare_split, split_cases
from medlens.data.splits import read_splits
from medlens.data.tensors import label_array
from medlens.models.inference import predict_logits, to_probs
from medlens.runs import RunFolder, now
from medlens.tasks.base import EvaluateOptions, Evaluation
from medlens.tasks.classification.inputs import is_fused, read_clinical, view_count
from medlens.tasks.classification.sources import compare_sources, sources_table

GALLERY_SIZE = 8  # Grad-CAM overlays of the most confident mistakes, and as many correct cases


@dataclass
class ClassificationEvidence:
    """What evaluation holds in memory for the report's figures.

    Attributes:
        labels: ``(N,)`` class indices, or ``(N, L)`` 0/1 for multi-label.
        raw: ``(N, K)`` probabilities before temperature scaling.
        probs: ``(N, K)`` calibrated probabilities (the ones metrics.json scores).
        case_ids: ``N`` case ids.
        gallery: ``[(index, image (C, *spatial), cam (*spatial))]``: the cases of the Grad-CAM gallery; with
            several views ``image (V * C, *spatial)`` and ``cam (V, *spatial)``, one map per view (NaN: no view).
        views: the view names when the network takes several views (``data.views``), else empty.
    """

    labels: np.ndarray
    raw: np.ndarray
    probs: np.ndarray
    case_ids: list[str]
    gallery: list[tuple[int, np.ndarray, np.ndarray]]
    views: tuple[str, ...] = ()


def evaluate_classification(run: RunFolder, config: Config, model, options: EvaluateOptions, log) -> Evaluation:
    """Score ``options.split`` of the run's dataset; the metrics document, predictions CSV and report evidence."""
    from medlens.evaluation import expected_calibration_error
    from medlens.tasks.classification.baseline import medmnist_metrics
    from medlens.tasks.classification.metrics import classification_metrics, format_metrics_table

    dataset = open_config_dataset(config)
    cases = split_cases(dataset, read_splits(run.splits, dataset), config.dataset.fold)
    split = options.split
    data = prepare_split(dataset, split, cases[split], config)
    encoder = read_clinical(run.clinical)
    if encoder is not None:
        data.clinical = encoder.encode(data.cases)
    calibration = run.read_calibration()
    tta = config.evaluate.tta if options.tta is None else options.tta
    n_boot = config.evaluate.n_bootstrap if options.n_bootstrap is None else options.n_bootstrap
    kind = config.dataset.task
    logits = predict_logits(model, data.images, tta_flip_axes=tuple(config.augment.flip_axes) if tta else (),
                            clinical=data.clinical)
    raw = to_probs(logits, multilabel=kind == "multilabel")
    probs = to_probs(logits, multilabel=kind == "multilabel", temperature=calibration["temperature"])
    names = list(config.dataset.class_names)
    common = dict(groups=data.groups, n_boot=n_boot, seed=config.train.seed)
    doc = {"medlens_metrics_version": 1, "run": str(run.root), "split": split, "created": now(), "task": kind,
           "tta": tta, "n_cases": len(data.cases),
           "grouped_by": "patient" if any(c.patient_id for c in data.cases) else "case",
           "metrics": classification_metrics(data.labels, probs, kind, names, **common)}
    if kind == "binary":
        doc["metrics_youden"] = classification_metrics(data.labels, probs, kind, names,
                                                       threshold=calibration["threshold"], **common)
    doc["calibration"] = {"temperature": calibration["temperature"], "fitted_on": calibration.get("fitted_on"),
                          "ece_before": expected_calibration_error(data.labels, raw),
                          "ece_after": expected_calibration_error(data.labels, probs),
                          "threshold": calibration["threshold"], "threshold_rule": calibration.get("threshold_rule")}
    doc["medmnist_protocol"] = medmnist_metrics(data.labels, raw, kind)
    if config.evaluate.baseline if options.baseline is None else options.baseline:
        doc["baseline"] = _baseline(dataset, cases, config, data, common)
    if (guarded := guard_flags(run, model, data.images)) is not None:
        doc["ood_guard"] = guarded
    files = {f"predictions_{split}.csv": predictions_csv(data, probs, names)}
    if is_fused(config):
        doc["sources"], files[f"sources_{split}.csv"] = compare_sources(
            model, config, data, _clinical_training(dataset, cases, encoder), probs, calibration, common)
        doc["importance"] = _importance(model, config, dataset, cases, encoder)
    table = format_metrics_table(doc["metrics"], title=f"{run.root} — {split} split ({len(data.cases)} cases)")
    views = view_count(config.data)
    gallery = gallery_maps(model, data.images, data.labels, probs, clinical=data.clinical, views=views)
    evidence = ClassificationEvidence(data.labels, raw, probs, [c.case_id for c in data.cases], gallery,
                                      tuple(config.data.views) if views > 1 else ())
    return Evaluation(doc, files, evidence, table + "\n" + _summary_lines(doc))


def _clinical_training(dataset, cases: dict, encoder) -> tuple[np.ndarray, np.ndarray] | None:
    """The training split's encoded clinical values and labels (no image is read), for the clinical-only model;
    ``None`` without clinical inputs, or without training cases (other data: ``medlens evaluate RUN --data``)."""
    if encoder is None or not cases["train"]:
        return None
    return encoder.encode(cases["train"]), label_array(dataset, cases["train"])


def _importance(model, config: Config, dataset, cases: dict, encoder) -> dict:
    """:func:`~.importance.input_importance` on the validation split (so nothing is read off the evaluated split)."""
    from medlens.tasks.classification.importance import input_importance

    if not cases["val"]:
        return {"split": "val", "note": "no validation cases: importances not measured"}
    val = prepare_split(dataset, "val", cases["val"], config)
    if encoder is not None:
        val.clinical = encoder.encode(val.cases)
    return input_importance(model, config, val, encoder, seed=config.train.seed)


def guard_flags(run: RunFolder, model, images: np.ndarray) -> dict | None:
    """The out-of-distribution guard on the evaluated split: the share of its images flagged (about the guard's
    5% when the split is like validation; more means the split differs from the training data). ``None``
    for a run without a guard."""
    from medlens.tasks.classification.ood import extract_features, read_guard

    guard = read_guard(run.ood_guard, model)
    if guard is None:
        return None
    _, inside = guard.check(extract_features(model, images, blocks=list(guard.blocks)))
    return {"flagged": round(float(np.mean(~inside)), 6), "n": int(len(inside)), "threshold": guard.threshold}


def gallery_cases(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(predicted (N,), right (N,) bool, order)``: the most confident mistakes first, then the most confident
    correct cases, up to :data:`GALLERY_SIZE` of each. Multi-label: the top-scoring label, right if present."""
    predicted = probs.argmax(axis=1)
    right = labels[np.arange(len(labels)), predicted] == 1 if labels.ndim == 2 else predicted == labels
    confidence = probs[np.arange(len(probs)), predicted]
    by_confidence = np.argsort(-confidence, kind="stable")
    wrong = [i for i in by_confidence if not right[i]][:GALLERY_SIZE]
    correct = [i for i in by_confidence if right[i]][:GALLERY_SIZE]
    return predicted, right, np.asarray(wrong + correct, dtype=np.int64)


def gallery_maps(model, images: np.ndarray, labels: np.ndarray, probs: np.ndarray, *,
                 clinical: np.ndarray | None = None, views: int = 1) -> list:
    """Grad-CAM of the predicted class for the gallery cases: ``[(index, image, cam)]`` in gallery order; with
    several views ``cam (V, *spatial)``, one map per view (the clinical values given as the case has them)."""
    from medlens.explain.cam import compute_cams, compute_view_cams

    predicted, _, order = gallery_cases(labels, probs)
    if not len(order):
        return []
    chosen = None if clinical is None else clinical[order]
    explain = compute_view_cams if views > 1 else compute_cams
    cams = explain(model, images[order], class_indices=predicted[order].tolist(), clinical=chosen)
    return [(int(i), images[i], cam) for i, cam in zip(order, cams)]


def _baseline(dataset, cases, config: Config, test: SplitData, common: dict) -> dict:
    """k-NN on pooled pixels, fitted on train, k chosen on val, scored on the evaluated split."""
    from medlens.tasks.classification.baseline import knn_baseline
    from medlens.tasks.classification.metrics import classification_metrics

    train = prepare_split(dataset, "train", cases["train"], config)
    val = prepare_split(dataset, "val", cases["val"], config)
    probs, info = knn_baseline(train.images, train.labels, val.images, val.labels, test.images,
                               config.dataset.task, seed=config.train.seed,
                               num_classes=len(config.dataset.class_names))
    metrics = classification_metrics(test.labels, probs, config.dataset.task, list(config.dataset.class_names),
                                     **common)
    kept = ("accuracy", "auc", "balanced_accuracy", "qwk", "mae")
    return {"method": "k-nearest neighbours on average-pooled, standardised pixels (scikit-learn)", **info,
            **{key: metrics[key] for key in kept if key in metrics}}


def _summary_lines(doc: dict) -> str:
    fmt = lambda m: f"{m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"  # noqa: E731
    lines = []
    if "metrics_youden" in doc:
        y = doc["metrics_youden"]
        lines.append(f"at the validation (Youden) threshold {doc['calibration']['threshold']:.3f}: "
                     f"accuracy {fmt(y['accuracy'])}, balanced accuracy {fmt(y['balanced_accuracy'])}")
    c = doc["calibration"]
    lines.append(f"calibration: ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f} after temperature "
                 f"{c['temperature']:.3f} (fitted on {c['fitted_on']})")
    m = doc["medmnist_protocol"]
    lines.append(f"MedMNIST protocol: AUC {m['auc']:.4f}  ACC {m['acc']:.4f}")
    if "sources" in doc:
        lines.append(sources_table(doc["sources"]))
    if "metric" in doc.get("importance", {}):
        from medlens.tasks.classification.importance import importance_lines

        lines.append(importance_lines(doc["importance"]))
    if "baseline" in doc:
        b = doc["baseline"]
        lines.append(f"baseline k-NN (k={b['k']}): AUC {fmt(b['auc'])}  accuracy {fmt(b['accuracy'])}  "
                     f"vs network AUC {fmt(doc['metrics']['auc'])}")
        if "qwk" in b:
            lines.append(f"baseline k-NN: quadratic kappa {fmt(b['qwk'])}  mean absolute grade error {fmt(b['mae'])}"
                         f"  vs network {fmt(doc['metrics']['qwk'])}  {fmt(doc['metrics']['mae'])}")
    return "\n".join(lines)


def predictions_csv(data: SplitData, probs: np.ndarray, names: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case_id", "patient_id", "label", *[f"p_{n}" for n in names]])
    for case, label, row in zip(data.cases, data.labels, probs):
        label_text = ";".join(n for n, f in zip(names, label) if f) if np.ndim(label) else names[int(label)]
        writer.writerow([case.case_id, case.patient_id or "", label_text, *[f"{p:.6f}" for p in row]])
    return buffer.getvalue()
