"""Learning without labels: label efficiency of pretraining, one-class anomaly detection, the OOD guard.

    python benchmarks/unlabelled.py [--data-dir DIR] [--runs-dir DIR] [--only efficiency anomaly guard]
                                    [--pretrain-budget 5m] [--finetune-budget 2m] [--anomaly-budget 15m]
                                    [--fractions 0.01 0.1 1] [--repeats R]

1. Label efficiency (PneumoniaMNIST, BreastMNIST): ``medlens pretrain`` on the training images without
   labels, then ``medlens train`` with 1%, 10% and 100% of the training labels (a splits file keeping a
   stratified, seeded subsample of the training split; validation and test splits whole; a subset trains
   up to 100 epochs within the budget), once from scratch and once
   ``--init-from`` the pretraining run, the same network and budget for both. Prints test AUC / ACC with
   95% CIs. Target: at 10% labels, pretraining gains at least 0.02 AUC over scratch on both. ``--repeats R``
   draws each share R times (label subset and training seed), and the verdict is on the mean gain.
2. One-class anomaly detection (PneumoniaMNIST, BreastMNIST, AdrenalMNIST3D): ``medlens train --task
   anomaly --normal CLASS`` (normal training images only; threshold on normal validation images only),
   evaluated on the official test split. Targets: AUROC >= 0.80 (PneumoniaMNIST), >= 0.75
   (BreastMNIST), AdrenalMNIST3D reported; beside the pixel 1-NN floors and BMAD's figures
   (../shared/REFERENCES.md). CPU budget 15 minutes per dataset.
3. The OOD guard: the 100%-label PneumoniaMNIST classifier of part 1 scores its own test images and
   images of other datasets in DATA (BUSI, DRIVE, ISBI 2012, Hippocampus slices, BreastMNIST). Prints the
   OOD AUROC of ``ood_score`` per other set (target >= 0.95 for other modalities; BreastMNIST, the near
   case, printed) and the share of in-distribution test images flagged (the guard aims at 5%).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or ROOT / ".." / "shared" / "datasets")
FRACTIONS = (0.01, 0.10, 1.00)
NORMAL = {"pneumoniamnist": "normal", "breastmnist": "normal, benign", "adrenalmnist3d": "normal"}
ANOMALY_TARGET = {"pneumoniamnist": 0.80, "breastmnist": 0.75, "adrenalmnist3d": None}
FLOOR = {"pneumoniamnist": "pixel 1-NN 0.552, PCA-10 0.555", "breastmnist": "pixel 1-NN 0.649",
         "adrenalmnist3d": "-"}
BMAD = "BMAD (RSNA chest X-ray, full size): PatchCore 0.752, PaDiM 0.759, CutPaste 0.824, CS-Flow 0.832"


def medlens(*args, what: str) -> float:
    """Run the ``medlens`` CLI in a fresh process; returns its wall time. Stops the benchmark on failure.
    A run whose ``--out`` folder already holds a finished model is kept (a rerun continues where one stopped)."""
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    if out is not None and (out / "weights.pt").exists():
        return float("nan")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "medlens.cli", *map(str, args), "--no-progress"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def evaluate(run: Path) -> dict:
    from medlens.engine.evaluate import evaluate_run

    return evaluate_run(run, n_bootstrap=500, log=lambda *a: None)


def ci(metric: dict) -> str:
    return f"{metric['value']:.3f} [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"


# ---- 1. label efficiency -------------------------------------------------------------------------

def label_splits(npz: Path, fraction: float, out: Path, seed: int = 0) -> Path:
    """A splits file keeping ``fraction`` of each class of the official training split (at least 2 per class;
    the rest of the training images are left out), the official validation and test splits whole."""
    data = np.load(npz)
    labels = data["train_labels"].reshape(len(data["train_labels"]), -1)[:, 0]
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:max(2, round(fraction * (labels == c).sum()))]
                           for c in np.unique(labels)])
    ids = lambda split, indices: [f"{split}/{i:06d}" for i in sorted(indices)]  # noqa: E731  (medlens case ids)
    splits = {"medlens_splits_version": 1, "dataset": str(npz), "seed": seed, "grouped_by": "case",
              "stratified_by": "label", "test": ids("test", range(len(data["test_labels"]))),
              "folds": [{"train": ids("train", keep), "val": ids("val", range(len(data["val_labels"])))}]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(splits), encoding="utf-8")
    return out


def network_of(run: Path) -> list[str]:
    """``--set`` arguments that give a new plan the network of ``run`` (so scratch and pretrained compare)."""
    from medlens.config import read_plan

    model = read_plan(run / "plan.yaml")[0].model
    return ["--set", f"model.name={model.name}", "--set", f"model.width={model.width}"]


def efficiency(npz: Path, runs: Path, pretrain_budget: str, finetune_budget: str, *,
               fractions=FRACTIONS, repeats: int = 1) -> tuple[bool, Path]:
    """The label-efficiency table of one dataset. With ``repeats`` R > 1, each share of labels is drawn R times
    (label subset and training seed ``k`` = 0..R-1; 100% varies the seed alone), each draw trained from scratch and
    from the pretraining run; the verdict is on the mean gain over the draws."""
    name = npz.stem
    pretrained = runs / f"pretrain-{name}"
    wall = medlens("pretrain", npz, "--out", pretrained, "--time-budget", pretrain_budget, what=f"pretrain {name}")
    print(f"\n{name}: pretrained {pretrain_budget} without labels ({wall:.0f} s wall); fine-tuning {finetune_budget} "
          f"per run, the same network for both columns; {repeats} draw(s) of each share of labels")
    print(f"{'labels':>7} {'draw':>4} {'n train':>8} {'scratch AUC [95% CI]':>26} {'pretrained AUC [95% CI]':>26} "
          f"{'scratch ACC':>11} {'pretr. ACC':>11} {'gain AUC':>9}")
    gains, full = {}, None
    for fraction in fractions:
        gains[fraction] = []
        for k in range(repeats):
            # a subset trains for as many epochs as the budget allows (the plan's epochs are sized for all the labels)
            tag = f"{name}-{fraction:g}" + (f"-draw{k}" if k else "")
            splits = None if fraction == 1 else label_splits(npz, fraction, runs / f"{tag}.json", seed=k)
            subset = [] if splits is None else ["--set", f"dataset.splits={splits}", "--set", "train.max_epochs=100",
                                                "--set", "train.patience=30"]
            seed = ["--set", f"train.seed={k}"] if k else []
            docs = {}
            for start, extra in (("scratch", []), ("pretrained", ["--init-from", pretrained])):
                run = runs / f"{tag}-{start}"
                medlens("train", npz, "--out", run, "--time-budget", finetune_budget, *network_of(pretrained),
                        *subset, *seed, *extra, what=f"{name} {fraction:.0%} draw {k} {start}")
                docs[start] = evaluate(run)["metrics"]
                if fraction == 1 and start == "scratch" and k == 0:
                    full = run
            n = len(json.loads((run / "splits.json").read_text())["folds"][0]["train"])
            gain = docs["pretrained"]["auc"]["value"] - docs["scratch"]["auc"]["value"]
            gains[fraction].append(gain)
            print(f"{fraction:>7.0%} {k:>4d} {n:>8d} {ci(docs['scratch']['auc']):>26} "
                  f"{ci(docs['pretrained']['auc']):>26} {docs['scratch']['accuracy']['value']:>11.3f} "
                  f"{docs['pretrained']['accuracy']['value']:>11.3f} {gain:>+9.3f}")
        if repeats > 1:
            spread = np.std(gains[fraction], ddof=1)
            print(f"{fraction:>7.0%} mean gain {np.mean(gains[fraction]):+.3f} (SD {spread:.3f} over {repeats} draws)")
    if 0.10 not in gains:
        return True, full
    mean = float(np.mean(gains[0.10]))
    ok = mean >= 0.02
    print(f"at 10% labels pretraining gains {mean:+.3f} AUC{' on average' if repeats > 1 else ''} (target >= +0.02): "
          f"{'PASS' if ok else 'FAIL'}")
    return ok, full


# ---- 2. one-class anomaly detection --------------------------------------------------------------

def anomaly(npz: Path, runs: Path, budget: str) -> bool:
    name = npz.stem
    run = runs / f"anomaly-{name}"
    wall = medlens("train", npz, "--task", "anomaly", "--normal", NORMAL[name], "--out", run, "--time-budget", budget,
                   what=f"anomaly {name}")
    doc = evaluate(run)
    method = json.loads((run / "run.json").read_text()).get("method") or _plan_value(run, "anomaly", "method")
    metrics = doc["metrics"]
    auroc = metrics["auroc"]["value"]
    target = ANOMALY_TARGET[name]
    verdict = "reported" if target is None else ("PASS" if auroc >= target else "FAIL")
    print(f"{name:<15} {method:<11} {ci(metrics['auroc']):>22} {ci(metrics['auprc']):>22} "
          f"{metrics['sensitivity']['value']:>6.3f} {metrics['specificity']['value']:>6.3f} "
          f"{'-' if target is None else f'>= {target:.2f}':>8} {verdict:<8} {wall:6.0f}  floor: {FLOOR[name]}")
    return verdict != "FAIL"


def _plan_value(run: Path, section: str, key: str):
    from medlens.config import read_plan

    return getattr(getattr(read_plan(run / "plan.yaml")[0], section), key)


# ---- 3. the OOD guard ----------------------------------------------------------------------------

def other_sets(data_dir: Path, limit: int = 100) -> dict[str, list]:
    """Images of other datasets, as paths or arrays ``(*spatial)``, at most ``limit`` per set."""
    from medlens.io import read_image

    sets = {
        "BUSI (ultrasound)": sorted((data_dir / "folders" / "busi_256").glob("*/*.png"))[::3][:limit],
        "DRIVE (fundus)": sorted((data_dir / "seg2d" / "drive").glob("*/images/*.tif"))[:limit],
        "ISBI 2012 (EM)": sorted((data_dir / "seg2d" / "isbi2012_em_membrane" / "train" / "image").glob("*.png"))[
            :limit],
    }
    slices = []
    for path in sorted((data_dir / "seg3d" / "Task04_Hippocampus" / "imagesTr").glob("*.nii.gz"))[:limit]:
        volume = read_image(path, spatial_dims=3).array[0]
        slices.append(volume[:, :, volume.shape[2] // 2])
    sets["Hippocampus (MRI slices)"] = slices
    breast = np.load(data_dir / "medmnist" / "breastmnist.npz")["test_images"][:limit]
    sets["BreastMNIST (near: ultrasound)"] = [image.T for image in breast.astype(np.float32)]
    return sets


def guard(run: Path, data_dir: Path) -> bool:
    from sklearn.metrics import roc_auc_score

    from medlens.deploy import Predictor

    predictor = Predictor.from_path(run)
    # MedMNIST arrays are (row, column); medlens arrays are in ITK order (x = column first), as its reader gives
    inside = [predictor.predict(image.T.astype(np.float32)) for image in
              np.load(data_dir / "medmnist" / "pneumoniamnist.npz")["test_images"]]
    scores_in = np.array([r["ood_score"] for r in inside])
    flagged = np.mean([not r["in_distribution"] for r in inside])
    print(f"\nPneumoniaMNIST classifier {run.name}: {len(inside)} in-distribution test images, {flagged:.1%} flagged "
          "(the guard's threshold keeps 95% of validation images)")
    print(f"{'other set':<32} {'n':>4} {'OOD AUROC':>10} {'flagged':>8}  target")
    ok = True
    for label, images in other_sets(data_dir).items():
        results = [predictor.predict(image) for image in images]
        scores = np.array([r["ood_score"] for r in results])
        auroc = roc_auc_score(np.r_[np.zeros(len(scores_in)), np.ones(len(scores))], np.r_[scores_in, scores])
        near = "near" in label
        passed = near or auroc >= 0.95
        ok &= passed
        share = np.mean([not r["in_distribution"] for r in results])
        print(f"{label:<32} {len(scores):>4d} {auroc:>10.3f} {share:>8.1%}"
              f"  {'printed (near case)' if near else ('>= 0.95 PASS' if passed else '>= 0.95 FAIL')}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--only", nargs="*", choices=("efficiency", "anomaly", "guard"),
                        default=["efficiency", "anomaly", "guard"])
    parser.add_argument("--pretrain-budget", default="5m")
    parser.add_argument("--finetune-budget", default="2m")
    parser.add_argument("--anomaly-budget", default="15m")
    parser.add_argument("--datasets", nargs="*", default=["pneumoniamnist", "breastmnist", "adrenalmnist3d"])
    parser.add_argument("--fractions", nargs="*", type=float, default=list(FRACTIONS),
                        help="shares of the training labels in the label-efficiency table")
    parser.add_argument("--repeats", type=int, default=1, help="draws of each share of labels (subset and seed k)")
    args = parser.parse_args()
    import tempfile

    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="medlens-unlabelled-"))
    files = {n: args.data_dir / "medmnist" / f"{n}.npz" for n in args.datasets
             if (args.data_dir / "medmnist" / f"{n}.npz").exists()}
    ok, full = True, None
    if "efficiency" in args.only:
        print("== 1. Label efficiency: pretraining without labels, then 1% / 10% / 100% of the training labels ==")
        for name in ("pneumoniamnist", "breastmnist"):
            if name in files:
                passed, run = efficiency(files[name], runs, args.pretrain_budget, args.finetune_budget,
                                         fractions=args.fractions, repeats=args.repeats)
                ok &= passed
                full = run if name == "pneumoniamnist" else full
    if "anomaly" in args.only:
        print(f"\n== 2. One-class anomaly detection, --time-budget {args.anomaly_budget}, official test split ==")
        print(f"{'dataset':<15} {'method':<11} {'AUROC [95% CI]':>22} {'AUPRC [95% CI]':>22} {'sens':>6} {'spec':>6} "
              f"{'target':>8} {'verdict':<8} {'wall s':>6}")
        for npz in files.values():
            ok &= anomaly(npz, runs, args.anomaly_budget)
        print(BMAD)
    if "guard" in args.only:
        print("\n== 3. The out-of-distribution guard of a PneumoniaMNIST classifier ==")
        if full is None:
            full = runs / "guard-pneumoniamnist"
            if not (full / "weights.pt").exists():
                medlens("train", files["pneumoniamnist"], "--out", full, "--time-budget", args.finetune_budget,
                        what="the PneumoniaMNIST classifier")
        ok &= guard(full, args.data_dir)
    print(f"\nruns in {runs}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
