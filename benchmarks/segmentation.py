"""Segmentation with the default plan on real data, beside the published reference; sliding-window cost.

    python benchmarks/segmentation.py [--data-dir DIR] [--time-budget 55m] [--only hippocampus drive isbi2012]
                                      [--runs-dir DIR] [--reuse] [--skip-sliding]

1. For each dataset: ``medlens train DATA --time-budget B`` (default plan, generated splits:
   20% test locked away, 20% of the rest for validation) in a fresh process, then ``medlens
   evaluate`` on the held-out test split. Prints mean Dice per class beside the published figure
   (../shared/REFERENCES.md: nnU-Net on Decathlon Hippocampus, 5-fold CV 0.8975 / 0.8807; DRIVE:
   typical U-Net vessel F1 0.80-0.83 on its official test images, via a CSV manifest).
   Target: within 0.03 Dice of the reference on each class, training at most 60 minutes on CPU.
   Our test split is a held-out 20% of the Decathlon training set (the official test labels are
   not public), and we train on 64% of the cases where nnU-Net's folds train on 80%.
2. Sliding-window inference time per volume through medlens (``medlens.engine.sliding``) versus
   calling MONAI's ``sliding_window_inference`` directly with the same network, patch, overlap,
   Gaussian blending and batch, on the preprocessed test volumes (median of repeats, interleaved).
   Target ratio (MONAI time / medlens time) >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or ROOT / ".." / "shared" / "datasets")

DATASETS = {
    # name: (path under the data folder, reference per class, reference source, default budget)
    "hippocampus": ("seg3d/Task04_Hippocampus", {"Anterior": 0.8975, "Posterior": 0.8807},
                    "nnU-Net 3d_fullres, 5-fold CV (REFERENCES.md)", "55m"),
    "drive": ("seg2d/drive", {"label_255": 0.80}, "typical U-Net vessel F1 0.80-0.83 on the DRIVE test images "
              "(MANIFEST.md); the lower end is our target", "10m"),
    "isbi2012": ("seg2d/isbi2012_em_membrane/train", {}, "no published Dice for membrane pixels (use Rand / "
                 "warping error); reported for information", "10m"),
}


def drive_manifest(root: Path, out: Path) -> Path:
    """DRIVE as a CSV manifest: its 20 training images (train/val) and 20 test images (locked test split)."""
    rows = ["image,mask,split"]
    for split, folder in (("train", "training"), ("test", "test")):
        for image in sorted((root / folder / "images").glob("*.tif")):
            number = image.name.split("_")[0]
            mask = root / folder / "1st_manual" / f"{number}_manual1.gif"
            rows.append(f"{image.resolve()},{mask.resolve()},{split}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "drive.csv").write_text("\n".join(rows) + "\n")
    return out / "drive.csv"
TOLERANCE = 0.03


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--time-budget", help="training budget per dataset (default: per dataset, 55m / 10m)")
    parser.add_argument("--only", nargs="*", choices=sorted(DATASETS), default=["hippocampus"])
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "benchmarks" / "runs")
    parser.add_argument("--reuse", action="store_true", help="evaluate existing runs instead of training")
    parser.add_argument("--skip-sliding", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for name in args.only:
        relative, reference, source, budget = DATASETS[name]
        data = args.data_dir / relative
        if not data.exists():
            print(f"{name}: {data} not found; set --data-dir or MEDLENS_DATA_DIR (see ../shared/datasets/MANIFEST.md)")
            continue
        run = args.runs_dir / f"seg-{name}"
        if name == "drive":
            data = drive_manifest(data, args.runs_dir / "drive-manifest")
        seconds = None if args.reuse else train(data, run, args.time_budget or budget)
        doc = evaluate(run)
        results.append((name, reference, source, doc, seconds, run))
        if not args.skip_sliding:
            sliding_benchmark(run)
    print_table(results)
    return 0


def train(data: Path, run: Path, budget: str) -> float:
    if run.exists():
        raise SystemExit(f"{run} exists; remove it, or pass --reuse to evaluate it")
    started = time.perf_counter()
    command = [sys.executable, "-m", "medlens.cli", "train", str(data), "--time-budget", budget, "--out", str(run),
               "--no-progress"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def evaluate(run: Path) -> dict:
    from medlens.engine.evaluate import evaluate_run

    return evaluate_run(run, split="test")


def sliding_benchmark(run: Path, cases: int = 12, repeats: int = 5) -> None:
    """Median per-volume time of medlens' sliding window vs MONAI's, same network and settings."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from medlens.data.prepared import open_config_dataset, split_cases
    from medlens.data.splits import read_splits
    from medlens.data.volumes import prepare_volumes
    from medlens.models.sliding import sliding_probs
    from medlens.runs import open_run
    from medlens.tasks import load_model

    folder = open_run(run)
    config = folder.read_config()
    dataset = open_config_dataset(config)
    test = split_cases(dataset, read_splits(folder.splits, dataset), config.dataset.fold)["test"][:cases]
    volumes = [torch.from_numpy(np.ascontiguousarray(v.image))[None] for v in prepare_volumes(dataset, test, config)]
    model = load_model(folder, config)
    s = config.segment

    def ours(x):
        return sliding_probs(model, x, config)

    @torch.no_grad()
    def monai(x):
        logits = sliding_window_inference(x, tuple(config.data.input_size), s.sw_batch_size, model,
                                          overlap=s.overlap, mode="gaussian")
        return torch.softmax(logits, dim=1)

    for x in volumes[:2]:
        torch.testing.assert_close(ours(x), monai(x))  # same computation, same answer
    times = {"medlens": [], "monai": []}
    for _ in range(repeats):
        for label, fn in (("monai", monai), ("medlens", ours)):
            start = time.perf_counter()
            for x in volumes:
                fn(x)
            times[label].append((time.perf_counter() - start) / len(volumes))
    ours_s, monai_s = statistics.median(times["medlens"]), statistics.median(times["monai"])
    ratio = monai_s / ours_s
    print(f"\nsliding-window inference, {len(volumes)} test volumes, median of {repeats} (torch threads "
          f"{torch.get_num_threads()}): MONAI {monai_s * 1000:.1f} ms/volume, medlens {ours_s * 1000:.1f} ms/volume, "
          f"ratio {ratio:.3f} (target >= 0.95: {'PASS' if ratio >= 0.95 else 'FAIL'})")


def print_table(results) -> None:
    print("\n| Dataset | Class | Ours Dice [95% CI] (test) | Reference | Within 0.03 | HD95 mm | Training |")
    print("|---|---|---|---|---|---|---|")
    for name, reference, source, doc, seconds, run in results:
        info = json.loads((run / "run.json").read_text())
        per_class = doc["metrics"]["per_class"]
        for cls, m in per_class.items():
            dice, hd = m["dice"], m["hd95_mm"]
            ref = reference.get(cls)
            verdict = ("-" if ref is None else "PASS" if dice["value"] >= ref - TOLERANCE else "FAIL")
            print(f"| {name} | {cls} | {dice['value']:.4f} [{dice['ci_low']:.4f}, {dice['ci_high']:.4f}] | "
                  f"{'-' if ref is None else f'{ref:.4f}'} | {verdict} | {hd['value']:.2f} | "
                  f"{info.get('train_seconds', 0):.0f} s, {info.get('epochs_run')} epochs "
                  f"({info.get('stopped_by')}) |")
        print(f"reference for {name}: {source}; test cases {doc['n_cases']}"
              + (f"; wall time of `medlens train` {seconds:.0f} s" if seconds else ""))


if __name__ == "__main__":
    sys.exit(main())
