"""Detection with the default plan on real data, beside the published figures.

    python benchmarks/detection.py [--data-dir DIR] [--only bccd hippocampus] [--time-budget 25m]
                                   [--runs-dir DIR] [--reuse]

1. BCCD (``detection2d/bccd``, Pascal VOC with the official train / val / test lists, 72 test images):
   ``medlens train DATA --time-budget 25m`` from scratch in a fresh process, then ``medlens evaluate``
   on the official test images. Prints mAP@0.5, per-class AP@0.5, mAP@[.5:.95] and the FROC with 95%
   CIs. Targets: mAP@0.5 >= 0.75 and WBC AP >= 0.90. Published GPU detectors starting from
   COCO-pretrained weights report about 0.86-0.95 mAP@0.5 (../shared/REFERENCES.md; their splits
   differ from the official lists: a ceiling, not a like-for-like row).
2. Hippocampus (``seg3d/Task04_Hippocampus``) with ``--boxes-from-masks`` (one box per connected
   component of each structure): held-out 20% test split, 20 CPU minutes; mAP@0.5 and FROC printed
   (no published figure for boxes derived from these masks; LUNA16's MONAI RetinaNet FROC is
   printed for orientation only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or ROOT / ".." / "shared" / "datasets")

DATASETS = {
    # name: (path under the data folder, extra train options, default budget, targets, published row)
    "bccd": ("detection2d/bccd", [], "25m", {"map_50": 0.75, "WBC": 0.90},
             "GPU YOLOv8-family detectors from COCO-pretrained weights: mAP@0.5 0.86-0.95 (e.g. NBCDC-YOLOv8 "
             "0.947; other splits: a ceiling, REFERENCES.md)"),
    "hippocampus": ("seg3d/Task04_Hippocampus", ["--boxes-from-masks"], "20m", {},
                    "no published detection figure for these masks; LUNA16 (CT nodules) MONAI RetinaNet FROC "
                    "0.835 at 1/8 to 0.988 at 8 FP per scan, for orientation only"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--time-budget", help="training budget per dataset (default: 25m BCCD, 20m Hippocampus)")
    parser.add_argument("--only", nargs="*", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "benchmarks" / "runs")
    parser.add_argument("--reuse", action="store_true", help="evaluate existing runs instead of training")
    args = parser.parse_args(argv)
    for name in args.only:
        relative, options, budget, targets, published = DATASETS[name]
        data = args.data_dir / relative
        if not data.exists():
            print(f"{name}: {data} not found; set --data-dir or MEDLENS_DATA_DIR (see ../shared/datasets/MANIFEST.md)")
            continue
        run = args.runs_dir / f"det-{name}"
        seconds = None if args.reuse else train(data, run, args.time_budget or budget, options)
        print_result(name, run, evaluate(run), targets, published, seconds)
    return 0


def train(data: Path, run: Path, budget: str, options: list[str]) -> float:
    if run.exists():
        raise SystemExit(f"{run} exists; remove it, or pass --reuse to evaluate it")
    started = time.perf_counter()
    command = [sys.executable, "-m", "medlens.cli", "train", str(data), *options, "--time-budget", budget,
               "--out", str(run), "--no-progress"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def evaluate(run: Path) -> dict:
    from medlens.engine.evaluate import evaluate_run

    return evaluate_run(run, split="test")


def ci(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def print_result(name: str, run: Path, doc: dict, targets: dict, published: str, seconds: float | None) -> None:
    m = doc["metrics"]
    info = json.loads((run / "run.json").read_text())
    verdict = lambda value, target: "" if target is None else (  # noqa: E731
        f" (target >= {target}: {'PASS' if value >= target else 'FAIL'})")
    print(f"\n| {name} | ours, CPU, from scratch, test split ({doc['n_images']} images) | published |")
    print("|---|---|---|")
    print(f"| mAP@0.5 | {ci(m['map_50'])}{verdict(m['map_50']['value'], targets.get('map_50'))} | {published} |")
    print(f"| mAP@[.5:.95] | {ci(m['map'])} | |")
    for cls, entry in m["ap_per_class"]["iou_50"].items():
        print(f"| AP@0.5 {cls} | {ci(entry)}{verdict(entry['value'], targets.get(cls))} | |")
    froc = m["froc"]
    rates = "  ".join(f"{r:g}: {s['value']:.3f}" for r, s in zip(froc["fp_rates"], froc["sensitivity"]))
    print(f"| FROC sensitivity at FP/image (IoU >= {froc['iou_threshold']}) | {rates} | |")
    print(f"| FROC mean (LUNA16 score) | {ci(froc['cpm'])} | |")
    print(f"| recall at {m['recall_at_k']['k']} detections (IoU 0.5) | {ci(m['recall_at_k']['mean'])} | |")
    print(f"training: {info.get('train_seconds', 0):.0f} s, {info.get('epochs_run')} epochs ({info.get('stopped_by')})"
          + (f"; wall time of `medlens train` {seconds:.0f} s" if seconds else "") + f"; run folder {run}")


if __name__ == "__main__":
    sys.exit(main())
