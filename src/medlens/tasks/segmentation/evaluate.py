"""Segmentation evaluation: whole images in, masks on the input's grid, scored in millimetres.

Every case of the split is segmented on its own grid (the same path as prediction) and scored
against its original mask: per case and class Dice, IoU, HD95, mean surface distance and size
difference, summarised with bootstrap 95% CIs (the empty-mask rules are in
:mod:`medlens.tasks.segmentation.metrics`). The predicted masks of the worst, median and best cases
are kept as evidence for the report's overlays, so the report never segments anything again.
"""

from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.config import Config
from medlens.data.prepared import open_config_dataset, split_cases
from medlens.data.splits import read_splits
from medlens.io import Image, write_image
from medlens.runs import RunFolder, now
from medlens.tasks.base import EvaluateOptions, Evaluation
from medlens.tasks.segmentation.infer import class_labels, segment_image


@dataclass
class CaseOverlay:
    """One case to draw: ``image (C, *S)``, ``reference`` and ``predicted`` label maps ``(*S)`` in mask values;
    ``source`` the image with its geometry (the report's 3D viewer places the volumes with it)."""

    title: str
    case_id: str
    dice: float
    image: np.ndarray
    reference: np.ndarray
    predicted: np.ndarray
    source: Image | None = None


def evaluate_segmentation(run: RunFolder, config: Config, model, options: EvaluateOptions, log) -> Evaluation:
    """Segment and score every case of ``options.split``: metrics, ``segmentation_<split>.csv``, overlays."""
    from medlens.tasks.segmentation.metrics import case_metrics, format_segmentation_table, summarize_segmentation

    dataset = open_config_dataset(config)
    split = options.split
    cases = split_cases(dataset, read_splits(run.splits, dataset), config.dataset.fold)[split]
    mirror = config.evaluate.tta if options.tta is None else options.tta
    post, labels = run.read_postprocess(), class_labels(config)
    rows, spacing_known = [], True
    with tempfile.TemporaryDirectory(prefix="medlens-masks-") as kept:
        for i, case in enumerate(cases):
            image = dataset.load_image(case)
            spacing_known &= image.spacing_known
            result = segment_image(model, image, config, post, mirror=mirror, where=f"case {case.case_id}")
            reference = dataset.load_mask(case)
            np.save(Path(kept) / f"{i}.npy", result.labels)
            if options.save_masks:
                write_image(result.as_image(), run.root / f"masks_{split}" / f"{_safe(case.case_id)}.nii.gz")
            rows.append({"case_id": case.case_id, "patient_id": case.patient_id,
                         "metrics": case_metrics(result.labels, np.rint(reference.array[0]).astype(np.int64),
                                                 labels, image.spacing_mm)})
        table = per_case_csv(rows, list(labels.values()))
        overlays = _overlays(dataset, cases, table, list(labels.values()), Path(kept))
    groups = [r["patient_id"] or r["case_id"] for r in rows]
    n_boot = config.evaluate.n_bootstrap if options.n_bootstrap is None else options.n_bootstrap
    summary = summarize_segmentation(rows, list(labels.values()), n_boot=n_boot, seed=config.train.seed,
                                     groups=groups)
    doc = {"medlens_metrics_version": 1, "run": str(run.root), "split": split, "created": now(),
           "task": config.dataset.task, "tta": mirror, "postprocess": post.get("keep_largest", {}),
           "n_cases": len(rows), "grouped_by": "patient" if any(c.patient_id for c in cases) else "case",
           "distances_in": "mm" if spacing_known else "pixels (the images carry no spacing)", "metrics": summary}
    lines = [format_segmentation_table(summary, title=f"{run.root} — {split} split ({len(rows)} cases)")]
    if not spacing_known:
        lines.append("note: these images carry no pixel spacing, so HD95 / MSD are in pixels and sizes in pixels, "
                     "not mm")
    return Evaluation(doc, {f"segmentation_{split}.csv": table}, overlays, "\n".join(lines))


def _overlays(dataset, cases, table: str, names: list[str], kept: Path) -> list[CaseOverlay]:
    """The worst, median and best cases by mean Dice, with the masks evaluation predicted for them."""
    rows = list(csv.DictReader(io.StringIO(table)))
    index = {c.case_id: i for i, c in enumerate(cases)}
    overlays = []
    for title, row in chosen_cases(rows, names):
        i = index[row["case_id"]]
        reference = np.rint(dataset.load_mask(cases[i]).array[0]).astype(np.int64)
        image = dataset.load_image(cases[i])
        overlays.append(CaseOverlay(title, row["case_id"], mean_dice(row, names), image.array, reference,
                                    np.load(kept / f"{i}.npy"), image))
    return overlays


def parse_float(text: str | None) -> float | None:
    """A number from a CSV cell; ``None`` for an empty one."""
    return float(text) if text not in (None, "") else None


def mean_dice(row: dict, names: list[str]) -> float | None:
    """The case's Dice averaged over the classes defined on it (both-empty classes left out)."""
    values = [v for n in names if (v := parse_float(row.get(f"{n}_dice"))) is not None]
    return float(np.mean(values)) if values else None


def chosen_cases(rows: list[dict], names: list[str]) -> list[tuple[str, dict]]:
    """``[("worst", row), ("median", row), ("best", row)]`` by mean Dice (fewer when there are fewer cases)."""
    scored = sorted((r for r in rows if mean_dice(r, names) is not None), key=lambda r: mean_dice(r, names))
    if not scored:
        return []
    picks = {"worst": 0, "median": (len(scored) - 1) // 2, "best": len(scored) - 1}
    seen, out = set(), []
    for title, index in picks.items():
        if index not in seen:
            seen.add(index)
            out.append((title, scored[index]))
    return out


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
