"""The evaluation part of a detection report: mAP, per-class AP, FROC and sizes with CIs, PR / FROC curves,
and galleries of the worst misses and the most confident false positives.

Every section reads its own part of metrics.json and is left out when that part is missing, so a
partial document (an older run, a metric that could not be computed) still gives a report. A metric
is ``{"value", "ci_low", "ci_high"}`` as classification and segmentation write it (a ``"ci": [low,
high]`` pair or a bare number are read too).

Galleries match boxes of the same class: a reference box is *missed* when no detection overlaps it
with IoU >= 0.5 (whatever its score), and misses are shown by the best score of any detection that
overlaps them at all, lowest first (the ones the detector never looked at). A detection is a *false
positive* when it overlaps no reference box with IoU >= 0.1 (the FROC hit rule), highest score first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from medlens._files import read_json
from medlens.report.document import Figure, Section, Table, num
from medlens.report.plots import figure, to_png
from medlens.tasks.detection.files import ImageResult, box_rows, boxes_png, class_colour

FOUND_IOU = 0.5  # a reference box counts as found with a same-class detection at this IoU
MATCH_IOU = 0.1  # a detection counts as a hit on a reference box at this IoU (FROC, LUNA16)
GALLERY = 8  # pictures per gallery


def interval(entry) -> tuple[float, float, float]:
    """``(value, low, high)`` of a metric entry; NaN for what it lacks (``None``: all NaN)."""
    if isinstance(entry, dict):
        low, high = entry.get("ci", (entry.get("ci_low"), entry.get("ci_high")))
        return tuple(math.nan if v is None else float(v) for v in (entry.get("value"), low, high))
    return (math.nan if entry is None else float(entry), math.nan, math.nan)


def with_ci(entry) -> str:
    """``0.8123 [0.7801, 0.8432]``, or the value alone when there is no interval."""
    value, low, high = interval(entry)
    return num(value) if math.isnan(low) and math.isnan(high) else f"{num(value)} [{num(low)}, {num(high)}]"


def rate_text(rate: float) -> str:
    """``1/8``, ``1/2``, ``1``, ``4``: a false-positive rate as people write it."""
    return str(Fraction(rate).limit_denominator(64))


def class_names(doc: dict, config=None) -> list[str]:
    """The names the labels index, in label order: as metrics.json lists them, else the config's."""
    metrics = doc.get("metrics", {})
    for names in (metrics.get("n_truth"), metrics.get("ap_per_class", {}).get("iou_50")):
        if isinstance(names, dict) and names:
            return list(names)
    return list(getattr(getattr(config, "dataset", None), "class_names", ()) or ())


HEADLINE = (("map", "mAP@[.5:.95]"), ("map_50", "mAP@0.5"), ("map_75", "mAP@0.75"))


def headline_rows(metrics: dict) -> list[list[str]]:
    """One row per headline metric present: name, value, 95% CI low, 95% CI high."""
    found = [(label, metrics[key]) for key, label in HEADLINE if key in metrics]
    recall = metrics.get("recall_at_k")
    if isinstance(recall, dict) and "mean" in recall:
        found.append((f"recall@{recall.get('k', 'K')} (IoU {recall.get('iou', 0.5)}, mean over classes)",
                      recall["mean"]))
    froc = metrics.get("froc")
    if isinstance(froc, dict) and "cpm" in froc:
        rates = froc.get("fp_rates") or froc.get("rates") or []
        span = f"{rate_text(min(rates))} to {rate_text(max(rates))} " if rates else ""
        found.append((f"FROC CPM (mean sensitivity at {span}FP per image)", froc["cpm"]))
    return [[label, *(num(v) for v in interval(entry))] for label, entry in found]


