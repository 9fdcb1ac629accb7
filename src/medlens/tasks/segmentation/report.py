"""The evaluation part of a segmentation report: metrics with CIs, per-case table, box plots, overlays."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medlens._files import read_json
from medlens.report.document import Figure, Html, Section, Table, count_phrase, num, with_ci
from medlens.report.plots import figure, to_png
from medlens.report.published import decathlon_benchmark
from medlens.tasks.segmentation.evaluate import CaseOverlay, mean_dice, parse_float

#: Per class: (reference, prediction) contour colours.
PAIRS = (("#2ca02c", "#d62728"), ("#1f77b4", "#ff7f0e"), ("#9467bd", "#e377c2"), ("#17becf", "#bcbd22"))
SCORES = (("dice", "Dice"), ("iou", "IoU"), ("hd95_mm", "HD95"), ("msd_mm", "MSD"))


def read_case_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def metrics_table(doc: dict) -> Table:
    """Per class (and the mean over classes) each score with its 95% CI: the numbers of metrics.json."""
    summary, rows = doc["metrics"], []
    groups = [*summary["per_class"].items(), ("mean", summary["mean"])]
    for name, entries in groups:
        for key, label in SCORES:
            e = entries[key]
            rows.append([name, label, num(e["value"]), num(e["ci_low"]), num(e["ci_high"]), str(e.get("n", ""))])
    return Table(["class", "metric", "value", "95% CI low", "95% CI high", "n"], rows, key="metrics",
                 caption=f"distances in {doc.get('distances_in', 'mm')}")


def metrics_section(doc: dict) -> Section:
    boot = doc["metrics"]["bootstrap"]
    section = Section(f"Test metrics ({doc['split']} split)", key="metrics-section")
    section.text(f"{count_phrase(doc)}; 95% CIs from "
                 f"{boot['n_boot']} bootstrap resamples of {boot['resampled']}s"
                 f"{'; mirroring test-time augmentation' if doc.get('tta') else ''}. Both-empty cases are left out "
                 "of a class's mean; a missed or false-positive class counts as Dice 0 and the image diagonal.")
    return section.table(metrics_table(doc))


def per_case_section(rows: list[dict], names: list[str], split: str) -> Section:
    """Every case, worst mean Dice first, with its boxes: Dice and HD95 per class."""
    ranked = sorted(rows, key=lambda r: (mean_dice(r, names) is not None, mean_dice(r, names) or 0.0))
    header = ["case", *[f"{n} {label}" for n in names for label in ("Dice", "HD95", "status")]]
    table = [[r["case_id"], *[c for n in names for c in _cells(r, n)]] for r in ranked]
    section = Section("Per case", key="per-case")
    section.figures(Figure("boxes", boxes_png(rows, names), "Dice and HD95 per class over the cases"))
    return section.table(Table(header, table, key="per-case-table",
                               caption=f"segmentation_{split}.csv, worst mean Dice first"))


def _cells(row: dict, name: str) -> tuple[str, str, str]:
    """Dice, HD95 and status of one class of one per-case row."""
    return (num(parse_float(row.get(f"{name}_dice"))), num(parse_float(row.get(f"{name}_hd95_mm"))),
            row.get(f"{name}_status", ""))


def boxes_png(rows: list[dict], names: list[str]) -> bytes:
    fig, axes = figure(2, size=(max(3.0, 1.2 * len(names) + 1.5), 3.2))
    for ax, key, label in ((axes[0, 0], "dice", "Dice"), (axes[0, 1], "hd95_mm", "HD95")):
        data = [[v for r in rows if (v := parse_float(r.get(f"{n}_{key}"))) is not None] for n in names]
        ax.boxplot([d or [np.nan] for d in data], showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
        ax.set(title=label, ylabel=label)
        ax.grid(alpha=0.3, axis="y")
    return to_png(fig)


def display_slice(array: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, int | None]:
    """The 2D plane to show of ``array (*S)``: itself in 2D; in 3D the axial (last-axis) slice holding the most
    reference foreground. Returns ``(plane (rows, cols), slice index or None)``, rows along the second axis."""
    if array.ndim == 2:
        return array.T, None
    k = int(np.argmax((reference > 0).reshape(-1, reference.shape[-1]).sum(axis=0)))
    return array[..., k].T, k


def overlay_png(image: np.ndarray, reference: np.ndarray, predicted: np.ndarray, values: dict[int, str],
                title: str) -> bytes:
    """The image in grey with the reference (solid) and predicted (dashed) contour of each class.

    Args:
        image: ``(C, *S)``, first channel shown between its 1st and 99th percentile.
        reference, predicted: ``(*S)`` label maps in the dataset's mask values.
        values: mask value -> class name of the foreground classes.
    """
    plane, k = display_slice(image[0].astype(np.float32), reference)
    low, high = np.percentile(plane, [1, 99])
    fig, axes = figure(size=(3.6, 3.6))
    ax = axes[0, 0]
    ax.imshow(plane, cmap="gray", vmin=low, vmax=max(high, low + 1e-6))
    for j, (value, name) in enumerate(values.items()):
        for mask, style, colour, who in ((reference, "solid", PAIRS[j % len(PAIRS)][0], "reference"),
                                         (predicted, "dashed", PAIRS[j % len(PAIRS)][1], "prediction")):
            plane_mask = display_slice((mask == value).astype(float), reference)[0]
            if plane_mask.any():
                ax.contour(plane_mask, levels=[0.5], colors=colour, linestyles=style, linewidths=1.3)
            ax.plot([], [], color=colour, linestyle=style, label=f"{name} {who}")
    ax.legend(fontsize=7, loc="lower right", framealpha=0.7)
    ax.set_title(title + ("" if k is None else f" (axial slice {k})"), fontsize=9)
    ax.axis("off")
    return to_png(fig)


def overlays_section(overlays: list[CaseOverlay], values: dict[int, str]) -> Section:
    """Prediction versus reference on the worst, median and best cases (the masks evaluation predicted)."""
    figures = [Figure(f"overlay_{o.title}", overlay_png(o.image, o.reference, o.predicted, values,
                                                        f"{o.title}: {o.case_id}, Dice {o.dice:.3f}"),
                      f"{o.title} case by mean Dice") for o in overlays]
    section = Section("Prediction versus reference", key="overlays")
    section.text("Solid contours: reference; dashed: prediction.")
    return section.figures(*figures)


def viewer_section(overlays: list[CaseOverlay], values: dict[int, str]) -> Section | None:
    """The worst, median and best 3D cases in the 3D viewer (NiiVue, inlined: report.html stays one file that opens
    offline): the image with the predicted and the reference mask, each with its toggle. ``None`` for 2D cases."""
    from medlens.report import viewer

    cases = [o for o in overlays if o.source is not None and o.source.spatial_dims == 3]
    if not cases:
        return None
    section = Section("Cases in 3D", key="viewer")
    if not viewer.installed():
        return section.text(f"info: {viewer.NOT_INSTALLED} to see these cases in 3D (the contour figures stay).")
    blocks = [viewer.viewer_block(case_volumes(o, values), f"viewer-{o.title}",
                                  f"{o.title}: {o.case_id}, Dice {o.dice:.3f}") for o in cases]
    section.text(f"Scroll or drag the slider to move through slices, right-drag for window / level; the prediction "
                 f"and the reference mask each have a toggle. Shown on at most {viewer.REPORT_MAX_VOXELS:,} voxels "
                 "per case (every n-th voxel past that), grey values in 8 bits.")
    return section.html(Html('<div class="row">' + "".join(blocks) + "</div>" + viewer.viewer_scripts(),
                             "The worst, median and best cases are in report.html's 3D viewer."))


def case_volumes(case: CaseOverlay, values: dict[int, str]) -> dict:
    """The viewer's volumes of one case: its image, the predicted mask (dashed contours' colours) and the
    reference (solid contours' colours)."""
    from medlens.report.viewer import REPORT_MAX_VOXELS, mask_overlay, viewer_volumes

    predicted = mask_overlay(case.predicted, values, key="predicted", title="prediction",
                             colours=[pair[1] for pair in PAIRS])
    reference = mask_overlay(case.reference, values, key="reference", title="reference",
                             colours=[pair[0] for pair in PAIRS])
    return viewer_volumes(case.source, [reference, predicted], max_voxels=REPORT_MAX_VOXELS, quantize=True)


def published_section(doc: dict, card: dict) -> Section | None:
    """Our Dice per class beside nnU-Net's, for the Decathlon Hippocampus."""
    bench = decathlon_benchmark(card)
    if bench is None:
        return None
    rows = []
    for name, entries in doc["metrics"]["per_class"].items():
        theirs = bench["dice"].get(name.lower())
        test = bench["test_dice"].get(name.lower())
        rows.append([name, num(entries["dice"]["value"]), "n/a" if theirs is None else f"{theirs:.4f}",
                     "n/a" if test is None else f"{test:.2f}"])
    section = Section("Beside published figures", key="published")
    section.text(f"Sources: {bench['source']}; {bench['test_source']}. Ours is measured on this run's "
                 f"{doc['split']} split, so the figures are comparable in kind, not case for case.")
    return section.table(Table(["class", "Dice (this run)", "nnU-Net 5-fold CV", "nnU-Net MSD test"], rows,
                               key="benchmark"))


def segmentation_sections(run, doc: dict, card: dict, config, overlays: list[CaseOverlay] | None) -> list[Section]:
    """All evaluation sections; without ``overlays`` (nothing in memory) no contour figures."""
    from medlens.tasks.segmentation.infer import class_labels

    names = list(doc["metrics"]["per_class"])
    rows = read_case_rows(run.root / f"segmentation_{doc['split']}.csv")
    sections = [metrics_section(doc)]
    if (bench := published_section(doc, card)) is not None:
        sections.append(bench)
    if rows:
        sections.append(per_case_section(rows, names, doc["split"]))
    if overlays:
        sections.append(overlays_section(overlays, class_labels(config)))
        if (viewer := viewer_section(overlays, class_labels(config))) is not None:
            sections.append(viewer)
    return sections


def compare_table(runs: list) -> Table:
    """``medlens report A B``: Dice and HD95 per class with CIs (``runs`` as ``[(label, run, config)]``)."""
    from medlens.report.compare import NOT_EVALUATED

    names = list(dict.fromkeys(n for _, _, c in runs for n in c.dataset.class_names[1:]))
    rows = []
    for label, run, config in runs:
        doc = read_json(run.metrics_json, {})
        per_class = doc.get("metrics", {}).get("per_class", {})
        cells = [with_ci(per_class[n][k]) if n in per_class else "" for n in names for k in ("dice", "hd95_mm")]
        if not doc:
            cells = [NOT_EVALUATED, *[""] * (len(cells) - 1)]
        rows.append([label, config.model.name, doc.get("split", ""), str(doc.get("n_cases", "")), *cells])
    header = ["run", "model", "split", "cases", *(f"{n} {m} [95% CI]" for n in names for m in ("Dice", "HD95"))]
    return Table(header, rows, key="compare", caption="headline metrics from each run's metrics.json")
