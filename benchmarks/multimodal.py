"""Several inputs per case: OASIS-1's three MRI views and demographics, 10-fold cross-validated.

    python benchmarks/multimodal.py [--data-dir DIR] [--time-budget 120s] [--folds 0 1 ...]
                                    [--sources axial coronal sagittal views all] [--runs-dir DIR]
                                    [--set KEY=VALUE ...]

The data: ``multimodal/oasis1_three_views`` under DATA (196 subjects, an axial, a coronal and a sagittal
JPEG of the same T1 MRI, and a row of demographics). Task: dementia (CDR > 0) against none. The ten test
folds are those of ``folds.csv`` (the source repository's: 19 subjects each, 190 rows naming 139 distinct
subjects, so 45 subjects are tested in two or three folds and 57 in none; those always train). Inputs
are the images and Age, M/F, Educ, SES, eTIV, nWBV, ASF, never MMSE or CDR (which define the label). For each
fold a manifest CSV is written to a temporary folder (images read where they are, through ``--image-root``)
with a ``split`` column: the fold's subjects test, 15% of the others (a hash of their id, per class) validate.

Sources, each a ``medlens train`` with the default plan and ``--time-budget`` per fold, then ``medlens
evaluate`` on the test split:

- ``axial``, ``coronal``, ``sagittal``: one view per subject (the single-view anchors of REFERENCES.md);
- ``views``: the three views (the plan encodes them apart and fuses their features);
- ``all``: the three views and the clinical columns. Its evaluation also scores the fused network with the
  clinical values withheld, and gradient boosting on the clinical values alone (``sources_test.csv``): the
  "clinical only" row.

Prints, per source, accuracy and AUC of the test-fold predictions pooled over the folds run, with 95%
bootstrap CIs (subjects resampled), and the mean over folds, beside the published single-view figures. Accuracy
is that of the decisions ``medlens predict`` makes: at each run's threshold, chosen on its validation split
(0.5 for gradient boosting).
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
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or ROOT / ".." / "shared" / "datasets")
SUFFIX = {"axial": "a", "coronal": "c", "sagittal": "s"}
CLINICAL = ("Age", "M/F", "Educ", "SES", "eTIV", "nWBV", "ASF")
PUBLISHED_ACC = {"axial": 0.711, "coronal": 0.637, "sagittal": 0.679}  # ../shared/REFERENCES.md, 10-fold accuracy
SOURCES = ("axial", "coronal", "sagittal", "views", "all")
CLASSES = ("none", "dementia")
VAL_SHARE = 0.15


def subjects(oasis: Path) -> list[dict]:
    """Every subject with three views and a CDR: ``{"ID", "label", "fold", **demographics}``.

    The source CSV writes some nWBV and ASF values without their decimal point (780 for 0.780: 13 and 24 of the
    196 rows); ``medlens inspect`` flags both columns (``clinical.scale``) and says to fix them, which is done
    here: a value above 10 is divided by 1000.
    """
    folds: dict[str, set[int]] = {}
    with open(oasis / "folds.csv", newline="") as f:
        for row in csv.DictReader(f):
            folds.setdefault(row["subject"], set()).add(int(row["fold"]))
    rows = []
    with open(oasis / "oasis_cross-sectional.csv", newline="") as f:
        for row in csv.DictReader(f):
            views = [oasis / v / f"{row['ID']}_{s}.jpg" for v, s in SUFFIX.items()]
            if row["CDR"] and all(p.is_file() for p in views):
                for column in ("nWBV", "ASF"):
                    if row[column] and float(row[column]) > 10:
                        row[column] = f"{float(row[column]) / 1000:.3f}"
                rows.append({**row, "label": CLASSES[float(row["CDR"]) > 0], "folds": folds.get(row["ID"], set())})
    return rows


def split_of(row: dict, fold: int, rows: list[dict]) -> str:
    """``test`` for the fold's subjects; of the others, the first 15% per class by a hash of the id validate."""
    if fold in row["folds"]:
        return "test"
    same = sorted((r for r in rows if r["label"] == row["label"] and fold not in r["folds"]),
                  key=lambda r: hashlib.sha256(r["ID"].encode()).hexdigest())
    return "val" if same.index(row) < VAL_SHARE * len(same) else "train"


def write_manifest(rows: list[dict], source: str, fold: int, out: Path) -> Path:
    """``out/<source>_fold<k>.csv`` for one source and fold."""
    views = list(SUFFIX) if source in ("views", "all") else [source]
    image_columns = [f"image:{v}" for v in views] if len(views) > 1 else ["image"]
    clinical = list(CLINICAL) if source == "all" else []
    path = out / f"{source}_fold{fold}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*image_columns, "label", "subject", "split", *clinical])
        for row in rows:
            images = [f"{v}/{row['ID']}_{SUFFIX[v]}.jpg" for v in views]
            writer.writerow([*images, row["label"], row["ID"], split_of(row, fold, rows), *(row[c] for c in clinical)])
    return path