def metrics_section(doc: dict) -> Section | None:
    """mAP@[.5:.95], mAP@0.5, mAP@0.75, recall at K and the FROC score, each with its 95% CI."""
    metrics = doc.get("metrics") or {}
    rows = headline_rows(metrics)
    if not rows:
        return None
    section = Section(f"Test metrics ({doc.get('split', 'test')} split)", key="metrics-section")
    section.text(_counts_phrase(doc) + _bootstrap_phrase(metrics.get("bootstrap")))
    for name in metrics.get("classes_without_truth") or []:
        section.text(f"note: no reference box of class {name} in this split: its AP is undefined and left out of "
                     "the means.")
    return section.table(Table(["metric", "value", "95% CI low", "95% CI high"], rows, key="metrics",
                               caption="headline metrics"))


def _counts_phrase(doc: dict) -> str:
    """``"72 images (40 patients), 4888 reference boxes, 5012 detections"``, as far as the document says."""
    metrics = doc["metrics"]
    images = doc.get("n_cases", metrics.get("n_images"))
    parts = [] if images is None else [f"{images} images"]
    if parts and doc.get("grouped_by") == "patient" and metrics.get("n_groups") is not None:
        parts[0] += f" ({metrics['n_groups']} patients)"
    for key, what in (("n_truth", "reference boxes"), ("n_detections", "detections")):
        if isinstance(metrics.get(key), dict):
            parts.append(f"{sum(metrics[key].values())} {what}")
    return ", ".join(parts) or "metrics from metrics.json"


def _bootstrap_phrase(boot) -> str:
    if not isinstance(boot, dict) or not boot.get("n_boot"):
        return "; no bootstrap intervals."
    return f"; 95% CIs from {boot['n_boot']} bootstrap resamples of {boot.get('resampled', 'image')}s."


def per_class_section(doc: dict) -> Section | None:
    """AP@0.5, AP@[.5:.95] and recall at K per class, with the number of reference boxes and detections."""
    metrics = doc.get("metrics") or {}
    ap = metrics.get("ap_per_class")
    if not isinstance(ap, dict) or not ap:
        return None
    levels = [(k, label) for k, label in (("iou_50", "AP@0.5"), ("iou_50_95", "AP@[.5:.95]")) if k in ap]
    recall = (metrics.get("recall_at_k") or {}).get("per_class") or {}
    names = list(dict.fromkeys(n for k, _ in levels for n in ap[k]))
    header = ["class", *(f"{label} [95% CI]" for _, label in levels)]
    header += [f"recall@{metrics['recall_at_k'].get('k', 'K')} [95% CI]"] if recall else []
    header += ["reference boxes", "detections"]
    rows = []
    for name in names:
        cells = [with_ci(ap[k].get(name)) for k, _ in levels] + ([with_ci(recall.get(name))] if recall else [])
        rows.append([name, *cells, str((metrics.get("n_truth") or {}).get(name, "")),
                     str((metrics.get("n_detections") or {}).get(name, ""))])
    section = Section("Per class", key="per-class-section")
    return section.table(Table(header, rows, key="per-class", caption="average precision per class, value [95% CI]"))


def froc_section(doc: dict) -> Section | None:
    """Sensitivity at each false-positive rate per image (1/8 ... 8), with CIs, and the FROC curve."""
    froc = (doc.get("metrics") or {}).get("froc")
    if not isinstance(froc, dict) or not froc.get("sensitivity"):
        return None
    rates = froc.get("fp_rates") or froc.get("rates") or []
    rows = [[rate_text(r), *(num(v) for v in interval(s))] for r, s in zip(rates, froc["sensitivity"])]
    rows.append(["mean (CPM)", *(num(v) for v in interval(froc.get("cpm")))])
    section = Section("FROC", key="froc-section")
    section.text(f"Class-agnostic: a reference box is found by a detection with IoU ≥ "
                 f"{froc.get('iou_threshold', MATCH_IOU)}; {froc.get('n_lesions', '?')} reference boxes in "
                 f"{froc.get('n_images', '?')} images. The CPM is the mean sensitivity over the rates (LUNA16).")
    section.table(Table(["FP per image", "sensitivity", "95% CI low", "95% CI high"], rows, key="froc"))
    curve = curves(doc).get("froc")
    if isinstance(curve, dict) and curve.get("fp_per_image"):
        section.figures(Figure("froc", froc_png(curve, rates, froc["sensitivity"]),
                               "FROC: sensitivity against false positives per image (log scale)"))
    return section


