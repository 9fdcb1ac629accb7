"""``evaluate``: the locked test split through the trained model, every figure with a 95% CI.

Writes ``metrics.json`` (and ``predictions_<split>.csv``) in the run folder:

- ``metrics``: accuracy, balanced accuracy, AUC, per-class precision / recall / specificity / F1,
  confusion matrix, each with a bootstrap CI (patients resampled when known), at the 0.5 (or
  argmax) rule on calibrated probabilities;
- ``metrics_youden`` (binary): the same at the threshold chosen on validation;
- ``calibration``: ECE before and after temperature scaling (temperature fitted on validation);
- ``medmnist_protocol``: AUC / ACC exactly as the MedMNIST v2 evaluator computes them;
- ``baseline``: k-nearest neighbours on downsampled pixels, beside the network.
"""

from __future__ import annotations

import csv
import io
import time

import numpy as np

from medlens._files import write_json_atomic, write_text_atomic
from medlens.config import Config
from medlens.data.splits import read_splits
from medlens.engine.checkpoints import load_state_dict
from medlens.engine.inference import predict_logits, to_probs
from medlens.engine.prepared import SplitData, open_config_dataset, prepare_split, split_cases
from medlens.engine.runs import RunFolder, now, open_run
from medlens.errors import ConfigError


def load_model(run: RunFolder, config: Config):
    from medlens.engine.lightning import build_model

    model = build_model(config)
    model.load_state_dict(load_state_dict(run.weights))
    return model.eval()


def evaluate_run(path, *, split: str = "test", tta: bool | None = None, n_bootstrap: int | None = None,
                 baseline: bool | None = None, save_masks: bool = False, log=print) -> dict:
    """Evaluate the run at ``path`` on ``split`` (``test`` or ``val``); returns the metrics document."""
    from medlens.evaluation import (classification_metrics, expected_calibration_error, format_metrics_table,
                                    medmnist_metrics)

    started = time.perf_counter()
    run = open_run(path)
    config = run.read_config()
    if split not in ("test", "val"):
        raise ConfigError(f"--split {split}: choose test (the locked split) or val")
    if config.dataset.task == "segmentation":
        from medlens.engine.segment_io import evaluate_segmentation

        return evaluate_segmentation(run, config, load_model(run, config), split=split, tta=tta,
                                     n_bootstrap=n_bootstrap, save_masks=save_masks, log=log)
    dataset = open_config_dataset(config)
    cases = split_cases(dataset, read_splits(run.splits, dataset), config.dataset.fold)
    data = prepare_split(dataset, split, cases[split], config)
    calibration = run.read_calibration()
    tta = config.evaluate.tta if tta is None else tta
    n_boot = config.evaluate.n_bootstrap if n_bootstrap is None else n_bootstrap
    multilabel, task = config.dataset.task == "multilabel", config.dataset.task
    model = load_model(run, config)
    logits = predict_logits(model, data.images,
                            tta_flip_axes=tuple(config.augment.flip_axes) if tta else ())
    raw = to_probs(logits, multilabel=multilabel)
    probs = to_probs(logits, multilabel=multilabel, temperature=calibration["temperature"])
    names = list(config.dataset.class_names)
    common = dict(groups=data.groups, n_boot=n_boot, seed=config.train.seed)
    doc = {"medlens_metrics_version": 1, "run": str(run.root), "split": split, "created": now(), "tta": tta,
           "n_cases": len(data.cases), "grouped_by": "patient" if any(c.patient_id for c in data.cases) else "case",
           "metrics": classification_metrics(data.labels, probs, task, names, **common)}
    if task == "binary":
        doc["metrics_youden"] = classification_metrics(data.labels, probs, task, names,
                                                       threshold=calibration["threshold"], **common)
    doc["calibration"] = {"temperature": calibration["temperature"], "fitted_on": calibration.get("fitted_on"),
                          "ece_before": expected_calibration_error(data.labels, raw),
                          "ece_after": expected_calibration_error(data.labels, probs),
                          "threshold": calibration["threshold"], "threshold_rule": calibration.get("threshold_rule")}
    doc["medmnist_protocol"] = medmnist_metrics(data.labels, raw, task)
    if config.evaluate.baseline if baseline is None else baseline:
        doc["baseline"] = _baseline(dataset, cases, config, data, common)
    doc["seconds"] = round(time.perf_counter() - started, 2)
    write_json_atomic(run.metrics_json, json_safe(doc))
    write_text_atomic(run.root / f"predictions_{split}.csv", predictions_csv(data, probs, names))
    log(format_metrics_table(doc["metrics"], title=f"{run.root} — {split} split ({len(data.cases)} cases)"))
    log(_summary_lines(doc))
    log(f"metrics written to {run.metrics_json}")
    from medlens.report import ClassificationEvidence, write_report

    write_report(run, classification=ClassificationEvidence(model, data.images, data.labels, raw, probs,
                                                            [c.case_id for c in data.cases]), log=log)
    return doc


def json_safe(value):
    """NaN / infinity -> ``None`` so the file is strict JSON (browsers and ``jq`` reject ``NaN``)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _baseline(dataset, cases, config: Config, test: SplitData, common: dict) -> dict:
    """k-NN on pooled pixels, fitted on train, k chosen on val, scored on the evaluated split."""
    from medlens.evaluation import classification_metrics, knn_baseline

    train = prepare_split(dataset, "train", cases["train"], config)
    val = prepare_split(dataset, "val", cases["val"], config)
    probs, info = knn_baseline(train.images, train.labels, val.images, val.labels, test.images,
                               config.dataset.task, seed=config.train.seed,
                               num_classes=len(config.dataset.class_names))
    metrics = classification_metrics(test.labels, probs, config.dataset.task, list(config.dataset.class_names),
                                     **common)
    return {"method": "k-nearest neighbours on average-pooled, standardised pixels (scikit-learn)", **info,
            "accuracy": metrics["accuracy"], "auc": metrics["auc"], "balanced_accuracy": metrics["balanced_accuracy"]}


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
    if "baseline" in doc:
        b = doc["baseline"]
        lines.append(f"baseline k-NN (k={b['k']}): AUC {fmt(b['auc'])}  accuracy {fmt(b['accuracy'])}  "
                     f"vs network AUC {fmt(doc['metrics']['auc'])}")
    return "\n".join(lines)


def predictions_csv(data: SplitData, probs: np.ndarray, names: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case_id", "patient_id", "label", *[f"p_{n}" for n in names]])
    for case, label, row in zip(data.cases, data.labels, probs):
        label_text = ";".join(n for n, f in zip(names, label) if f) if np.ndim(label) else names[int(label)]
        writer.writerow([case.case_id, case.patient_id or "", label_text, *[f"{p:.6f}" for p in row]])
    return buffer.getvalue()
