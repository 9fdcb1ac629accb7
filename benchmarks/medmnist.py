"""MedMNIST with the default plan, beside the published MedMNIST v2 figures; time to accuracy; overhead.

    python benchmarks/medmnist.py [--data-dir DIR] [--time-budget 10m] [--only NAME ...] [--skip-table]
                                  [--skip-time-to-accuracy] [--skip-overhead] [--runs-dir DIR]

1. For each MedMNIST ``.npz`` under DATA/medmnist: ``medlens train FILE --time-budget B`` (default
   plan, official splits) in a fresh process, then ``evaluate`` on the official test split. Prints
   test AUC / ACC by the MedMNIST protocol beside the ResNet-18 (28) figure (ResNet-18 + 3D for the
   3D sets) and the best method of the published table (../shared/REFERENCES.md). Target: at or
   above ResNet-18 on both, with at most 10 minutes of training per 2D 28x28 dataset.
2. Time to the ResNet-18 (28) row: ``medlens train`` on PneumoniaMNIST with ``--time-budget 15s`` (then
   30s, 60s, ... until a run reaches the row), each timed from process start: to the plan (imports,
   audit, timing probe), to the saved model (``weights.pt``: preprocessing and training), to the
   calibrated run (calibration, validation CIs, OOD guard) and to the process's end (the report).
   A run reaches the row at test AUC >= 0.944 and ACC >= 0.854 (MedMNIST protocol). Target: the 15 s
   budget reaches it.
3. Overhead: training images per second through ``medlens train`` (epoch wall time from its
   metrics.csv, validation, checkpoints and logs included) versus a plain PyTorch loop doing the
   same work (same network, seed, batch, optimiser, schedule, a validation pass per epoch, data in
   memory). Augmentation, weight averaging and ensembling are switched off in both, so the
   comparison is like for like (one network, the same steps). Target >= 0.95.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or ROOT / ".." / "shared" / "datasets")
NO_AUGMENT = ["--set", "augment.flip_axes=[]", "--set", "augment.rotate_deg=0", "--set", "augment.scale=0",
              "--set", "augment.translate=0", "--set", "augment.intensity=0"]
ONE_PLAIN_NETWORK = ["--set", "model.members=1", "--set", "train.ema_fraction=0"]  # what the plain loop trains


def read_references(path: Path) -> dict[str, dict]:
    """``{dataset: {"resnet18": (auc, acc), "best": (auc, acc), "best_auc_by": str, "best_acc_by": str}}``."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    refs: dict[str, dict] = {}
    for start, line in enumerate(lines):
        if line.startswith("| Dataset | ResNet-18 (28)"):
            _read_2d(lines, start, refs)
        elif line.startswith("| Method | OrganMNIST3D"):
            _read_3d(lines, start, refs)
    return refs


def _pair(cell: str) -> tuple[float, float] | None:
    numbers = re.findall(r"\d\.\d+", cell)
    return (float(numbers[0]), float(numbers[1])) if len(numbers) >= 2 else None


def _table(lines: list[str], start: int) -> list[list[str]]:
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [rows[0]] + rows[2:]


def _add(refs: dict, name: str, methods: dict[str, tuple[float, float]], reference_method: str) -> None:
    best_auc = max(methods.items(), key=lambda kv: kv[1][0])
    best_acc = max(methods.items(), key=lambda kv: kv[1][1])
    refs[name.lower()] = {"resnet18": methods.get(reference_method), "reference_method": reference_method,
                          "best": (best_auc[1][0], best_acc[1][1]), "best_auc_by": best_auc[0],
                          "best_acc_by": best_acc[0]}


def _read_2d(lines, start, refs) -> None:
    header, *rows = _table(lines, start)
    for row in rows:
        methods = {m: p for m, c in zip(header[1:], row[1:]) if (p := _pair(c))}
        _add(refs, row[0], methods, "ResNet-18 (28)")


def _read_3d(lines, start, refs) -> None:
    header, *rows = _table(lines, start)
    for column, name in enumerate(header[1:], start=1):
        methods = {row[0]: p for row in rows if (p := _pair(row[column]))}
        _add(refs, name, methods, "ResNet-18 + 3D")


def train(npz: Path, out: Path, budget: str, extra: list[str] = ()) -> float:
    """Run ``medlens train`` in a fresh process; returns its wall time (process start to saved model)."""
    return train_timed(npz, out, budget, extra)["model"]


