"""Ordered grades: the ordinal loss against plain cross-entropy, and the argmax grade against the median.

    python benchmarks/ordinal.py [--data-dir DIR] [--view coronal] [--time-budget 60s] [--seeds 0 1 2]
                                 [--runs-dir DIR] [--set KEY=VALUE ...]

The data: OASIS-1 (``multimodal/oasis1_three_views`` under DATA), one JPEG view per subject, labelled
by its Clinical Dementia Rating (CDR 0 / 0.5 / 1 here, three ordered grades; class names are CDR x 2,
"0", "1", "2", because they must sort as numbers). A manifest CSV is written to a temporary folder
(the images stay where they are, read through ``--image-root``); subjects are split 60/20/20 per
grade by a hash of their id, the same split for every run.

For each loss (``ordinal_bce``, ``ce``) and seed: ``medlens train`` with ``dataset.task=ordinal``, no
race, the given budget and any ``--set`` override (e.g. ``data.input_size=[64,64]``); then ``medlens
evaluate`` on the validation and the test split. Prints per run and averaged over seeds: quadratic
weighted kappa and mean absolute grade error of the argmax grade (what metrics.json reports), the
same of the median grade of the calibrated distribution (from the predictions CSV), accuracy and AUC.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or ROOT / ".." / "shared" / "datasets")
SUFFIX = {"axial": "a", "coronal": "c", "sagittal": "s"}


def write_manifest(oasis: Path, view: str, out: Path) -> Path:
    """``out/oasis_<view>.csv``: image (relative to ``oasis``), label (CDR x 2), patient, split."""
    rows = []
    with open(oasis / "oasis_cross-sectional.csv", newline="") as f:
        for row in csv.DictReader(f):
            image = f"{view}/{row['ID']}_{SUFFIX[view]}.jpg"
            if row["CDR"] and (oasis / image).is_file():
                rows.append({"image": image, "label": str(int(round(2 * float(row["CDR"])))), "patient": row["ID"]})
    for grade in {r["label"] for r in rows}:
        members = sorted((r for r in rows if r["label"] == grade),
                         key=lambda r: hashlib.sha256(r["patient"].encode()).hexdigest())
        for i, r in enumerate(members):
            r["split"] = "train" if i < 0.6 * len(members) else "val" if i < 0.8 * len(members) else "test"
    path = out / f"oasis_{view}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "patient", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def medlens(*args) -> None:
    done = subprocess.run([sys.executable, "-m", "medlens.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"medlens {' '.join(map(str, args))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def scores(run: Path, split: str) -> dict[str, float]:
    """Argmax QWK / MAE from metrics.json, median-grade QWK / MAE from the predictions, ACC, AUC."""
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    with open(run / f"predictions_{split}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = metrics["confusion_matrix"]["labels"]
    truth = np.array([names.index(r["label"]) for r in rows])
    probs = np.array([[float(r[f"p_{n}"]) for n in names] for r in rows])
    median = (np.cumsum(probs, axis=1)[:, :-1] < 0.5).sum(axis=1)  # least grade with P(grade <= k) >= 0.5
    return {"qwk": metrics["qwk"]["value"], "mae": metrics["mae"]["value"],
            "qwk_median": cohen_kappa_score(truth, median, weights="quadratic"),
            "mae_median": float(np.abs(truth - median).mean()),
            "acc": metrics["accuracy"]["value"], "auc": metrics["auc"]["value"]}


def train_and_score(csv_path: Path, oasis: Path, run: Path, loss: str, seed: int, budget: str,
                    overrides: list[str]) -> dict:
    if not (run / "weights.pt").is_file():
        sets = ["dataset.task=ordinal", f"train.loss={loss}", f"train.seed={seed}", "train.race=[]",
                "train.race_share=0", *overrides]
        medlens("train", csv_path, "--image-root", oasis, "--out", run, "--time-budget", budget, "--no-progress",
                *[arg for item in sets for arg in ("--set", item)])
    result = {}
    for split in ("val", "test"):
        medlens("evaluate", run, "--split", split, "--bootstrap", "0", "--no-baseline")
        result[split] = scores(run, split)
    return result


FIELDS = ("qwk", "mae", "qwk_median", "mae_median", "acc", "auc")


def line(label: str, values: dict) -> str:
    return f"{label:<22}" + "".join(f"{values[k]:>11.3f}" for k in FIELDS)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--view", choices=sorted(SUFFIX), default="coronal")
    parser.add_argument("--time-budget", default="60s")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    oasis = args.data_dir / "multimodal" / "oasis1_three_views"
    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="medlens_ordinal_"))
    runs.mkdir(parents=True, exist_ok=True)
    csv_path = write_manifest(oasis, args.view, runs)
    results = {}
    for loss in ("ordinal_bce", "ce"):
        for seed in args.seeds:
            results[loss, seed] = train_and_score(csv_path, oasis, runs / f"{loss}_{seed}", loss, seed,
                                                  args.time_budget, args.overrides)
            print(f"{loss} seed {seed}: " + json.dumps(results[loss, seed]), flush=True)
    print(f"\nOASIS-1 {args.view}, CDR grades, {args.time_budget} per run {' '.join(args.overrides)}; runs in {runs}")
    for split in ("val", "test"):
        print(f"\n{split:<22}" + "".join(f"{k:>11}" for k in FIELDS))
        for loss in ("ordinal_bce", "ce"):
            per_seed = [results[loss, s][split] for s in args.seeds]
            for seed, values in zip(args.seeds, per_seed):
                print(line(f"{loss} seed {seed}", values))
            print(line(f"{loss} mean", {k: statistics.mean(v[k] for v in per_seed) for k in FIELDS}))


if __name__ == "__main__":
    main()
