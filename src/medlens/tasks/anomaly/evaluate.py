"""Anomaly evaluation: a split (the locked test split by default), every case of every class, scored.

The metrics document (``metrics.json``) holds ``metrics`` (:func:`~medlens.tasks.anomaly.metrics.anomaly_metrics`:
AUROC, AUPRC, sensitivity and specificity at the run's threshold, with bootstrap CIs over patients when
known) and ``pixel`` (pixel-level AUROC where the cases have masks, else why not). ``scores_<split>.csv`` has
one row per case. The evidence for the report (scores, the ROC curve) is computed here.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from medlens.config import Config
from medlens.data.prepared import SplitData, open_config_dataset, prepare_split, split_cases
from medlens.data.splits import read_splits
from medlens.runs import RunFolder, now
from medlens.tasks.anomaly.cases import is_abnormal
from medlens.tasks.anomaly.infer import anomaly_maps, scores_of
from medlens.tasks.anomaly.metrics import anomaly_metrics, pixel_auroc
from medlens.tasks.base import EvaluateOptions, Evaluation


@dataclass
class AnomalyEvidence:
    """``scores (N,)``, ``abnormal (N,)`` bool and the ``threshold``, for the report's figures."""

    scores: np.ndarray
    abnormal: np.ndarray
    threshold: float


def evaluate_anomaly(run: RunFolder, config: Config, model, options: EvaluateOptions, log) -> Evaluation:
    """Score ``options.split``; the metrics document, the per-case CSV and the report's evidence."""
    dataset = open_config_dataset(config)
    cases = split_cases(dataset, read_splits(run.splits, dataset), config.dataset.fold)
    data = prepare_split(dataset, options.split, cases[options.split], config)
    threshold = float(run.read_calibration()["threshold"])
    n_boot = config.evaluate.n_bootstrap if options.n_bootstrap is None else options.n_bootstrap
    maps = anomaly_maps(model, data.images)
    scores, abnormal = scores_of(maps), is_abnormal(data.labels, config)
    metrics = anomaly_metrics(abnormal, scores, threshold, groups=data.groups, n_boot=n_boot, seed=config.train.seed)
    doc = {"medlens_metrics_version": 1, "run": str(run.root), "split": options.split, "created": now(),
           "task": "anomaly", "method": config.anomaly.method, "normal": list(config.anomaly.normal),
           "n_cases": len(data.cases), "grouped_by": "patient" if any(c.patient_id for c in data.cases) else "case",
           "metrics": metrics, "pixel": _pixel(data, maps, abnormal, config)}
    evidence = AnomalyEvidence(scores, abnormal, threshold)
    return Evaluation(doc, {f"scores_{options.split}.csv": scores_csv(data, scores, abnormal, threshold, config)},
                      evidence, summary_text(doc))


def _pixel(data: SplitData, maps: np.ndarray, abnormal: np.ndarray, config: Config) -> dict:
    """Pixel-level AUROC over the cases that have masks; says so when none has one."""
    from medlens.data.label_maps import as_label_map
    from medlens.io import read_image
    from medlens.transforms.volume import resample

    chosen = [i for i, c in enumerate(data.cases) if c.mask is not None]
    if not chosen:
        return {"auroc": None, "note": "no case of this split has a mask, so pixel-level AUROC is not measured"}
    masks = [resample(as_label_map(read_image(data.cases[i].mask, spatial_dims=config.dataset.spatial_dims)).array[:1],
                      tuple(config.data.input_size), nearest=True)[0] for i in chosen]
    return {"auroc": pixel_auroc([maps[i] for i in chosen], masks), "n_cases": len(chosen),
            "n_abnormal": int(abnormal[chosen].sum())}


def scores_csv(data: SplitData, scores: np.ndarray, abnormal: np.ndarray, threshold: float, config: Config) -> str:
    """``case_id, patient_id, class, abnormal, anomaly_score, decision`` per case."""
    names = list(config.dataset.class_names)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case_id", "patient_id", "class", "abnormal", "anomaly_score", "decision"])
    for case, label, bad, score in zip(data.cases, data.labels, abnormal, scores):
        writer.writerow([case.case_id, case.patient_id or "", names[int(label)], int(bad), f"{score:.6g}",
                         "anomalous" if score > threshold else "normal"])
    return buffer.getvalue()


def summary_text(doc: dict) -> str:
    """The lines ``medlens evaluate`` prints."""
    m = doc["metrics"]
    fmt = lambda e: "n/a" if e is None else f"{e['value']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}]"  # noqa: E731
    lines = [f"{doc['split']} split: {m['n_normal']} normal, {m['n_abnormal']} abnormal cases; threshold "
             f"{m['threshold']:.4g}"]
    if m["auroc"] is not None:
        lines.append(f"AUROC {fmt(m['auroc'])}  AUPRC {fmt(m['auprc'])}")
    if m.get("note"):
        lines.append(m["note"])
    lines.append(f"at the threshold: sensitivity {fmt(m['sensitivity'])}  specificity {fmt(m['specificity'])}")
    pixel = doc["pixel"]
    lines.append(f"pixel-level AUROC {pixel['auroc']:.4f} over {pixel['n_cases']} cases with masks"
                 if pixel["auroc"] is not None else pixel["note"])
    return "\n".join(lines)
