"""Federated training on one machine: federated beside local-only and pooled, Flower's overhead, DP's cost.

    python benchmarks/federated.py [--data-dir DIR] [--runs-dir DIR] [--seed 0] [--quick]
                                   [--only pneumonia hippocampus dp overhead]
                                   [--time-budget 10m] [--rounds R] [--local-epochs E] [--dp-rounds R]
                                   [--hippocampus-budget 5m]

Every federation is ``medlens federate --sites ...`` in a fresh process: a Flower SuperLink, one SuperNode per
site and the ServerApp on loopback, the code path real sites run. At its end ``federate`` trains each site's
local-only model and the pooled model with the same plan and budget (rounds x local epochs epochs of their own
data) and scores the three on every site's own test split and on all test cases, with 95% bootstrap CIs
(:mod:`medlens.federated.compare`, ``RUN/federated/comparison.json``). The sites are written once under
``RUNS/federated-sites/`` (:mod:`medlens.federated.sites`, never in the repository) and reused.

1. ``pneumonia``: PneumoniaMNIST (28 px, official splits) in 4 sites by a seeded Dirichlet(0.5) draw over
   labels, each official split divided in the same shares. Test AUC of the federated model (the plan's
   strategy), the mean of the local-only models and the pooled model, per site and on the full test split.
   Targets: federated AUC >= 0.96 on the full test split, at or above the mean local-only AUC, and within 0.02
   of pooled.
2. ``overhead``: Flower's overhead on run 1: the median wall time of a federated round (``history.json``)
   beside the same local epochs run directly (:class:`medlens.federated.local.SiteTrainer` in this process, no
   Flower, each site in turn; the sites of a round train side by side, so the round is compared with the
   slowest site), over the fit alone and over data preparation + fit (a Flower ClientApp process per message
   prepares its site's data every round).
3. ``hippocampus``: the Decathlon Hippocampus set (260 MRI crops) dealt by patient into 3 sites, a short CPU
   budget. Dice per structure, federated beside pooled. Target: federated within 0.03 of pooled on each.
4. ``dp``: run 1 again with DP-SGD at epsilon 8 per site (``--dp-epsilon 8``, the same rounds x local epochs): the
   AUC cost on the full test split, and the (epsilon, delta) each site spent. DP-SGD's per-example gradients are
   slow on a CPU: ``--dp-rounds R`` runs R rounds instead, beside run 1's schedule without DP for R rounds.

Printed beside ours: the FLamby figures (../shared/REFERENCES.md: pooled vs FedAvg on real multi-site data,
where FedAvg ends well below pooled) and nnU-Net's Hippocampus Dice. ``--quick`` runs every part at a toy size
(1 round, 20 s budgets) to check the script end to end; its figures mean nothing.
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
PARTS = ("pneumonia", "overhead", "hippocampus", "dp")
ALL_SITES = "all sites"

# ../shared/REFERENCES.md, "Federated learning" (FLamby, NeurIPS 2022 datasets track, results files of its repository)
FLAMBY = {"Fed-IXI (3 sites, brain MRI segmentation, Dice)": {"pooled": 0.987, "FedAvg": 0.787, "Scaffold": 0.791},
          "Fed-Heart-Disease (4 sites, accuracy)": {"pooled": 0.776, "FedAvg": 0.654}}
NNUNET_HIPPOCAMPUS = {"anterior": 0.8975, "posterior": 0.8807}  # nnU-Net 3d_fullres, 5-fold CV (REFERENCES.md)
TARGET_AUC, TARGET_GAP, TARGET_DICE_GAP = 0.96, 0.02, 0.03


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "benchmarks" / "runs")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seed", type=int, default=0, help="the Dirichlet / site draw")
    parser.add_argument("--time-budget", default="10m", help="PneumoniaMNIST federation's training budget")
    parser.add_argument("--hippocampus-budget", default="5m", help="Hippocampus federation's training budget")
    parser.add_argument("--rounds", type=int, help="rounds (default: the plan's)")
    parser.add_argument("--local-epochs", type=int,
                        help="PneumoniaMNIST's local epochs per round (default: the plan's)")
    parser.add_argument("--dp-rounds", type=int, help="rounds of the DP run (default: run 1's); fewer also runs "
                        "run 1's schedule without DP for as many rounds, to compare with")
    parser.add_argument("--quick", action="store_true", help="toy size: 1 round, 20 s budgets (checks the script)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.time_budget, args.hippocampus_budget = 1, "20s", "20s"
    runs = args.runs_dir / ("federated-quick" if args.quick else "federated")
    ok = True
    if {"pneumonia", "overhead", "dp"} & set(args.only):
        sites = pneumonia_sites(args)
        base = federate(sites, runs / "pneumonia", args.time_budget, args.rounds, local_epochs=args.local_epochs)
        if "pneumonia" in args.only:
            ok &= report_pneumonia(base, sites)
        if "overhead" in args.only:
            overhead(base, sites)
        if "dp" in args.only:
            federation = read_json(base / "run.json")["federation"]
            rounds, local = args.dp_rounds or federation["rounds_run"], federation["local_epochs"]
            twin = base
            if rounds != federation["rounds_run"]:  # the same schedule without DP, to compare with
                twin = federate(sites, runs / f"pneumonia-{rounds}rounds", args.time_budget, rounds,
                                local_epochs=local, compare=False)
            private = federate(sites, runs / f"pneumonia-dp-{rounds}rounds", args.time_budget, rounds,
                               local_epochs=local, dp_epsilon=8.0, compare=False)
            report_dp(base, twin, private, sites)
    if "hippocampus" in args.only:
        ok &= hippocampus(args, runs)
    print_flamby()
    return 0 if ok else 1


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def pneumonia_sites(args):
    from medlens.federated.sites import dirichlet_sites

    npz = args.data_dir / "medmnist" / "pneumoniamnist.npz"
    if not npz.exists():
        raise SystemExit(f"{npz} not found; set --data-dir or MEDLENS_DATA_DIR (see ../shared/datasets/MANIFEST.md)")
    out = args.runs_dir / "federated-sites" / f"pneumoniamnist-4-dirichlet0.5-seed{args.seed}"
    sites = dirichlet_sites(npz, 4, 0.5, args.seed, out)
    print(f"\nPneumoniaMNIST in 4 sites, Dirichlet(0.5) over labels, seed {args.seed} ({out}); cases per split "
          "(normal / pneumonia):")
    for name, site in sites.doc["sites"].items():
        counts = site["counts"]
        print(f"  {name}: " + "  ".join(f"{s} {counts[s].get('normal', 0)}/{counts[s].get('pneumonia', 0)}"
                                        for s in ("train", "val", "test")))
    return sites


def federate(sites, out: Path, budget: str, rounds: int | None, *, dp_epsilon: float | None = None,
             compare: bool = True, local_epochs: int | None = None) -> Path:
    """``medlens federate`` in a fresh process (skipped when ``out`` already holds its finished result)."""
    finished = (out / "run.json").exists() and read_json(out / "run.json").get("status") == "finished"
    if finished and (not compare or (out / "federated" / "comparison.json").exists()):
        print(f"reusing {out} (remove it to run again)")
        return out
    command = [sys.executable, "-m", "medlens.cli", "federate", "--sites", *map(str, sites.sources.values()),
               "--time-budget", budget, "--out", str(out)]
    command += (["--rounds", str(rounds)] if rounds else []) + (["--dp-epsilon", str(dp_epsilon)] if dp_epsilon else [])
    command += [] if compare else ["--no-compare"]
    command += ["--local-epochs", str(local_epochs)] if local_epochs else []
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"federate took {time.perf_counter() - started:.0f} s (planning, federation, calibration"
          + (", local-only and pooled models, evaluation)" if compare else ")"))
    return out


def value(doc: dict, model: str, test: str, metric: str) -> dict | None:
    return next((r for r in doc["rows"] if (r["model"], r["test"], r["metric"]) == (model, test, metric)), None)


def cell(row: dict | None) -> str:
    return "-" if row is None else f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def report_pneumonia(run: Path, sites) -> bool:
    from medlens.federated.compare import rounds_text

    doc = read_json(run / "federated" / "comparison.json")
    print(f"\n== 1. PneumoniaMNIST, 4 Dirichlet(0.5) sites: test AUC (95% CI), {doc['strategy']}, "
          f"{rounds_text(doc['budget'])}; local-only and pooled: "
          f"{doc['budget']['epochs']} epochs ==")
    print_epochs(doc)
    print_kept(run)
    print_test_by_round(run, sites)
    print(f"{'test split':<16} {'federated':>22} {'pooled':>22} {'local (this site)':>22} {'local mean':>10}")
    for test, n in doc["tests"].items():
        local = [r["value"] for r in doc["rows"] if r["model"].startswith("local ") and r["test"] == test
                 and r["metric"] == "auc"]
        print(f"{f'{test} ({n})':<16} {cell(value(doc, 'federated', test, 'auc')):>22} "
              f"{cell(value(doc, 'pooled', test, 'auc')):>22} {cell(value(doc, f'local {test}', test, 'auc')):>22} "
              f"{statistics.fmean(local):10.3f}")
    s = doc["summary"]["auc"]
    fed, pooled, local = s["federated"], s["pooled"], s["local_mean_all_sites"]
    wins = sum(value(doc, "federated", t, "auc")["value"] >= value(doc, f"local {t}", t, "auc")["value"]
               for t in doc["sites"])
    checks = {f"federated AUC {fed:.3f} >= {TARGET_AUC}": fed >= TARGET_AUC,
              f"federated {fed:.3f} >= mean local-only {local:.3f} (full test split)": fed >= local,
              f"federated {fed:.3f} within {TARGET_GAP} of pooled {pooled:.3f}": fed >= pooled - TARGET_GAP}
    for text, passed in checks.items():
        print(f"  target: {text}: {'PASS' if passed else 'FAIL'}")
    print(f"  per site, the federated model at or above that site's own local-only model on its test split: "
          f"{wins} of {len(doc['sites'])}; mean local-only on its own site's test split: "
          f"{s['local_mean_own_site']:.3f}")
    return all(checks.values())


def print_test_by_round(run: Path, sites) -> None:
    """Each round's global checkpoint scored on the full test split: how the test figure moves while the round kept is
    chosen on validation (printed only; nothing is chosen from it). FedBN's averaged batch norm, as the run deploys."""
    import torch

    from medlens.federated.compare import ALL_SITES, evaluate_on, headline, test_sets
    from medlens.federated.server import load_weights
    from medlens.runs import open_run
    from medlens.tasks import load_model

    folder = open_run(run)
    config = folder.read_config()
    tests, _ = test_sets(sites.sources, config, run / "federated" / "compare", log=lambda *a: None)
    model, aucs = load_model(folder, config), []
    for number in range(1, len(read_json(run / "federated" / "history.json")) + 1):
        weights = load_weights(run, {"weights": f"global_round_{number}.safetensors", "round": number})
        model.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
        aucs.append(headline(evaluate_on(model, folder, config, tests[ALL_SITES], 50))["auc"]["value"])
    print("test AUC by round, full test split (not used for any choice): "
          + ", ".join(f"{n} {auc:.3f}" for n, auc in enumerate(aucs, 1)))