def size_section(doc: dict) -> Section | None:
    """AP@0.5 per size bin (terciles of the reference boxes' area or volume), per class and averaged."""
    sizes = (doc.get("metrics") or {}).get("by_size")
    if not isinstance(sizes, dict) or not isinstance(sizes.get("bins"), dict) or not sizes["bins"]:
        return None
    bins, edges = sizes["bins"], list(sizes.get("edges") or [])
    unit = {"area_vox": "area in pixels", "volume_vox": "volume in voxels"}.get(sizes.get("unit"), sizes.get("unit"))
    names = list(dict.fromkeys(n for b in bins.values() for n in (b.get("ap_per_class") or {})))
    ranges = _size_ranges(edges, len(bins))
    rows = [[name, ranges[i], str(b.get("n_truth", "")), num(b.get("map_50")),
             *(num((b.get("ap_per_class") or {}).get(n)) for n in names)] for i, (name, b) in enumerate(bins.items())]
    section = Section("Results by object size", key="size-section")
    section.text(f"Reference boxes split at the terciles of their {unit or 'size'}; a detection counts for the bin "
                 "of the box it matches (unmatched ones for the bin of their own size). No intervals.")
    return section.table(Table(["size", f"range ({unit or 'size'})", "reference boxes", "mAP@0.5",
                                *(f"{n} AP@0.5" for n in names)], rows, key="by-size"))


def _size_ranges(edges: list, n: int) -> list[str]:
    if len(edges) != 2 or n != 3:
        return [""] * n
    low, high = (f"{e:.4g}" for e in edges)
    return [f"< {low}", f"{low} to {high}", f"≥ {high}"]


def curves(doc: dict) -> dict:
    """The curves of a metrics document: ``doc["curves"]`` or ``doc["metrics"]["curves"]``."""
    found = doc.get("curves") or (doc.get("metrics") or {}).get("curves")
    return found if isinstance(found, dict) else {}


def pr_section(doc: dict, names: list[str]) -> Section | None:
    """Precision against recall at IoU 0.5, one curve per class."""
    pr = curves(doc).get("pr")
    if not isinstance(pr, dict) or not any(isinstance(c, dict) and c.get("recall") for c in pr.values()):
        return None
    ap = ((doc.get("metrics") or {}).get("ap_per_class") or {}).get("iou_50") or {}
    section = Section("Precision-recall", key="pr-section")
    return section.figures(Figure("pr_curves", pr_png(pr, ap, names), "precision-recall per class at IoU 0.5"))


