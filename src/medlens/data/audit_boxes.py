"""The audit's box checks: each case's boxes on its image, and what the boxes say together.

Per case (:func:`check_boxes`) the boxes are placed on the image grid as annotated and checked; over the
dataset (:func:`box_summary`, :func:`box_findings`) they give the card's ``boxes`` section, which the
planner sizes anchors from (side lengths in voxels of the original image, per class), and these findings:

- ``boxes.outside``: boxes reaching outside the image are clipped to it (warning); blocking when more than
  :data:`MAX_FAR_OUTSIDE_SHARE` of all boxes lie more than half outside (their volume, before clipping).
- ``boxes.degenerate``: inverted or zero-size boxes (after clipping) are dropped (warning).
- ``boxes.duplicate``: two boxes of one class in one image with IoU > :data:`DUPLICATE_IOU` (warning).
- ``boxes.size_mismatch``: the size an annotation declares (VOC ``<size>``, COCO ``width``/``height``)
  differs from the image file (blocking: the boxes were drawn on another image).
- ``boxes.no_geometry``: millimetre boxes on images without spacing / origin / direction (blocking).
- ``boxes.invalid``: boxes that cannot be placed at all (another dimensionality; blocking).
- ``boxes.class_empty``: a declared class without any usable box (warning).
- ``boxes.none``: no image has any box (blocking: nothing to learn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medlens.data.boxes import annotated_boxes, box_iou, box_sizes, clip_boxes, usable_boxes
from medlens.data.dataset import Dataset, Finding, describe_read_failure
from medlens.errors import DatasetError
from medlens.io import Image
from medlens.types import Case

MAX_FAR_OUTSIDE_SHARE = 0.05  # of all boxes, more than half outside the image: refused above this
DUPLICATE_IOU = 0.95
SIZE_PERCENTILES = (5, 25, 50, 75, 95)


@dataclass
class CaseBoxes:
    """One case's boxes as the audit saw them.

    Attributes:
        corners: ``(N, 2D)`` usable boxes (clipped, degenerate dropped) in voxels; labels ``(N,)``.
        spacing_mm: the image's spacing when known (for sizes in mm), else ``None``.
        outside / far_outside / degenerate / duplicates: counts of annotated boxes with each problem.
        size_mismatch: ``(declared, found)`` sizes when the annotation's declared size differs from the image.
        problem: ``(code, message)`` when the boxes could not be placed at all.
    """

    corners: np.ndarray
    labels: np.ndarray
    spacing_mm: tuple[float, ...] | None = None
    annotated: int = 0
    outside: int = 0
    far_outside: int = 0
    degenerate: int = 0
    duplicates: int = 0
    size_mismatch: tuple | None = None
    problem: tuple[str, str] | None = None


def check_boxes(dataset: Dataset, case: Case, image: Image) -> CaseBoxes:
    """Place ``case``'s boxes on ``image`` and count what is wrong with them (never raises for bad boxes)."""
    dims = image.spatial_dims
    empty = CaseBoxes(np.zeros((0, 2 * dims), np.float32), np.zeros((0,), np.int64))
    try:
        corners, labels = annotated_boxes(dataset, case, image)
    except DatasetError as exc:
        no_geometry = case.boxes is not None and case.boxes.unit == "mm" and not image.spacing_known
        empty.problem = ("boxes.no_geometry" if no_geometry else "boxes.invalid", str(exc))
        return empty
    except Exception as exc:  # noqa: BLE001 - an unreadable mask (boxes from masks) is this case's finding
        empty.problem = ("boxes.invalid", describe_read_failure(case.mask or case.image, exc))
        return empty
    usable, kept_labels = usable_boxes(corners, labels, image.spatial_shape)
    record = CaseBoxes(usable, kept_labels, image.spacing_mm if image.spacing_known else None, len(labels))
    record.outside, record.far_outside = _outside_counts(corners, image.spatial_shape)
    record.degenerate = len(labels) - len(kept_labels)
    record.duplicates = _duplicates(usable, kept_labels)
    declared = case.extra.get("declared_size")
    if declared and tuple(declared) != tuple(image.spatial_shape[:len(declared)]):
        record.size_mismatch = (tuple(declared), tuple(image.spatial_shape[:len(declared)]))
    return record


