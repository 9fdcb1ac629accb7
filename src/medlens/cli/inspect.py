"""``medlens inspect DATA``: the data audit, as a JSON card plus a readable summary."""

from __future__ import annotations

import sys
from pathlib import Path

from medlens.cli.train import SERIES_RULE_ARGUMENT

ARGUMENTS = [
    (["data"], {"help": "dataset: class-folder root, CSV manifest, MedMNIST .npz (or name), images/+labels/, "
                        "or a Decathlon folder"}),
    (["--out"], {"type": Path, "help": "where to write the card (default: ./<dataset>.card.json)"}),
    (["--splits"], {"type": Path, "help": "a splits file to check for leakage as well"}),
    (["--image-root"], {"type": Path, "help": "folder a CSV's image paths are relative to (default: the CSV's)"}),
    (["--boxes-from-masks"], {"action": "store_true",
                              "help": "detection from a segmentation dataset: one box per connected component of "
                                      "each mask label"}),
    SERIES_RULE_ARGUMENT,
    (["--allow-outside-root"], {"action": "store_true",
                                "help": "follow CSV / dataset.json paths that leave the dataset's folder (or "
                                        "--image-root): ../.., absolute paths elsewhere, links pointing out "
                                        "(refused by default)"}),
    (["--skip-unreadable"], {"action": "store_true",
                             "help": "audit as `train --skip-unreadable` would: unreadable files are listed as left "
                                     "out (card['skipped']) instead of an error, and the counts leave them out"}),
    (["--strict"], {"action": "store_true", "help": "exit with status 1 when the audit finds errors"}),
]


def default_card_path(data: str) -> Path:
    name = Path(data).name.removesuffix(".npz").removesuffix(".csv") or "dataset"
    return Path.cwd() / f"{name}.card.json"


def run(args) -> int:
    from medlens._files import write_json_atomic
    from medlens.data import open_dataset
    from medlens.data.audit import inspect_dataset
    from medlens.data.splits import read_splits

    dataset = open_dataset(args.data, image_root=args.image_root, strict=False,
                           allow_outside_root=args.allow_outside_root, boxes_from_masks=args.boxes_from_masks,
                           series_rules=args.series_rule)
    splits = read_splits(args.splits, dataset) if args.splits else None
    card = inspect_dataset(dataset, splits=splits, progress=_progress if sys.stderr.isatty() else None,
                           skip_unreadable=args.skip_unreadable)
    out = write_json_atomic(args.out or default_card_path(args.data), card)
    print(format_card(card))
    print(f"card written to {out}")
    errors = [f for f in card["findings"] if f["severity"] == "error"]
    return 1 if args.strict and errors else 0


def _progress(done: int, total: int) -> None:
    if done == total or done % 200 == 0:
        print(f"\rreading cases {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def format_card(card: dict) -> str:
    """A short terminal summary of a dataset card."""
    d = card["dataset"]
    lines = [f"{d['source']}", f"  layout {d['layout']}, task {d['task_label']}, {d['num_cases']} cases "
             f"({d['num_readable']} readable)" + (f", modality {d['modality']}" if d.get("modality") else "")]
    if d["class_names"]:
        lines.append(f"  classes: {', '.join(d['class_names'])}")
    for split, counts in card["counts"]["by_split"].items():
        lines.append(f"  {split:>10}: " + "  ".join(f"{k}={v}" for k, v in counts.items()))
    if "patients_by_split" in card["counts"]:
        lines.append("  patients: " + "  ".join(f"{k}={v}" for k, v in card["counts"]["patients_by_split"].items()))
    lines += _image_lines(card.get("images") or {})
    if "masks" in card:
        lines.append("  mask labels (cases containing each): "
                     + "  ".join(f"{k}:{v}" for k, v in card["masks"]["cases_with_label"].items()))
    lines += _box_lines(card.get("boxes") or {})
    findings = card["findings"]
    lines.append(f"  findings: {len(findings)}" + ("" if findings else " (none)"))
    for f in findings:
        lines.append(f"    [{f['severity']}] {f['code']}: {f['message']}")
    lines += _unreadable_lines(card.get("unreadable") or [], skipped=bool(card.get("skipped")))
    return "\n".join(lines)


def _box_lines(boxes: dict) -> list[str]:
    """Boxes per image, and each class's count and median box size in voxels."""
    if not boxes:
        return []
    n = boxes["boxes_per_image"]
    lines = [f"  boxes: {n['total']} ({n['mean']:.3g} per image, {n['min']}-{n['max']}; "
             f"{n['images_without_boxes']} image(s) without boxes)"]
    for name, c in boxes.get("per_class", {}).items():
        size = " x ".join(f"{v['median']:.3g}" for v in (c.get("size_vox") or {}).values())
        lines.append(f"    {name}: {c['boxes']} boxes on {c['images']} images" + (f", median size {size} voxels"
                                                                                     if size else ""))
    return lines


def _unreadable_lines(unreadable: list[dict], shown: int = 20, skipped: bool = False) -> list[str]:
    """Every unreadable case with its reason (the first ``shown``; the card lists them all)."""
    if not unreadable:
        return []
    lines = [f"  unreadable ({len(unreadable)}{', left out of training' if skipped else ''}):"]
    lines += [f"    {u['case']}: {u['error']}" for u in unreadable[:shown]]
    if len(unreadable) > shown:
        lines.append(f"    ... and {len(unreadable) - shown} more (see the card's 'unreadable' list)")
    return lines


def _image_lines(images: dict) -> list[str]:
    if not images:
        return []
    shape = " x ".join(_range(v) for v in images["shape"].values())
    lines = [f"  size (voxels): {shape}; channels {images['channels']}; dtypes {images['dtypes']}"]
    if "spacing_mm" in images:
        lines.append("  spacing (mm): " + " x ".join(_range(v, "{:.3g}") for v in images["spacing_mm"].values()))
    else:
        lines.append("  spacing: not stored in these files")
    i = images["intensity"]
    p = i["percentiles"]
    lines.append(f"  intensity: min {i['min']:.4g}  p0.5 {p['0.5']:.4g}  median {p['50']:.4g}  p99.5 {p['99.5']:.4g}  "
                 f"max {i['max']:.4g}")
    return lines


def _range(summary: dict, fmt: str = "{:.0f}") -> str:
    lo, med, hi = (fmt.format(summary[k]) for k in ("min", "median", "max"))
    return lo if lo == hi else f"{lo}-{hi} (median {med})"
