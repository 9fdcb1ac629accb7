"""Detection evaluation: every image of the split through the detector on its own grid, scored against its boxes.

The split's images go through the same path as prediction (:func:`~.infer.detect_image`); the boxes
are compared with the annotated ones on the image's own voxel grid: COCO mAP@[.5:.95], mAP@0.5,
per-class AP, recall at 100 detections, FROC (sensitivity at 1/8 ... 8 false positives per image,
and their mean, the LUNA16 score), results by object size, each with a bootstrap 95% CI over images
(patients when known). ``detection_<split>.csv`` lists every image's counts; the images with their
boxes stay in memory as evidence for the report's galleries.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from medlens.config import Config
from medlens.data.prepared import open_config_dataset, split_cases
from medlens.data.splits import read_splits
from medlens.runs import RunFolder, now
from medlens.tasks.base import EvaluateOptions, Evaluation
from medlens.tasks.detection.files import ImageResult
from medlens.tasks.detection.infer import detect_image


def evaluate_detection(run: RunFolder, config: Config, model, options: EvaluateOptions, log) -> Evaluation:
    """Detect and score every image of ``options.split``: metrics with CIs, ``detection_<split>.csv``, evidence."""
    from medlens.tasks.detection.metrics import detection_metrics_with_ci

    dataset = open_config_dataset(config)
    split = options.split
    cases = split_cases(dataset, read_splits(run.splits, dataset), config.dataset.fold)[split]
    results = []
    for case in cases:
        image = dataset.load_image(case)
        boxes, labels = dataset.load_boxes(case, image)
        found = detect_image(model, image, config, where=f"case {case.case_id}")
        results.append(ImageResult(case.case_id, image, np.asarray(boxes, np.float32), np.asarray(labels, np.int64),
                                   found.boxes, found.scores, found.labels))
    groups = [c.patient_id or c.case_id for c in cases]
    n_boot = config.evaluate.n_bootstrap if options.n_bootstrap is None else options.n_bootstrap
    metrics = detection_metrics_with_ci([(r.boxes, r.scores, r.labels) for r in results],
                                         [(r.truth_boxes, r.truth_labels) for r in results],
                                         list(config.dataset.class_names), groups=groups, n_boot=n_boot,
                                         seed=config.train.seed, max_detections=config.detect.max_detections,
                                         froc_iou_threshold=config.detect.froc_iou)
    curves = metrics.pop("curves", {})
    post = run.read_postprocess()
    doc = {"medlens_metrics_version": 1, "run": str(run.root), "split": split, "created": now(),
           "task": config.dataset.task, "n_images": len(results),
           "grouped_by": "patient" if any(c.patient_id for c in cases) else "image",
           "display_threshold": post.get("display_threshold"), "metrics": metrics, "curves": curves}
    table = per_image_csv(results, list(config.dataset.class_names), post.get("display_threshold"))
    return Evaluation(doc, {f"detection_{split}.csv": table}, results, summary_text(run, split, metrics))


def per_image_csv(results: list[ImageResult], names: list[str], threshold: float | None) -> str:
    """One row per image: boxes annotated, boxes detected (all, and at the display threshold), per class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case_id", "truth_boxes", "detections", "detections_shown",
                     *[f"truth_{n}" for n in names], *[f"shown_{n}" for n in names]])
    floor = -1.0 if threshold is None else float(threshold)
    for r in results:
        shown = r.labels[r.scores >= floor]
        writer.writerow([r.case_id, len(r.truth_labels), len(r.labels), len(shown),
                         *[int((r.truth_labels == k).sum()) for k in range(len(names))],
                         *[int((shown == k).sum()) for k in range(len(names))]])
    return buffer.getvalue()


def summary_text(run: RunFolder, split: str, metrics: dict) -> str:
    """The terminal summary: the headline numbers with their intervals."""
    def fmt(entry) -> str:
        if isinstance(entry, dict):
            return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
        return f"{entry:.3f}"

    froc = metrics.get("froc", {})
    lines = [f"{run.root} — {split} split ({metrics.get('n_images')} images, "
             f"{sum(metrics.get('n_truth', {}).values())} boxes)",
             f"  mAP@[.5:.95] {fmt(metrics['map'])}   mAP@0.5 {fmt(metrics['map_50'])}",
             "  AP@0.5 " + "  ".join(f"{n} {fmt(v)}" for n, v in metrics["ap_per_class"]["iou_50"].items())]
    if froc:
        lines.append(f"  FROC mean sensitivity (1/8..8 FP per image) {fmt(froc['cpm'])}")
    return "\n".join(lines)