def print_kept(run: Path) -> None:
    """Which round's global model the federation kept, by the sites' pooled validation aggregates."""
    kept = read_json(run / "run.json").get("federation", {}).get("kept_round")
    if kept:
        scores = ", ".join(f"{r} {v:.4f}" for r, v in sorted(kept["scores"].items(), key=lambda rv: int(rv[0])))
        print(f"federated model kept: round {kept['round']} (pooled validation score by round: {scores})")
    else:
        print("federated model kept: the last round's (no validation aggregates)")


def print_epochs(doc: dict) -> None:
    """What each model actually trained: the local-only and pooled runs keep their plan's budget and early stopping."""
    print("epochs run: " + ", ".join(f"{label} {m.get('epochs_run')}"
                                     + (f" ({m['stopped_by'].replace('_', ' ')}, {m['train_seconds']:.0f} s)"
                                        if m.get("stopped_by") else "") for label, m in doc["models"].items()))


def overhead(run: Path, sites) -> None:
    """Median federated round wall time against each site's local epochs run directly (no Flower)."""
    from medlens.config import read_plan
    from medlens.federated.local import SiteTrainer, initial_weights
    from medlens.federated.plan import read_federation

    history = read_json(run / "federated" / "history.json")
    config, plan = read_plan(run / "plan.yaml")[0], read_federation(run / "federation.yaml")
    rounds = [h["seconds"] for h in history  # the rounds of the final plan's local epochs (round 1 may differ)
              if h.get("seconds") is not None and h.get("local_epochs", plan.local_epochs) == plan.local_epochs]
    weights = initial_weights(config, plan)
    direct = {}
    for name, source in sites.sources.items():
        started = time.perf_counter()
        site = SiteTrainer(config, plan, source, site=name, log=lambda *a: None)
        prepared = time.perf_counter() - started
        started = time.perf_counter()
        site.fit(weights, round=1)
        direct[name] = (prepared, time.perf_counter() - started)
    slowest = max(fit for _, fit in direct.values())
    slowest_whole = max(prepared + fit for prepared, fit in direct.values())
    median, in_turn = statistics.median(rounds), sum(fit for _, fit in direct.values())
    print(f"\n== 2. Flower overhead: a federated round vs the same {plan.local_epochs} local epoch(s) run directly "
          f"({os.cpu_count()} CPUs; the sites of a round share them) ==")
    for name, (prepared, fit) in direct.items():
        print(f"  {name}: direct fit {fit:6.1f} s, data prepared in {prepared:.1f} s")
    print(f"  federated round: median {median:.1f} s over {len(rounds)} round(s) (min {min(rounds):.1f}, max "
          f"{max(rounds):.1f}); slowest site run directly {slowest:.1f} s, all sites in turn "
          f"{in_turn:.1f} s")
    print(f"  overhead of a round over its slowest site: {median - slowest:+.1f} s ({median / slowest:.2f}x) over the "
          f"fit alone; {median - slowest_whole:+.1f} s ({median / slowest_whole:.2f}x) over data preparation + fit "
          "(Flower starts a new ClientApp process per message, which hands the work to the site's warm worker; the "
          "site prepares its data and scores the global model again each round)")
    print(f"  here every site shares this machine's {os.cpu_count()} CPUs, so a round's sites cannot train faster "
          f"than all of them in turn ({in_turn:.1f} s of fitting): the round's exchange is {median - in_turn:+.1f} s "
          f"({median / in_turn:.2f}x) over that")


