"""``evaluate`` for segmentation runs: whole images in, masks on the input's grid out.

Evaluation segments every case of the split on its own grid (the same path as prediction) and
scores it against the original mask, in millimetres: per case and class Dice, IoU, HD95, mean
surface distance and size difference, summarised with bootstrap 95% CIs (the empty-mask rules
are in :mod:`medlens.evaluation.segmentation`). Prediction (:mod:`medlens.deploy.files`) writes one
mask per input with exactly the input's spacing, origin and direction.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from medlens._files import write_json_atomic, write_text_atomic
from medlens.config import Config
from medlens.data.splits import read_splits
from medlens.engine.prepared import open_config_dataset, split_cases
from medlens.engine.runs import RunFolder, now
from medlens.engine.segment import segment_image
from medlens.io import write_image
from medlens.io.formats import suffix_of


def evaluate_segmentation(run: RunFolder, config: Config, model, *, split: str, tta: bool | None,
                          n_bootstrap: int | None, save_masks: bool = False, log=print) -> dict:
    """Segment and score every case of ``split``; writes ``metrics.json`` and ``segmentation_<split>.csv``."""
    from medlens.evaluation import case_metrics, format_segmentation_table, summarize_segmentation

    started = time.perf_counter()
    dataset = open_config_dataset(config)
    cases = split_cases(dataset, read_splits(run.splits, dataset), config.dataset.fold)[split]
    mirror = config.segment.mirror_tta if tta is None else tta
    post, labels = run.read_postprocess(), class_labels(config)
    rows, spacing_known = [], True
    for case in cases:
        image = dataset.load_image(case)
        spacing_known &= image.spacing_known
        result = segment_image(model, image, config, post, mirror=mirror, where=f"case {case.case_id}")
        reference = dataset.load_mask(case)
        if save_masks:
            write_image(result.as_image(), run.root / f"masks_{split}" / f"{_safe(case.case_id)}.nii.gz")
        rows.append({"case_id": case.case_id, "patient_id": case.patient_id,
                     "metrics": case_metrics(result.labels, np.rint(reference.array[0]).astype(np.int64), labels,
                                             image.spacing_mm)})
    groups = [r["patient_id"] or r["case_id"] for r in rows]
    n_boot = config.evaluate.n_bootstrap if n_bootstrap is None else n_bootstrap
    summary = summarize_segmentation(rows, list(labels.values()), n_boot=n_boot, seed=config.train.seed,
                                     groups=groups)
    doc = {"medlens_metrics_version": 1, "run": str(run.root), "split": split, "created": now(), "task": "segmentation",
           "tta": mirror, "postprocess": post.get("keep_largest", {}), "n_cases": len(rows),
           "grouped_by": "patient" if any(c.patient_id for c in cases) else "case",
           "distances_in": "mm" if spacing_known else "pixels (the images carry no spacing)", "metrics": summary,
           "seconds": round(time.perf_counter() - started, 2)}
    from medlens.engine.evaluate import json_safe

    write_json_atomic(run.metrics_json, json_safe(doc))
    write_text_atomic(run.root / f"segmentation_{split}.csv", per_case_csv(rows, list(labels.values())))
    log(format_segmentation_table(summary, title=f"{run.root} — {split} split ({len(rows)} cases)"))
    if not spacing_known:
        log("note: these images carry no pixel spacing, so HD95 / MSD are in pixels and sizes in pixels, not mm")
    log(f"metrics written to {run.metrics_json}; per case in {run.root / f'segmentation_{split}.csv'}")
    from medlens.report import SegmentationEvidence, write_report

    write_report(run, segmentation=SegmentationEvidence(model, dataset, cases, post, mirror), log=log)
    return doc


def class_labels(config: Config) -> dict[int, str]:
    """Mask value -> class name for the foreground classes."""
    values = config.dataset.label_values or tuple(range(len(config.dataset.class_names)))
    return {int(v): n for v, n in zip(values[1:], config.dataset.class_names[1:])}


def per_case_csv(rows: list[dict], names: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    keys = ["dice", "iou", "hd95_mm", "msd_mm", "size_pred", "size_ref", "status"]
    writer.writerow(["case_id", *[f"{n}_{k}" for n in names for k in keys]])
    for row in rows:
        values = [row["metrics"][n].get(k) for n in names for k in keys]
        writer.writerow([row["case_id"], *["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                                           for v in values]])
    return buffer.getvalue()


def _safe(case_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)


MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png")


def output_name(path: Path, tag: str, suffix: str | None = None) -> str:
    """``scan.nrrd -> scan_seg.nrrd``; DICOM and formats medlens does not write become NIfTI."""
    own = suffix_of(path) if path.is_file() else ""
    stem = path.name[: len(path.name) - len(own)] if own else path.name
    chosen = suffix or (own if own in MASK_SUFFIXES else ".nii.gz")
    return f"{stem}{tag}{chosen}"
