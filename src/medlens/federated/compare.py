"""Federated, local-only and pooled models side by side, each on every site's own test split, with 95% CIs.

Naive federated averaging can end below training at one site alone when sites differ (non-IID labels), so a
federated run is only worth its trouble if it beats what each site could do by itself and comes near what
pooling the data would give (FLamby, NeurIPS 2022 datasets track, reports the three side by side).
:func:`compare_sites` trains, with medlens' ordinary engine (:func:`medlens.engine.train.train`) and the
federated run's own plan (``plan.yaml``: the same network, preprocessing, optimiser and seed):

- each site's **local-only** model on that site's training split alone, for the local epochs of every round run
  (as many passes over its data as the site made in the federation);
- the **pooled** model on every site's training split together, for as many epochs: the sites' total work.

Then the three kinds of model are scored by the task's own evaluation (:meth:`medlens.tasks.Task.evaluate`,
what ``medlens evaluate`` runs: AUC for classification, Dice per structure for segmentation, percentile
bootstrap CIs over cases or patients) on every site's test split and on all sites' test cases pooled.
Each site keeps the splits medlens gives its data (its fixed ``split`` column, else medlens' split with the
plan's seed, as the site trained on it); the pooled training data is the union of the sites' training splits,
so no model ever trains on a case of a test split.

Written into the run folder::

    RUN/federated/comparison.csv    one row per model, test split and metric: value, CI, cases
    RUN/federated/comparison.json   the same, the budget, and the headline summary
    RUN/federated/compare/          the local-only and pooled run folders, the pooled manifest
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from medlens._files import read_json, write_json_atomic, write_text_atomic
from medlens.config import Config
from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.prepared import resolve_splits
from medlens.errors import ConfigError, DatasetError
from medlens.federated.plan import read_federation
from medlens.federated.result import ALL_SITES  # the name of the pooled test split in the table
from medlens.federated.summaries import site_splits
from medlens.runs import RunFolder, json_safe, now, open_run
from medlens.tasks import EvaluateOptions, load_model, task_for

FEDERATION = "federation.yaml"
CARRIED = ("calibration", "postprocess", "clinical")  # what a model's evaluation reads from its run folder


@dataclass(frozen=True)
class TestSet:
    """A test split to score models on: the data ``source`` (with ``image_root``) and its splits document."""

    source: Path
    image_root: str
    splits: dict
    n_cases: int


def compare_sites(run, sites, *, pooled: bool = True, n_bootstrap: int | None = None, log=print) -> dict:
    """Train the local-only and pooled models and score them beside the federated one (see module docstring).

    Args:
        run: the federated run folder (``plan.yaml``, ``weights.pt``, ``federation.yaml``).
        sites: ``{site name: data source}``, or a list of sources (named by folder name or CSV stem).
        pooled: also train the pooled model (all sites' training data on this machine).
        n_bootstrap: bootstrap resamples of each CI (``None``: the plan's ``evaluate.n_bootstrap``).

    Returns:
        The comparison document (``comparison.json``): ``rows`` (model, test, metric, value, ci_low, ci_high,
        n_cases), ``summary``, ``budget``, ``models``.

    Raises:
        ConfigError: not a finished run folder, no ``federation.yaml``, fewer than two sites, or a task whose
            evaluation has no AUC or Dice.
        DatasetError: a site's data cannot be opened, or its images are not files (a pooled manifest lists files).
    """
    run = open_run(run)
    config, federation = run.read_config(), _read_federation(run)
    sources = site_sources(sites)
    work = run.root / "federated" / "compare"
    info = run.read_info()
    ran = info.get("federation") or {}
    rounds = ran.get("rounds_run") or federation.rounds  # a budget may stop early
    epochs = info.get("epochs_run") or rounds * federation.local_epochs  # round 1's local epochs may differ (re-plan)
    tests, pooled_csv = test_sets(sources, config, work, log)
    models = {"federated": run}
    for name, source in sources.items():
        models[f"local {name}"] = train_alone(source, run, work / f"local_{name}", epochs, log=log)
    if pooled:
        models["pooled"] = train_alone(pooled_csv, run, work / "pooled", epochs, image_root=tests[ALL_SITES].image_root,
                                       log=log)
    rows = []
    for label, model_run in models.items():
        log(f"compare: scoring the {label} model on {len(tests)} test split(s)")
        norms = site_norms(run, sources) if label == "federated" and federation.strategy == "fedbn" else {}
        rows += score_model(label, model_run, tests, n_bootstrap, own_layers=norms)
    doc = {"medlens_comparison_version": 1, "run": str(run.root), "created": now(), "task": config.dataset.task,
           "strategy": federation.strategy, "dp_epsilon": federation.dp_epsilon,
           "federated_on_each_site": ("with that site's own batch-norm layers (FedBN), the global average on all sites"
                                      if federation.strategy == "fedbn" else "the global model"),
           "budget": {"epochs": epochs, "rounds": rounds, "local_epochs": federation.local_epochs,
                      "local_epochs_by_round": ran.get("local_epochs_by_round"),
                      "rule": "each local-only and the pooled model: the local epochs of every round run, of its data"},
           "sites": list(sources), "tests": {n: t.n_cases for n, t in tests.items()},
           "models": {label: _trained(m) for label, m in models.items()}, "rows": rows,
           "summary": summarize(rows, list(sources))}
    write_json_atomic(run.root / "federated" / "comparison.json", json_safe(doc))
    write_text_atomic(run.root / "federated" / "comparison.csv", comparison_csv(rows))
    log(format_comparison(doc))
    log(f"comparison written to {run.root / 'federated' / 'comparison.csv'} and comparison.json")
    return doc


def _read_federation(run: RunFolder):
    path = run.root / FEDERATION
    if not path.is_file():
        raise ConfigError(f"{run.root}: no {FEDERATION}; compare_sites compares a federated run (the folder "
                          "`medlens federate` or `medlens fl server` wrote)")
    return read_federation(path)


def site_sources(sites) -> dict[str, Path]:
    """``{name: source}`` from a mapping, or from a list of sources named by folder name / CSV stem.

    Raises:
        ConfigError: fewer than two sites, or two sites of one name.
    """
    if isinstance(sites, dict):
        named = {str(k): Path(v) for k, v in sites.items()}
    else:
        paths = [Path(s) for s in sites]
        named = {p.name.removesuffix(p.suffix) if p.is_file() else p.name: p for p in paths}
        if len(named) < len(paths):
            raise ConfigError(f"sites {', '.join(map(str, paths))}: two share a name; pass {{name: source}}")
    if len(named) < 2:
        raise ConfigError(f"compare_sites needs at least two sites, got {len(named)}")
    return named


def test_sets(sources: dict[str, Path], config: Config, work: Path, log=print) -> tuple[dict[str, TestSet], Path]:
    """Every site's splits (as medlens gives its data) and the pooled manifest of all sites' cases.

    Returns:
        ``({site: TestSet, ALL_SITES: TestSet}, pooled manifest)``; the pooled manifest keeps every case's
        split, with paths relative to the sites' common folder (its ``image_root``).
    """
    sites = _site_rows(sources, config.train.seed)
    tests = {name: TestSet(source, "", splits, len(splits["test"])) for name, (source, splits, _) in sites.items()}
    pooled, root = _write_pooled(sites, work / "pooled.csv")
    dataset = open_dataset(pooled, image_root=root)
    splits = resolve_splits(dataset, replace(config, dataset=replace(config.dataset, splits="")), None)
    tests[ALL_SITES] = TestSet(pooled, str(root), splits, len(splits["test"]))
    log(f"compare: {len(sources)} sites, {tests[ALL_SITES].n_cases} test cases in all; pooled manifest {pooled}")
    return tests, pooled


def pooled_manifest(sources: dict[str, Path], seed: int, path: Path) -> tuple[Path, Path]:
    """Write ``path``: one manifest of every site's cases, each in the split its site gives it.

    Returns:
        ``(path, image root)``: the manifest, and the folder its image paths are relative to (``--image-root``).

    Raises:
        DatasetError: a site's data cannot be opened, or its cases are not one image file each.
    """
    return _write_pooled(_site_rows(sources, seed), path)


def _write_pooled(sites: dict[str, tuple[Path, dict, list[dict]]], path: Path) -> tuple[Path, Path]:
    rows = [row for _, _, site_rows in sites.values() for row in site_rows]
    root = Path(os.path.commonpath([str(Path(v).parent) for r in rows for k, v in r.items() if _is_image(k)]))
    write_text_atomic(path, _manifest_text(rows, root))
    return path, root


def _site_rows(sources: dict[str, Path], seed: int) -> dict[str, tuple[Path, dict, list[dict]]]:
    """``{site: (source, its splits as the site trained, its pooled manifest rows)}``."""
    sites = {}
    for name, source in sources.items():
        dataset = open_dataset(source)
        splits = site_splits(dataset, inspect_dataset(dataset), seed=seed)
        sites[name] = (source, splits, _pooled_rows(name, dataset, splits))
    return sites


def _pooled_rows(site: str, dataset, splits: dict) -> list[dict]:
    """The site's cases as pooled manifest rows: file, label name or mask, split, patient (prefixed by the site)."""
    fold = splits["folds"][0]
    split_of = {i: s for s, ids in (("train", fold["train"]), ("val", fold["val"]), ("test", splits["test"]))
                for i in ids}
    rows = []
    for case in dataset.cases:
        if case.case_id not in split_of:
            continue  # left out of every split (unreadable, skipped)
        if case.index is not None or (len(case.images) != 1 and len(case.views) != len(case.images)):
            raise DatasetError(f"{dataset.root}: case {case.case_id} is not one image file or named views; the "
                               "pooled model is trained from a manifest of the sites' files (write sites with "
                               "medlens.federated.sites, one image file per case)")
        images = ({f"image:{v}": str(Path(p).resolve()) for v, p in zip(case.views, case.images, strict=True)}
                  if case.views else {"image": str(Path(case.images[0]).resolve())})  # views: files or series folders
        row = {**images, "split": split_of[case.case_id], "patient_id": f"{site}/{case.patient_id or case.case_id}",
               **case.clinical}
        if case.mask is not None:
            row["mask"] = str(Path(case.mask).resolve())
        else:
            row["label"] = dataset.class_names[case.label]
        rows.append(row)
    return rows


def _manifest_text(rows: list[dict], root: Path) -> str:
    """The pooled manifest: image (or ``image:VIEW``) columns, label / mask, patient and split, then the clinical
    columns; paths relative to ``root``."""
    named = list(dict.fromkeys(k for r in rows for k in r))
    fixed = ("label", "mask", "patient_id", "split")
    columns = [c for c in named if _is_image(c)] + [c for c in fixed if c in named] + \
        [c for c in named if not _is_image(c) and c not in fixed]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: os.path.relpath(v, root) if _is_image(k) or k == "mask" else v for k, v in row.items()})
    return buffer.getvalue()