def medlens(*args) -> str:
    done = subprocess.run([sys.executable, "-m", "medlens.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"medlens {' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def run_fold(manifest: Path, oasis: Path, run: Path, budget: str, overrides: list[str]) -> float:
    """Train and evaluate one fold (skipped when its run already has test predictions); the seconds it took."""
    start = time.perf_counter()
    if not (run / "weights.pt").is_file():
        medlens("train", manifest, "--image-root", oasis, "--out", run, "--time-budget", budget, "--no-progress",
                *[arg for item in overrides for arg in ("--set", item)])
    if not (run / "predictions_test.csv").is_file():
        medlens("evaluate", run, "--split", "test", "--bootstrap", "0")
    return time.perf_counter() - start


def predictions(run: Path, name: str = "predictions_test.csv", column: str = "p_dementia",
                threshold: float | None = None) -> dict[str, tuple[float, float]]:
    """Case id -> (probability of dementia, the decision threshold), from a run's CSV. The threshold is the run's
    own (chosen on validation, what ``medlens predict`` decides at) unless ``threshold`` is given."""
    if threshold is None:
        threshold = float(json.loads((run / "calibration.json").read_text())["threshold"])
    with open(run / name, newline="") as f:
        return {row["case_id"]: (float(row[column]), threshold) for row in csv.DictReader(f)}


def pooled(probs: dict[tuple[int, str], tuple[float, float]], truth: dict[str, str]) -> dict:
    """AUC and accuracy (each prediction decided at its run's threshold) of pooled test-fold predictions
    ``{(fold, subject): (p, threshold)}``, with 95% CIs over resampled subjects (a subject tested in several
    folds is resampled with all its predictions)."""
    from medlens.tasks.classification.metrics import classification_metrics

    keys = sorted(probs)
    labels = np.array([CLASSES.index(truth[subject]) for _, subject in keys])
    p, threshold = (np.array([probs[k][i] for k in keys]) for i in (0, 1))
    decided = np.where(p >= threshold, 0.5 + 0.5 * (p - threshold) / np.maximum(1 - threshold, 1e-9),
                       0.5 * p / np.maximum(threshold, 1e-9))  # monotone, threshold -> 0.5: accuracy at 0.5
    score = lambda q: classification_metrics(labels, np.stack([1 - q, q], 1), "binary", list(CLASSES),  # noqa: E731
                                             groups=[subject for _, subject in keys], n_boot=2000)
    return {"accuracy": score(np.clip(decided, 0, 1))["accuracy"], "auc": score(p)["auc"]}


def fmt(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--time-budget", default="120s")
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    oasis = args.data_dir / "multimodal" / "oasis1_three_views"
    if not oasis.is_dir():
        sys.exit(f"{oasis} is missing: point --data-dir (or MEDLENS_DATA_DIR) at the shared datasets folder")
    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="medlens_multimodal_"))
    runs.mkdir(parents=True, exist_ok=True)
    rows = subjects(oasis)
    truth = {r["ID"]: r["label"] for r in rows}
    results: dict[str, dict] = {}
    for source in args.sources:
        oof, fold_scores, seconds = {}, [], 0.0
        clinical_only: dict[str, float] = {}
        for fold in args.folds:
            run = runs / f"{source}_fold{fold}"
            seconds += run_fold(write_manifest(rows, source, fold, runs), oasis, run, args.time_budget,
                                args.overrides)
            fold_probs = {(fold, _subject(i)): p for i, p in predictions(run).items()}
            oof.update(fold_probs)
            fold_scores.append(pooled(fold_probs, truth))
            if source == "all":
                clinical_only.update({(fold, _subject(i)): p for i, p in predictions(
                    run, "sources_test.csv", "clinical values only", threshold=0.5).items()})
            print(f"{source} fold {fold}: AUC {fold_scores[-1]['auc']['value']:.3f} "
                  f"ACC {fold_scores[-1]['accuracy']['value']:.3f} ({seconds:.0f} s so far)", flush=True)
        results[source] = {"pooled": pooled(oof, truth), "folds": fold_scores, "seconds": seconds}
        if clinical_only:
            results["clinical only"] = {"pooled": pooled(clinical_only, truth), "folds": [], "seconds": 0.0}
    report(results, args, runs)


def _subject(case_id: str) -> str:
    """The subject id of a case id (the manifest's subject column, or an image path naming it)."""
    name = Path(case_id).name
    return name[: name.index("_MR1") + 4] if "_MR1" in name else case_id


def report(results: dict, args, runs: Path) -> None:
    print(f"\nOASIS-1, CDR > 0 against CDR 0; folds {' '.join(map(str, args.folds))} of folds.csv; "
          f"--time-budget {args.time_budget} per fold {' '.join(args.overrides)}; runs in {runs}")
    print(f"{'source':<16}{'accuracy (pooled, 95% CI)':<28}{'AUC (pooled, 95% CI)':<28}"
          f"{'mean fold ACC':>14}{'mean fold AUC':>14}{'published ACC':>15}{'time':>8}")
    for source, r in results.items():
        mean_acc, mean_auc = (statistics.mean(f[k]["value"] for f in r["folds"]) if r["folds"] else float("nan")
                              for k in ("accuracy", "auc"))
        published = PUBLISHED_ACC.get(source)
        print(f"{source:<16}{fmt(r['pooled']['accuracy']):<28}{fmt(r['pooled']['auc']):<28}{mean_acc:>14.3f}"
              f"{mean_auc:>14.3f}"
              f"{(f'{published:.3f}' if published else '-'):>15}{r['seconds']:>7.0f}s")
    print("target (issue 16): everything fused (all) accuracy >= 0.80 and AUC >= 0.85, above the best single source")
    (runs / "multimodal.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
