"""The federation's result as an ordinary run folder: what ``medlens evaluate / export / serve`` take.

``write_run`` writes, beside the server's ``federated/`` checkpoints:

- ``plan.yaml``: the task plan every site trained with (reasons beside the values);
- ``weights.pt``: the final global weights, in the network the plan describes;
- ``federation.yaml``: the federation plan (:class:`~medlens.federated.plan.FederationPlan`);
- ``run.json``: ``status: finished``, and under ``federation`` the strategy, rounds, each site's rounds,
  training cases and the differential privacy ``(epsilon, delta)`` it spent, and what the calibration was fitted on;
- ``federated/history.json``: one record per round;
- ``clinical.json`` (clinical inputs): the encoder of the plan's pooled statistics (``clinical.standardise``);
- with ``calibrate_on`` (the sites' data on this machine, as in ``medlens federate``): the task's own
  calibration hook (:meth:`medlens.tasks.Task.finish`: temperature and threshold, validation metrics, the
  out-of-distribution guard for classification; post-processing for segmentation) fitted on every site's
  validation split together (``federated/calibration.csv`` lists the sites' cases in their splits), and its
  ``splits.json``, so ``medlens evaluate RUN`` scores every site's test split. One site's label balance can be
  far from the federation's: a threshold set on it alone misplaces the others' cases.
- without it (a server that holds no data, ``medlens fl server``), classification gets ``calibration.json`` fitted
  from the aggregates the sites sent of their validation splits (``site_calibration``,
  :mod:`medlens.tasks.classification.aggregates`: temperature, and for two classes the Youden threshold); other
  tasks and DP runs get none: temperature 1 and threshold 0.5, which ``run.json`` says.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medlens._files import write_json_atomic, write_text_atomic
from medlens.config import Config, render_plan
from medlens.errors import ConfigError
from medlens.federated.plan import FederationPlan, write_federation
from medlens.runs import RUN_VERSION, RunFolder, json_safe, now

FEDERATION = "federation.yaml"
ALL_SITES = "all sites"
NO_CALIBRATION = "none: the server holds no data (temperature 1, threshold 0.5)"


def write_run(out: str | Path, config: Config, plan: FederationPlan, weights: dict[str, np.ndarray],
              history: list[dict], sites: dict[str, dict], *, reasons: dict[str, str] | None = None,
              calibrate_on: dict[str, Path] | None = None, site_calibration: dict | None = None,
              kept: dict | None = None, log=print) -> RunFolder:
    """Write the run folder ``out`` (created, or the server's folder that already holds ``federated/``).

    Args:
        config: the task plan the sites trained with.
        plan: the federation plan.
        weights: the final global weights ``{state_dict key: array}``.
        history: one record per round (what the server kept: ``round``, ``seconds``, ``sites``, ...).
        sites: ``{site: {"rounds", "n_examples", "privacy": (epsilon, delta) | None, "counts"}}``.
        reasons: the task plan's reasons (``plan.yaml`` comments).
        calibrate_on: ``{site: data}`` on this machine to fit the task's calibration on (their validation splits
            together).
        site_calibration: without ``calibrate_on``: ``calibration.json`` the server fitted from the sites'
            validation aggregates (the task's ``aggregate_calibration``).
        kept: ``{"round", "rule", "scores"}`` when ``weights`` are the round of the best validation score rather
            than the last (the card's ``federation.kept_round``).

    Returns:
        The run folder.

    Raises:
        ConfigError: the weights do not fit the planned network; ``out`` holds a finished non-federated run.
    """
    from medlens.tasks import task_for

    run = RunFolder(Path(out))
    _check_target(run)
    run.root.mkdir(parents=True, exist_ok=True)
    task = task_for(config)
    model, dp_changes = _global_model(task, config, plan, weights)
    calibration, config = _calibrate(run, task, config, plan, weights, model, calibrate_on, log)
    if site_calibration and not calibrate_on:
        write_json_atomic(run.calibration, site_calibration)
        calibration = (f"{site_calibration['fitted_on']}: temperature {site_calibration['temperature']:.3f}, "
                       f"threshold {site_calibration['threshold']:.3f} ({site_calibration['threshold_rule']})")
    _write_clinical(run, config, calibrate_on)
    from medlens.models.weights import save_atomic

    save_atomic(model.state_dict(), run.weights)
    header = (f"medlens federated plan ({plan.strategy}, {len(sites)} sites), written {now()}.\nEvery site trained "
              "with these values; federation.yaml holds the federation's own.")
    write_text_atomic(run.plan, render_plan(config, dict(reasons or {}), header, omit=task.ignored))
    write_federation(run.root / FEDERATION, plan)
    write_json_atomic(run.root / "federated" / "history.json", json_safe(history))
    record = _federation_record(plan, history, sites, calibration, dp_changes)
    run.update_info(medlens_run_version=RUN_VERSION, status="finished", finished=now(),
                    dataset=config.dataset.source, task=config.dataset.task,
                    epochs_run=sum(record["local_epochs_by_round"]),
                    federation=json_safe({**record, "kept_round": kept}))
    log(f"federated run folder: {run.root} (weights {run.weights.name}, {FEDERATION}; calibration: {calibration})")
    return run


def _write_clinical(run: RunFolder, config: Config, calibrate_on) -> None:
    """``clinical.json`` from the plan (its pooled ``clinical.standardise`` and categories) when no calibration on
    the sites' data wrote it: what evaluate, predict and the bundle encode a case's clinical values with."""
    clinical = config.clinical
    if calibrate_on or not (clinical.numeric or clinical.categorical):
        return
    from medlens.data.clinical import ClinicalEncoder

    write_json_atomic(run.clinical, ClinicalEncoder.from_plan(clinical).to_dict())


def _check_target(run: RunFolder) -> None:
    if run.info.exists() and not (run.root / "federated").exists() and not (run.root / FEDERATION).exists():
        raise ConfigError(f"{run.root} already holds a run that is not a federation's; choose another --out")


def _global_model(task, config: Config, plan: FederationPlan,
                  weights: dict[str, np.ndarray]) -> tuple[torch.nn.Module, list[str]]:
    """The planned network holding ``weights`` (refused, naming keys, when they do not fit), and what was changed to
    make it DP-compatible (``[]`` without DP)."""
    from medlens.federated.local import dp_network

    model, changes = dp_network(task.build_model(config), plan)
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or extra:
        raise ConfigError(f"the global weights do not fit the planned {config.model.name}: {len(missing)} key(s) "
                          f"missing (e.g. {missing[:2]}), {len(extra)} unknown (e.g. {extra[:2]})")
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(own[k].dtype) for k, v in weights.items()})
    return model.eval(), changes


def _calibrate(run: RunFolder, task, config: Config, plan: FederationPlan, weights, model, calibrate_on,
               log) -> tuple[str, Config]:
    """The task's calibration hook on the sites' validation splits (see module docstring); what it was fitted on."""
    if not calibrate_on:
        return NO_CALIBRATION, config
    from medlens.data.dataset import series_rules_given, series_rules_in_force
    from medlens.federated.local import SiteTrainer

    with series_rules_given(series_rules_in_force() or config.dataset.series_rules):  # sites of DICOM studies
        data, image_root, name = _calibration_data(run, config, calibrate_on, log)
        site = SiteTrainer(config, plan, data, site=name, image_root=image_root, log=log)
    site.load(weights)
    site_config = site.config
    write_json_atomic(run.splits, site.splits)  # its test split is what `medlens evaluate RUN` scores
    summary = task.finish(run, site_config, site.module.model.eval(), site.fit_, log)
    model.load_state_dict(site.module.model.state_dict())  # finish may settle what the weights hold (none today)
    config = replace(config, dataset=replace(config.dataset, source=site_config.dataset.source,
                                             image_root=site_config.dataset.image_root,
                                             layout=site_config.dataset.layout))
    fitted_on = (f"site {name}'s validation split" if name != ALL_SITES else
                 f"the validation splits of all {len(calibrate_on)} sites ({', '.join(calibrate_on)})")
    return f"{fitted_on} ({site.n_val} cases): {summary}", config


def _calibration_data(run: RunFolder, config: Config, calibrate_on: dict, log) -> tuple[Path, str, str]:
    """What to calibrate on: one site's data, or every site's cases in one manifest, each in its site's split
    (``federated/calibration.csv``), so the threshold sees every site's label balance; the first site when the
    cases are not image files. Returns ``(data, its image root or "", name)``."""
    sources = {name: Path(path) for name, path in calibrate_on.items()}
    if len(sources) == 1:
        return next(iter(sources.values())), "", next(iter(sources))
    from medlens.errors import DatasetError
    from medlens.federated.compare import pooled_manifest

    try:
        data, root = pooled_manifest(sources, config.train.seed, run.root / "federated" / "calibration.csv")
        return data, str(root), ALL_SITES
    except DatasetError as exc:
        from medlens.federated.site import redact

        first = next(iter(sources))
        log(f"calibration: the sites' cases cannot be listed in one manifest ({redact(str(exc))}); calibrating on "
            f"site {first}'s validation split")
        return sources[first], "", first


def _federation_record(plan: FederationPlan, history: list[dict], sites: dict[str, dict], calibration: str,
                       dp_changes: list[str]) -> dict:
    record = {"strategy": plan.strategy, "rounds": plan.rounds, "local_epochs": plan.local_epochs,
              "local_epochs_by_round": [int(h.get("local_epochs") or plan.local_epochs) for h in history],
              "proximal_mu": plan.proximal_mu, "min_sites": plan.min_sites, "rounds_run": len(history),
              "calibration": calibration, "sites": {}}
    for name, site in sites.items():
        privacy = site.get("privacy")
        record["sites"][name] = {"rounds": site.get("rounds"), "n_examples": site.get("n_examples"),
                                 "dp": None if privacy is None else {"epsilon": privacy[0], "delta": privacy[1]}}
    if plan.dp_epsilon is not None:
        record["dp"] = {"target_epsilon": plan.dp_epsilon, "max_grad_norm": plan.dp_max_grad_norm,
                        "delta": plan.dp_delta or "1 / (10 x training cases) per site",
                        "network_changes": dp_changes}
    return record