def _is_image(column: str) -> bool:
    return column == "image" or column.startswith("image:")


def train_alone(source: Path, federated: RunFolder, out: Path, epochs: int, *, image_root: str = "",
                log=print) -> RunFolder:
    """One ordinary ``medlens train`` of ``source`` with the federated run's plan for ``epochs`` epochs.

    A finished run already at ``out`` is reused (the comparison can be repeated without training again).
    """
    from medlens.config import read_plan, render_plan
    from medlens.engine.train import train

    if (read_json(out / "run.json") or {}).get("status") == "finished":
        log(f"compare: reusing {out}")
        return RunFolder(out)
    if out.exists():
        shutil.rmtree(out)  # an unfinished earlier attempt
    config, reasons = read_plan(federated.plan)  # its data: what the federated model was calibrated on
    config = replace(config, dataset=replace(config.dataset, source=str(source), image_root=image_root),
                     clinical=replace(config.clinical, standardise=()))  # its own training statistics, as alone
    plan = out.parent / f"{out.name}.plan.yaml"
    write_text_atomic(plan, render_plan(config, reasons, f"the federated run's plan, for {out.name}"))
    log(f"compare: training {out.name} on {source} ({epochs} epochs, the federated run's plan)")
    return train(source, plan=plan, overrides=[f"train.max_epochs={epochs}"], out=out, image_root=image_root or None,
                 progress_bar=False, log=lambda *a: None)