def _outside_counts(corners: np.ndarray, spatial_shape: tuple[int, ...]) -> tuple[int, int]:
    """Boxes reaching outside ``[0, shape)``, and those with more than half their volume outside."""
    if not len(corners):
        return 0, 0
    dims = len(spatial_shape)
    upper = np.asarray(spatial_shape, np.float64)
    outside = ((corners[:, :dims] < 0) | (corners[:, dims:] > upper)).any(axis=1)
    volume = np.clip(box_sizes(corners), 0, None).prod(axis=1)
    inside = np.clip(box_sizes(clip_boxes(corners.astype(np.float64), spatial_shape)), 0, None).prod(axis=1)
    far = outside & (volume > 0) & (inside < 0.5 * volume)
    return int(outside.sum()), int(far.sum())


def _duplicates(corners: np.ndarray, labels: np.ndarray) -> int:
    """Boxes that repeat an earlier box of the same class (IoU > DUPLICATE_IOU)."""
    if len(corners) < 2:
        return 0
    iou = np.triu(box_iou(corners, corners), k=1)
    same = labels[:, None] == labels[None, :]
    return int(((iou > DUPLICATE_IOU) & same).any(axis=0).sum())


def box_summary(dataset: Dataset, records: dict[str, CaseBoxes]) -> dict:
    """The card's ``boxes`` section: boxes per image, per class counts, sizes and aspect ratios.

    Args:
        records: case id -> what :func:`check_boxes` found (readable cases only).
    """
    placed = {cid: r for cid, r in records.items() if r.problem is None}
    per_image = [len(r.labels) for r in placed.values()]
    summary = {
        "boxes_per_image": _spread(per_image) | {"images_without_boxes": sum(n == 0 for n in per_image),
                                                  "total": int(sum(per_image))},
        "per_class": {name: _class_summary(placed.values(), k) for k, name in enumerate(dataset.class_names)},
        "problems": {key: int(sum(getattr(r, key) for r in placed.values()))
                     for key in ("outside", "far_outside", "degenerate", "duplicates")},
    }
    summary["problems"]["annotated"] = int(sum(r.annotated for r in placed.values()))
    return summary


def _spread(values) -> dict:
    if not len(values):
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(np.mean(values)), "min": int(np.min(values)), "max": int(np.max(values))}


def _class_summary(records, k: int) -> dict:
    """Counts, side lengths (voxels; mm when every image's spacing is known) and aspect ratios of class ``k``."""
    picked = [(r.corners[r.labels == k], r.spacing_mm) for r in records]
    sizes = np.concatenate([box_sizes(c) for c, _ in picked]) if picked else np.zeros((0, 0))
    out = {"boxes": int(len(sizes)), "images": int(sum(len(c) > 0 for c, _ in picked))}
    if not len(sizes):
        return out
    dims = sizes.shape[1]
    out["size_vox"] = {f"axis{a}": _percentiles(sizes[:, a]) for a in range(dims)}
    if all(s is not None for c, s in picked if len(c)):
        mm = np.concatenate([box_sizes(c) * np.asarray(s) for c, s in picked if len(c)])
        out["size_mm"] = {f"axis{a}": _percentiles(mm[:, a]) for a in range(dims)}
    out["aspect_ratio"] = {f"axis{a}/axis{b}": _ratio_spread(sizes[:, a] / sizes[:, b])
                           for a in range(dims) for b in range(a + 1, dims)}
    return out


def _percentiles(values: np.ndarray) -> dict:
    found = np.percentile(values, SIZE_PERCENTILES)
    return {"min": float(values.min()), **{f"p{q}": float(v) for q, v in zip(SIZE_PERCENTILES, found)},
            "median": float(np.median(values)), "max": float(values.max())}


def _ratio_spread(ratios: np.ndarray) -> dict:
    p5, median, p95 = np.percentile(ratios, (5, 50, 95))
    return {"median": float(median), "p5": float(p5), "p95": float(p95)}