def pr_png(pr: dict, ap: dict, names: list[str]) -> bytes:
    fig, axes = figure(size=(4.6, 3.6))
    ax = axes[0, 0]
    for name, curve in pr.items():
        if isinstance(curve, dict) and curve.get("recall"):
            precision = curve.get("precision_interpolated") or curve["precision"]
            label = f"{name} (AP {num(interval(ap.get(name))[0])})" if name in ap else name
            ax.step(curve["recall"], precision, where="post", color=class_colour(name, names), label=label)
    ax.set(xlim=(0, 1.01), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title="precision-recall, IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return to_png(fig)


def froc_png(curve: dict, rates: list, sensitivity: list) -> bytes:
    """The FROC curve on a log2 axis from 1/8 to 8 FP per image, with the read-off points and their CIs."""
    fig, axes = figure(size=(4.6, 3.6))
    ax = axes[0, 0]
    fp, sens = np.asarray(curve["fp_per_image"], float), np.asarray(curve["sensitivity"], float)
    keep = fp > 0
    ax.step(fp[keep], sens[keep], where="post", color="C0", label="FROC")
    points = np.array([interval(s) for s in sensitivity]) if sensitivity else np.zeros((0, 3))
    if len(points) and len(rates) == len(points):
        below = np.nan_to_num(points[:, 0] - points[:, 1])
        above = np.nan_to_num(points[:, 2] - points[:, 0])
        ax.errorbar(rates, points[:, 0], yerr=[below, above], fmt="o", color="C3", capsize=3,
                    label="sensitivity [95% CI]")
    ax.set_xscale("log", base=2)
    ticks = rates or [1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8]
    ax.set_xticks(ticks, [rate_text(t) for t in ticks])
    ax.set(xlim=(min(ticks) / 1.3, max(ticks) * 1.3), ylim=(0, 1.02), xlabel="false positives per image",
           ylabel="sensitivity", title="FROC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return to_png(fig)


@dataclass(frozen=True)
class GalleryItem:
    """One box to show: ``box (2D,)`` of class ``label`` in ``result``; ``score`` is the detection's own score (a
    false positive) or the best score of a detection overlapping it (a miss); ``overlap`` the best IoU found."""

    result: ImageResult
    box: np.ndarray
    label: int
    score: float
    overlap: float


def same_class_iou(boxes: np.ndarray, labels: np.ndarray, box: np.ndarray, label) -> tuple[np.ndarray, np.ndarray]:
    """``(index, IoU)`` of the boxes of class ``label`` with ``box``."""
    from medlens.tasks.detection.matching import iou

    index = np.flatnonzero(np.asarray(labels) == label)
    if not len(index):
        return index, np.zeros(0)
    return index, iou(np.asarray(box, float)[None], np.asarray(boxes, float)[index])[0]


def worst_misses(results: list[ImageResult], limit: int = GALLERY) -> list[GalleryItem]:
    """Reference boxes no same-class detection found at IoU >= 0.5, by the best score overlapping them, lowest first."""
    items = []
    for result in results:
        scores = np.asarray(result.scores, float)
        for box, label in zip(result.truth_boxes, result.truth_labels):
            index, overlap = same_class_iou(result.boxes, result.labels, box, label)
            if (overlap >= FOUND_IOU).any():
                continue
            touching = scores[index[overlap > 0]]
            items.append(GalleryItem(result, np.asarray(box, float), int(label),
                                     float(touching.max()) if len(touching) else 0.0,
                                     float(overlap.max()) if len(overlap) else 0.0))
    return sorted(items, key=lambda item: item.score)[:limit]


def confident_false_positives(results: list[ImageResult], limit: int = GALLERY) -> list[GalleryItem]:
    """Detections overlapping no same-class reference box at IoU >= 0.1, highest score first."""
    items = []
    for result in results:
        for box, score, label in zip(result.boxes, result.scores, result.labels):
            _, overlap = same_class_iou(result.truth_boxes, result.truth_labels, box, label)
            if not (overlap >= MATCH_IOU).any():
                items.append(GalleryItem(result, np.asarray(box, float), int(label), float(score),
                                         float(overlap.max()) if len(overlap) else 0.0))
    return sorted(items, key=lambda item: -item.score)[:limit]


def gallery_figure(item: GalleryItem, names: list[str], name: str, caption: str, *, miss: bool) -> Figure:
    """A crop around ``item.box``: the reference boxes dashed, detections solid (for a miss, those touching it)."""
    r = item.result
    truth = box_rows(r.truth_boxes, np.ones(len(r.truth_boxes)), r.truth_labels, names, None)
    shown = np.ones(len(r.boxes), dtype=bool)
    if miss:
        from medlens.tasks.detection.matching import iou

        shown = iou(np.asarray(r.boxes, float), item.box[None])[:, 0] > 0 if len(r.boxes) else shown
    else:
        shown = np.all(np.isclose(np.asarray(r.boxes, float), item.box), axis=1) if len(r.boxes) else shown
    rows = box_rows(np.asarray(r.boxes)[shown], np.asarray(r.scores)[shown], np.asarray(r.labels)[shown], names,
                    None)[:3]
    png = boxes_png(r.image, rows, names, truth=truth, focus=item.box.tolist(), title=r.case_id)
    return Figure(name, png, caption, small=True)


def galleries_section(results: list[ImageResult], names: list[str]) -> Section | None:
    """The worst misses and the most confident false positives, a crop around each."""
    misses, false = worst_misses(results), confident_false_positives(results)
    if not misses and not false:
        return None
    section = Section("Worst misses and confident false positives", key="galleries")
    section.text(f"Dashed: reference boxes; solid: detections with their score. A miss is a reference box no "
                 f"detection of its class overlaps with IoU ≥ {FOUND_IOU}, shown by the best score of any detection "
                 f"touching it, lowest first; a false positive overlaps no reference box of its class with IoU ≥ "
                 f"{MATCH_IOU}, highest score first.")
    label = lambda item: names[item.label] if 0 <= item.label < len(names) else str(item.label)  # noqa: E731
    section.text(f"Worst misses: {len(misses)} shown." if misses else "Worst misses: every reference box was found.")
    section.figures(*(gallery_figure(m, names, f"miss_{i}", f"{m.result.case_id}: {label(m)} missed; best "
                                     f"overlapping score {m.score:.2f}", miss=True) for i, m in enumerate(misses)))
    section.text(f"Most confident false positives: {len(false)} shown." if false
                 else "Most confident false positives: none.")
    section.figures(*(gallery_figure(f, names, f"false_positive_{i}", f"{f.result.case_id}: {label(f)} "
                                     f"{f.score:.2f}, IoU {f.overlap:.2f} with its class", miss=False)
                      for i, f in enumerate(false)))
    return section


def detection_sections(run, doc: dict, card: dict, config, evidence: list[ImageResult] | None) -> list[Section]:
    """All evaluation sections present in ``doc``; galleries only with ``evidence`` (the evaluated images)."""
    names = class_names(doc, config)
    sections = [metrics_section(doc), per_class_section(doc), froc_section(doc), size_section(doc),
                pr_section(doc, names)]
    if evidence:
        sections.append(galleries_section(list(evidence), names))
    found = [s for s in sections if s is not None]
    return found or [Section("Evaluation", key="evaluation").text(
        "warning: metrics.json holds no detection metrics; run `medlens evaluate RUN` again.")]


def compare_table(runs: list) -> Table:
    """``medlens report A B``: mAP, FROC CPM and AP@0.5 per class with CIs (``runs`` as ``[(label, run, config)]``)."""
    from medlens.report.compare import NOT_EVALUATED

    docs = [read_json(run.metrics_json, {}) for _, run, _ in runs]
    names = list(dict.fromkeys(n for d in docs for n in class_names(d)))
    rows = []
    for (label, _, config), doc in zip(runs, docs):
        metrics = doc.get("metrics", {})
        ap = (metrics.get("ap_per_class") or {}).get("iou_50") or {}
        cells = [with_ci(metrics["map"]) if "map" in metrics else "",
                 with_ci(metrics["map_50"]) if "map_50" in metrics else "",
                 with_ci((metrics.get("froc") or {})["cpm"]) if "cpm" in (metrics.get("froc") or {}) else "",
                 *(with_ci(ap[n]) if n in ap else "" for n in names)]
        if not doc:
            cells = [NOT_EVALUATED, *[""] * (len(cells) - 1)]
        rows.append([label, config.model.name, doc.get("split", ""),
                     str(doc.get("n_cases", metrics.get("n_images", ""))), *cells])
    header = ["run", "model", "split", "images", "mAP@[.5:.95] [95% CI]", "mAP@0.5 [95% CI]", "FROC CPM [95% CI]",
              *(f"{n} AP@0.5 [95% CI]" for n in names)]
    return Table(header, rows, key="compare", caption="headline metrics from each run's metrics.json")