def report_dp(base: Path, twin: Path, private: Path, sites) -> None:
    from medlens.federated.compare import score_model, test_sets
    from medlens.runs import RunFolder

    doc = read_json(base / "federated" / "comparison.json")
    tests, _ = test_sets(sites.sources, RunFolder(private).read_config(), private / "federated" / "compare",
                         log=lambda *a: None)

    def aucs(label: str, run: Path) -> dict:
        return {r["test"]: r for r in score_model(label, RunFolder(run), tests, None) if r["metric"] == "auc"}

    with_dp = aucs("federated DP", private)
    without = aucs("federated", twin) if twin != base else {t: value(doc, "federated", t, "auc") for t in doc["tests"]}
    federation = read_json(private / "run.json")["federation"]
    print(f"\n== 4. Differential privacy: DP-SGD at epsilon 8 per site, {federation['rounds']} rounds x "
          f"{federation['local_epochs']} local epochs, beside the same schedule without DP: test AUC (95% CI) ==")
    for test in doc["tests"]:
        print(f"  {test:<12} without DP {cell(without[test]):>22}   with DP {cell(with_dp[test]):>22}   cost "
              f"{without[test]['value'] - with_dp[test]['value']:+.3f}")
    for name, site in (federation.get("sites") or {}).items():
        dp = site.get("dp") or {}
        print(f"  {name}: spent epsilon {dp.get('epsilon')}, delta {dp.get('delta')} in {site.get('rounds')} rounds")