def box_findings(dataset: Dataset, records: dict[str, CaseBoxes]) -> list[Finding]:
    """The findings listed in the module docstring, each naming its cases (annotation files where known)."""
    findings = _placement_findings(dataset, records)
    placed = {cid: r for cid, r in records.items() if r.problem is None}
    findings += _outside_findings(placed)
    degenerate = [cid for cid, r in placed.items() if r.degenerate]
    if degenerate:
        n = sum(placed[c].degenerate for c in degenerate)
        findings.append(Finding("warning", "boxes.degenerate", f"{n} box(es) in {len(degenerate)} image(s) are "
                                f"inverted or have zero size once on the image (e.g. {', '.join(degenerate[:3])}); "
                                "they are dropped: fix min/max in the annotations if they are real objects",
                                degenerate))
    duplicate = [cid for cid, r in placed.items() if r.duplicates]
    if duplicate:
        n = sum(placed[c].duplicates for c in duplicate)
        findings.append(Finding("warning", "boxes.duplicate", f"{n} box(es) in {len(duplicate)} image(s) repeat "
                                f"another box of the same class (IoU > {DUPLICATE_IOU}; e.g. "
                                f"{', '.join(duplicate[:3])}); delete the copies: they count twice in training and "
                                "as false positives in evaluation", duplicate))
    findings += _empty_class_findings(dataset, placed)
    if records and placed and not any(len(r.labels) for r in placed.values()):
        findings.append(Finding.blocking("boxes.none", f"none of the {len(placed)} image(s) has a usable box, so "
                                         "there is nothing to learn; check that the annotations belong to these "
                                         "images and that their labels are declared", sorted(placed)))
    return findings


def _empty_class_findings(dataset: Dataset, placed: dict[str, CaseBoxes]) -> list[Finding]:
    """``boxes.class_empty`` (warning) for declared classes no usable box carries: a model cannot learn them."""
    present = {int(label) for r in placed.values() for label in r.labels}
    empty = [name for k, name in enumerate(dataset.class_names) if k not in present]
    if not placed or len(empty) == len(dataset.class_names):
        return []  # no box at all is boxes.none
    return [Finding("warning", "boxes.class_empty", f"class(es) {', '.join(empty)} are declared but no image has a "
                    "usable box of them; add examples, or remove them from the declared classes")] if empty else []


def _placement_findings(dataset: Dataset, records: dict[str, CaseBoxes]) -> list[Finding]:
    """``boxes.no_geometry`` / ``boxes.invalid`` (one finding per code) and ``boxes.size_mismatch``."""
    findings = []
    for code in ("boxes.no_geometry", "boxes.invalid"):
        cases = [cid for cid, r in records.items() if r.problem and r.problem[0] == code]
        if cases:
            first = records[cases[0]].problem[1]
            findings.append(Finding.blocking(code, f"{len(cases)} case(s) have boxes that cannot be placed on their "
                                             f"image; first: {first}", cases))
    annotation = {c.case_id: c.extra.get("annotation") for c in dataset.cases}
    mismatched = [cid for cid, r in records.items() if r.size_mismatch]
    if mismatched:
        shown = "; ".join(f"{annotation.get(c) or c} declares {records[c].size_mismatch[0]}, the image is "
                          f"{records[c].size_mismatch[1]}" for c in mismatched[:3])
        findings.append(Finding.blocking("boxes.size_mismatch", f"{len(mismatched)} annotation(s) declare another "
                                         f"image size (width, height) than their image file ({shown}); the boxes "
                                         "were drawn on another version of the image: annotate this one, or put "
                                         "back the image they were drawn on", mismatched))
    return findings


def _outside_findings(placed: dict[str, CaseBoxes]) -> list[Finding]:
    outside = [cid for cid, r in placed.items() if r.outside]
    if not outside:
        return []
    total = sum(r.annotated for r in placed.values())
    far = sum(r.far_outside for r in placed.values())
    n = sum(placed[c].outside for c in outside)
    rule = (f"more than half outside: {far} of {total} box(es); medlens refuses the dataset when that is above "
            f"{MAX_FAR_OUTSIDE_SHARE:.0%} of all boxes")
    if total and far / total > MAX_FAR_OUTSIDE_SHARE:
        far_cases = [cid for cid, r in placed.items() if r.far_outside]
        return [Finding.blocking("boxes.outside", f"{n} box(es) in {len(outside)} image(s) reach outside their image, "
                                 f"{rule} (e.g. {', '.join(far_cases[:3])}); the boxes do not belong to these images "
                                 "or use another coordinate order / origin: check the annotation format", far_cases)]
    return [Finding("warning", "boxes.outside", f"{n} box(es) in {len(outside)} image(s) reach outside their image "
                    f"and are clipped to it (e.g. {', '.join(outside[:3])}); {rule}", outside)]