def train_timed(npz: Path, out: Path, budget: str, extra: list[str] = ()) -> dict[str, float]:
    """Run ``medlens train`` in a fresh process; seconds from its start to each milestone: ``plan`` (plan.yaml
    written), ``model`` (weights.pt saved), ``calibrated`` (the last of calibration, validation and OOD guard
    files) and ``end`` (the process exited, the report written)."""
    command = [sys.executable, "-m", "medlens.cli", "train", str(npz), "--out", str(out), "--time-budget", budget,
               "--no-progress", *extra]
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    end = time.time() - start
    if result.returncode != 0:
        raise SystemExit(f"training {npz.name} failed:\n{result.stderr[-3000:]}")
    written = lambda *names: max(os.path.getmtime(out / n) for n in names if (out / n).exists()) - start  # noqa: E731
    return {"plan": written("plan.yaml"), "model": written("weights.pt"),
            "calibrated": written("weights.pt", "calibration.json", "validation.json", "ood_guard.safetensors"),
            "end": end}


def evaluate(run: Path) -> dict:
    from medlens.engine.evaluate import evaluate_run

    return evaluate_run(run, n_bootstrap=200, log=lambda *a: None)


def epochs_run(run: Path) -> int:
    return len(list(csv.DictReader(open(run / "metrics.csv"))))


def table(files: list[Path], refs: dict, runs: Path, budget: str) -> bool:
    print(f"\n== 1. MedMNIST, default plan, --time-budget {budget}, official test split (MedMNIST protocol) ==")
    print(f"{'dataset':<16} {'ours AUC/ACC':>14} {'ResNet-18':>13} {'best AUC/ACC':>13}  {'vs ResNet-18':<12} "
          f"{'beats best':<10} {'train s':>8} {'epochs':>6} {'k-NN AUC':>8}")
    ok = True
    for npz in files:
        name = npz.stem
        run = runs / f"bench-{name}"
        wall = train(npz, run, budget)
        doc = evaluate(run)
        auc, acc = doc["medmnist_protocol"]["auc"], doc["medmnist_protocol"]["acc"]
        ref = refs.get(name.split("_")[0], {})
        r18, best = ref.get("resnet18"), ref.get("best")
        verdict = "n/a" if not r18 else ("PASS" if auc >= r18[0] and acc >= r18[1] else "FAIL")
        beats = "n/a" if not best else ("both" if auc >= best[0] and acc >= best[1] else
                                        "AUC" if auc >= best[0] else "ACC" if acc >= best[1] else "no")
        ok &= verdict != "FAIL"
        fmt = lambda p: f"{p[0]:.3f}/{p[1]:.3f}" if p else "-"  # noqa: E731
        knn = doc.get("baseline", {}).get("auc", {}).get("value", float("nan"))
        print(f"{name:<16} {fmt((auc, acc)):>14} {fmt(r18):>13} {fmt(best):>13}  {verdict:<12} {beats:<10} "
              f"{wall:8.1f} {epochs_run(run):6d} {knn:8.3f}")
        if best:
            print(f"{'':<16} best AUC by {ref['best_auc_by']}, best ACC by {ref['best_acc_by']}; "
                  f"reference column: {ref['reference_method']}")
    return ok


ROW = (0.944, 0.854)  # ResNet-18 (28) on PneumoniaMNIST: test AUC, ACC (../shared/REFERENCES.md)


def time_to_accuracy(npz: Path, runs: Path, budgets: tuple[str, ...] = ("15s", "30s", "60s", "100s")) -> bool:
    print("\n== 2. Time to the ResNet-18 (28) row (AUC 0.944 / ACC 0.854): PneumoniaMNIST, `medlens train "
          "--time-budget B`, seconds from process start ==")
    print(f"{'budget':>6} {'plan':>6} {'model':>6} {'calib.':>6} {'end':>6} {'epochs':>6} {'stopped by':<22} "
          f"{'test AUC':>8} {'ACC':>6}  row")
    for budget in budgets:
        run = runs / f"bench-tta-{budget}"
        times = train_timed(npz, run, budget)
        doc = evaluate(run)
        auc, acc = doc["medmnist_protocol"]["auc"], doc["medmnist_protocol"]["acc"]
        reached = auc >= ROW[0] and acc >= ROW[1]
        info = json.loads((run / "run.json").read_text())
        stop = info.get("stopped_by", "") + (" (mid-epoch)" if (info.get("budget") or {}).get("mid_epoch") else "")
        print(f"{budget:>6} {times['plan']:6.1f} {times['model']:6.1f} {times['calibrated']:6.1f} {times['end']:6.1f} "
              f"{epochs_run(run):6d} {stop:<22} {auc:8.4f} {acc:6.4f}  {'reached' if reached else 'below'}")
        if reached:
            print(f"time to the row: {times['model']:.1f} s from process start to the saved model "
                  f"({times['end']:.1f} s to the end of the process) with --time-budget {budget}; target: 15s "
                  f"reaches it: {'PASS' if budget == budgets[0] else 'FAIL'}")
            return budget == budgets[0]
    print(f"no budget up to {budgets[-1]} reached the row: FAIL")
    return False