def site_norms(run: RunFolder, sources: dict) -> dict[str, dict]:
    """``{site: its own batch-norm arrays}`` a FedBN run kept from each site's last update (``{}`` otherwise)."""
    from medlens.federated.server import load_site_norms

    return {name: arrays for name in sources if (arrays := load_site_norms(run.root, name)) is not None}


def score_model(label: str, model_run: RunFolder, tests: dict[str, TestSet], n_bootstrap: int | None, *,
                own_layers: dict[str, dict] | None = None) -> list[dict]:
    """Rows ``{model, test, metric, value, ci_low, ci_high, n_cases}`` of one model on every test split.

    Args:
        own_layers: ``{test split: {state_dict key: array}}`` replacing the model's on that split (FedBN: the
            site's own batch norm, as the site itself predicts).
    """
    config = model_run.read_config()
    import copy

    import torch

    shared = load_model(model_run, config)  # a DP run's plan names its group norm (model.norm)
    rows = []
    for name, test in tests.items():
        model = shared
        if (own_layers or {}).get(name):
            model = copy.deepcopy(shared)
            state = model.state_dict()
            state.update({k: torch.as_tensor(v).to(state[k].dtype) for k, v in own_layers[name].items()})
            model.load_state_dict(state)
        doc = evaluate_on(model, model_run, config, test, n_bootstrap)
        for metric, value in headline(doc).items():
            rows.append({"model": label, "test": name, "metric": metric, "value": value["value"],
                         "ci_low": value["ci_low"], "ci_high": value["ci_high"], "n_cases": doc["n_cases"]})
    return rows