def hippocampus(args, runs: Path) -> bool:
    from medlens.federated.sites import split_sites_even

    data = args.data_dir / "seg3d" / "Task04_Hippocampus"
    if not data.exists():
        print(f"hippocampus: {data} not found; set --data-dir or MEDLENS_DATA_DIR")
        return False
    sites = split_sites_even(data, 3, args.seed, args.runs_dir / "federated-sites" / f"hippocampus-3-seed{args.seed}")
    run = federate(sites, runs / "hippocampus", args.hippocampus_budget, args.rounds)
    doc = read_json(run / "federated" / "comparison.json")
    names = sites.doc["class_names"]  # the Decathlon label names; the site manifests number them label_1, label_2
    print(f"\n== 3. Hippocampus, 3 sites by patient: Dice (95% CI), {doc['budget']['rounds']} rounds x "
          f"{doc['budget']['local_epochs']} local epochs ==")
    print_epochs(doc)
    ok = True
    for index, name in enumerate(names[1:], start=1):
        metric = f"dice label_{index}" if f"dice label_{index}" in doc["summary"] else f"dice {name}"
        fed, pooled = value(doc, "federated", ALL_SITES, metric), value(doc, "pooled", ALL_SITES, metric)
        passed = fed["value"] >= pooled["value"] - TARGET_DICE_GAP
        ok &= passed
        print(f"  {name:<10} federated {cell(fed)}  pooled {cell(pooled)}  nnU-Net (5-fold CV) "
              f"{NNUNET_HIPPOCAMPUS.get(name.lower(), float('nan')):.3f}  target within {TARGET_DICE_GAP} of pooled: "
              f"{'PASS' if passed else 'FAIL'}")
        for test in doc["sites"]:
            fed, pooled, local = (value(doc, m, test, metric) for m in ("federated", "pooled", f"local {test}"))
            print(f"    {test}: federated {cell(fed)}  pooled {cell(pooled)}  local {cell(local)}")
    return ok


def print_flamby() -> None:
    print("\nFLamby (NeurIPS 2022 datasets track; ../shared/REFERENCES.md): pooled vs federated, real multi-site data")
    for name, figures in FLAMBY.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
              + f"; FedAvg below pooled by {figures['pooled'] - figures['FedAvg']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