def overhead(npz: Path, runs: Path, epochs: int = 4) -> bool:
    print(f"\n== 3. Overhead: training images/s, medlens train vs a plain PyTorch loop ({epochs} epochs, "
          "first excluded, augmentation off) ==")
    run = runs / "bench-overhead"
    train(npz, run, "30m", ["--set", f"train.max_epochs={epochs}", "--set", f"train.patience={epochs}", *NO_AUGMENT,
                            *ONE_PLAIN_NETWORK])
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    elapsed = [float(r["elapsed_s"]) for r in rows]
    ours = statistics.median(b - a for a, b in zip(elapsed, elapsed[1:]))
    plain, n_train = plain_loop(run, epochs)
    ratio = plain / ours
    print(f"medlens: {n_train / ours:8.1f} images/s ({ours:.2f} s per epoch incl. validation, checkpoints, logs)")
    print(f"plain:   {n_train / plain:8.1f} images/s ({plain:.2f} s per epoch incl. a validation pass)")
    print(f"ratio medlens/plain = {ratio:.3f} (target >= 0.95): {'PASS' if ratio >= 0.95 else 'FAIL'}")
    return ratio >= 0.95


def plain_loop(run: Path, epochs: int) -> tuple[float, int]:
    """The same training, hand-written: returns (median epoch seconds after the first, training images)."""
    import numpy as np
    import torch

    from medlens.data.prepared import open_config_dataset, prepare_split, split_cases
    from medlens.data.splits import read_splits
    from medlens.runs import RunFolder
    from medlens.tasks import task_for
    from medlens.tasks.optim import schedule_factor

    folder = RunFolder(run)
    config = folder.read_config()
    dataset = open_config_dataset(config)
    cases = split_cases(dataset, read_splits(folder.splits, dataset), config.dataset.fold)
    train_data = prepare_split(dataset, "train", cases["train"], config)
    val_data = prepare_split(dataset, "val", cases["val"], config)
    x, y = torch.from_numpy(train_data.images), torch.from_numpy(train_data.labels)
    xv = torch.from_numpy(val_data.images)
    torch.manual_seed(config.train.seed)
    model = task_for(config).build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    batch = config.train.batch_size
    steps = -(-len(x) // batch)  # the last partial batch too, as medlens does
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor("cosine", s, steps * epochs))
    weight = None
    if config.train.loss == "weighted_ce":
        counts = np.bincount(train_data.labels)
        weight = torch.tensor(len(y) / (len(counts) * counts), dtype=torch.float32)
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.from_numpy(np.random.default_rng([0, epoch]).permutation(len(x)))
        for k in range(steps):
            index = order[k * batch:(k + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(x[index]), y[index], weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            for k in range(0, len(xv), 256):
                model(xv[k:k + 256])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), len(x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--time-budget", default="10m", help="training budget per dataset for table 1 (default 10m)")
    parser.add_argument("--only", nargs="*", help="dataset file stems to run (default: all present)")
    parser.add_argument("--runs-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--skip-time-to-accuracy", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    folder = args.data_dir / "medmnist"
    files = sorted(p for p in folder.glob("*.npz") if not args.only or p.stem in args.only)
    if not files:
        print(f"no MedMNIST .npz in {folder}; set --data-dir or MEDLENS_DATA_DIR (see `medlens fetch medmnist`)")
        return 2
    refs = read_references(ROOT / ".." / "shared" / "REFERENCES.md")
    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="medlens-bench-"))
    runs.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPU cores, torch threads {__import__('torch').get_num_threads()}; runs in {runs}")
    ok = True
    if not args.skip_table:
        ok &= table(files, refs, runs, args.time_budget)
    pneumonia = folder / "pneumoniamnist.npz"
    if pneumonia.exists() and not args.skip_time_to_accuracy:
        ok &= time_to_accuracy(pneumonia, runs)
    if pneumonia.exists() and not args.skip_overhead:
        ok &= overhead(pneumonia, runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