def evaluate_on(model, model_run: RunFolder, config: Config, test: TestSet, n_bootstrap: int | None) -> dict:
    """The task's evaluation of ``model`` on ``test``'s test split: a temporary run folder holding the model's
    calibration (and post-processing) and the test data's splits, with the plan pointed at that data."""
    dataset = replace(config.dataset, source=str(test.source), image_root=test.image_root, splits="")
    view_config = replace(config, dataset=dataset)
    with tempfile.TemporaryDirectory(prefix="medlens-compare-") as folder:
        view = RunFolder(Path(folder))
        for name in CARRIED:
            if getattr(model_run, name).is_file():
                shutil.copyfile(getattr(model_run, name), getattr(view, name))
        write_json_atomic(view.splits, test.splits)
        options = EvaluateOptions(split="test", n_bootstrap=n_bootstrap, baseline=False)
        return task_for(view_config).evaluate(view, view_config, model, options, lambda *a: None).doc


def headline(doc: dict) -> dict[str, dict]:
    """The figures compared: AUC and balanced accuracy (classification; for two classes at the threshold the model
    predicts with, chosen at calibration), Dice per structure and mean (segmentation), each ``{"value", "ci_low",
    "ci_high"}``.

    Raises:
        ConfigError: a metrics document with neither.
    """
    metrics = doc["metrics"]
    if "auc" in metrics:
        decided = doc.get("metrics_youden") or metrics  # binary: the calibrated threshold `medlens predict` applies
        return {"auc": metrics["auc"], "balanced_accuracy": decided["balanced_accuracy"]}
    if "mean" in metrics and "dice" in metrics["mean"]:
        dice = {f"dice {name}": values["dice"] for name, values in metrics["per_class"].items()}
        return {**dice, "dice mean": metrics["mean"]["dice"]}
    raise ConfigError(f"{doc.get('task')} runs: compare_sites compares classification (AUC) and segmentation "
                      "(Dice) models")


def summarize(rows: list[dict], sites: list[str]) -> dict:
    """Per metric: the federated and pooled models on all test cases, and the local-only models' mean, on their
    own site's test split and on all test cases."""
    value = {(r["model"], r["test"], r["metric"]): r["value"] for r in rows}
    summary = {}
    for metric in dict.fromkeys(r["metric"] for r in rows):
        own = [value[f"local {s}", s, metric] for s in sites if (f"local {s}", s, metric) in value]
        everywhere = [value[f"local {s}", ALL_SITES, metric] for s in sites if (f"local {s}", ALL_SITES, metric)
                      in value]
        summary[metric] = {"federated": value.get(("federated", ALL_SITES, metric)),
                           "pooled": value.get(("pooled", ALL_SITES, metric)),
                           "local_mean_own_site": _mean(own), "local_mean_all_sites": _mean(everywhere)}
    return summary


def _mean(values: list) -> float | None:
    finite = [v for v in values if v is not None and v == v]
    return statistics.fmean(finite) if finite else None


def _trained(run: RunFolder) -> dict:
    info = read_json(run.info) or {}
    return {"folder": str(run.root), "epochs_run": info.get("epochs_run"), "stopped_by": info.get("stopped_by"),
            "train_seconds": info.get("train_seconds")}


def comparison_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["model", "test", "metric", "value", "ci_low", "ci_high", "n_cases"],
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def rounds_text(budget: dict) -> str:
    """``8 rounds x 4 local epochs``, or ``5 rounds: 4 local epochs, then 10`` after a re-plan."""
    by_round = budget.get("local_epochs_by_round") or []
    if len(set(by_round)) > 1:
        return f"{budget['rounds']} rounds: {by_round[0]} local epochs, then {by_round[-1]}"
    return f"{budget['rounds']} rounds x {budget['local_epochs']} local epochs"


def format_comparison(doc: dict) -> str:
    """One table per metric: a row per test split; federated, pooled, this site's local model, the local mean."""
    found = {(r["model"], r["test"], r["metric"]): r for r in doc["rows"]}
    lines = [f"federated ({doc['strategy']}{', DP epsilon ' + str(doc['dp_epsilon']) if doc['dp_epsilon'] else ''})"
             f" vs local-only vs pooled, {doc['budget']['epochs']} epochs each ({rounds_text(doc['budget'])}); 95% "
             "bootstrap CIs"]
    for metric in doc["summary"]:
        lines.append(f"\n{metric:<22} {'federated':>22} {'pooled':>22} {'local (this site)':>22} {'local (mean)':>12}")
        for test, n in doc["tests"].items():
            cells = [_cell(found.get((model, test, metric))) for model in ("federated", "pooled", f"local {test}")]
            mean = _mean([found[k]["value"] for k in found if k[0].startswith("local ") and k[1:] == (test, metric)])
            lines.append(f"{f'{test} ({n})':<22} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} "
                         f"{'-' if mean is None else f'{mean:.3f}':>12}")
    return "\n".join(lines)


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
