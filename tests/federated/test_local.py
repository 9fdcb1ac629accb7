"""A site's local training under the federation's plan, and the run folder made of the global weights."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.errors import ConfigError
from medlens.federated.local import SiteTrainer, initial_weights, local_keys
from medlens.federated.plan import plan_federation, read_federation
from medlens.federated.result import write_run
from medlens.federated.summaries import site_summary

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_site(root: Path, *, patients: int, seed: int) -> Path:
    """A CSV site of the demo data's chest images (32 x 32, half with a lesion), two studies a patient."""
    from medlens.data.synthetic import chest_image
    from medlens.io import Image, identity_direction, write_image

    rng, rows = np.random.default_rng(seed), []
    for p in range(patients):
        label = "lesion" if p % 2 else "normal"
        for s in range(2):
            rel = f"img/p{p:03d}_{s}.png"
            pixels = chest_image(rng, lesion=label == "lesion", size=32)
            write_image(Image(pixels.T[None], (0.6, 0.6), (0.0, 0.0), identity_direction(2)), root / rel)
            rows.append({"image": rel, "label": label, "patient_id": f"P{p:03d}"})
    with open(root / "site.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "site.csv"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A 60-patient site, its summary, and a 2-round plan of 4 local epochs (the network not timed)."""
    data = write_site(tmp_path_factory.mktemp("site") / "north", patients=60, seed=1)
    reasons = {}
    config, plan = plan_federation({"north": site_summary(data, name="north")}, rounds=2, probe=False,
                                   task_reasons=reasons)
    return data, config, replace(plan, local_epochs=4), reasons


def _distance(weights: dict, start: dict, keys) -> float:
    return float(sum(((weights[k] - start[k]) ** 2).sum() for k in keys))


def test_two_rounds_improve_validation_auc_from_the_same_start(site):
    data, config, plan, _ = site
    trainer = SiteTrainer(config, plan, data, site="north", log=lambda m: None)
    start = initial_weights(config, plan)
    before = trainer.evaluate(start)
    weights, n, metrics = trainer.fit(start, round=1)
    weights, n, metrics = trainer.fit(weights, round=2)
    after = trainer.evaluate(weights)
    assert set(weights) == set(start)
    assert all(weights[k].shape == start[k].shape and weights[k].dtype == start[k].dtype for k in start)
    assert n == trainer.n_train == len(trainer.cases["train"]) > 0
    assert metrics["epochs"] == 4 and np.isfinite(metrics["train_loss"])
    assert before["n"] == after["n"] == trainer.n_val
    assert after["val_auc"] >= 0.9 and after["val_auc"] > before["val_auc"] + 0.2, (before, after)


def test_fedprox_pulls_the_weights_toward_the_global_ones(site):
    data, config, plan, _ = site
    start = initial_weights(config, plan)
    moved = {}
    for mu in (0.0, 5.0):
        federation = replace(plan, strategy="fedprox" if mu else "fedavg", proximal_mu=mu, local_epochs=2)
        trainer = SiteTrainer(config, federation, data, site="north", log=lambda m: None)
        params = [name for name, _ in trainer.module.model.named_parameters()]
        weights, _, _ = trainer.fit(start, round=1)
        moved[mu] = _distance(weights, start, params)
    assert moved[5.0] < 0.5 * moved[0.0], moved


def test_fedbn_keeps_batch_norm_at_the_site(site):
    data, config, plan, _ = site
    start = initial_weights(config, plan)
    scores = {}
    for strategy in ("fedbn", "fedavg"):
        trainer = SiteTrainer(config, replace(plan, strategy=strategy, local_epochs=1), data, site="north",
                              log=lambda m: None)
        bn = local_keys(trainer.module.model)
        modules = dict(trainer.module.model.named_modules())
        assert bn and all(isinstance(modules[k.rsplit(".", 1)[0]], torch.nn.BatchNorm2d) for k in bn)
        trained, _, _ = trainer.fit(start, round=1)
        foreign = {k: (v + 50 if k.endswith("running_mean") else v) for k, v in trained.items()}  # another site's BN
        scores[strategy] = (trainer.evaluate(trained)["val_loss"], trainer.evaluate(foreign)["val_loss"])
        again, _, _ = trainer.fit(foreign, round=2)
        key = next(k for k in bn if k.endswith("running_mean"))
        kept_local = abs(float(np.mean(again[key] - trained[key]))) < 5
        assert kept_local == (strategy == "fedbn")
    assert scores["fedbn"][0] == pytest.approx(scores["fedbn"][1])  # the site's own BN ignored the foreign one
    assert scores["fedavg"][0] != pytest.approx(scores["fedavg"][1])


def test_weights_of_another_network_are_refused_naming_the_site(site):
    data, config, plan, _ = site
    trainer = SiteTrainer(config, plan, data, site="north", log=lambda m: None)
    start = initial_weights(config, plan)
    key = next(iter(start))
    with pytest.raises(ConfigError, match=r"site north: the global weights do not fit the planned network \(1 "
                                          "missing"):
        trainer.load({k: v for k, v in start.items() if k != key})


def test_the_result_is_a_run_folder_medlens_evaluate_takes(site, tmp_path):
    from medlens.cli import main

    data, config, plan, reasons = site
    trainer = SiteTrainer(config, plan, data, site="north", log=lambda m: None)
    weights, n, metrics = trainer.fit(initial_weights(config, plan), round=1)
    sites = {"north": {"rounds": [1], "n_examples": n, "privacy": (2.5, 1e-3)}}
    run = write_run(tmp_path / "run", config, plan, weights, [{"round": 1, "sites": {"north": metrics}}], sites,
                    reasons=reasons, calibrate_on={"north": data}, log=lambda m: None)
    info = run.read_info()
    assert info["status"] == "finished" and info["federation"]["strategy"] == plan.strategy
    assert info["federation"]["sites"]["north"]["dp"] == {"epsilon": 2.5, "delta": 1e-3}
    assert info["federation"]["calibration"].startswith(f"site north's validation split ({trainer.n_val} cases)")
    assert read_federation(run.root / "federation.yaml") == plan
    assert "round(s) x" in run.plan.read_text()  # the plan's reasons are kept
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["evaluate", str(run.root)]) == 0, printed.getvalue()[-2000:]
    doc = json.loads(run.metrics_json.read_text())
    assert doc["n_cases"] == len(trainer.cases["test"])
    assert doc["metrics"]["auc"]["value"] >= 0.9


def test_federate_calibrates_on_every_sites_validation_split(site, tmp_path):
    from medlens.cli import main

    data, config, plan, reasons = site
    south = write_site(tmp_path / "south", patients=30, seed=2)
    trainers = {name: SiteTrainer(config, plan, d, site=name, log=lambda m: None)
                for name, d in (("north", data), ("south", south))}
    weights, n, metrics = trainers["north"].fit(initial_weights(config, plan), round=1)
    sites = {name: {"rounds": [1], "n_examples": t.n_train, "privacy": None} for name, t in trainers.items()}
    run = write_run(tmp_path / "run", config, plan, weights, [{"round": 1, "sites": {"north": metrics}}], sites,
                    reasons=reasons, calibrate_on={"north": data, "south": south}, log=lambda m: None)
    n_val = sum(t.n_val for t in trainers.values())
    assert run.read_info()["federation"]["calibration"].startswith(
        f"the validation splits of all 2 sites (north, south) ({n_val} cases)")
    with open(run.root / "federated" / "calibration.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for name, trainer in trainers.items():  # each case in the split its own site gave it
        for split in ("val", "test"):
            listed = sum(r["split"] == split and r["patient_id"].startswith(f"{name}/") for r in rows)
            assert listed == len(trainer.cases[split])
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["evaluate", str(run.root), "--bootstrap", "50", "--no-baseline"]) == 0, printed.getvalue()[-2000:]
    assert json.loads(run.metrics_json.read_text())["n_cases"] == sum(len(t.cases["test"]) for t in trainers.values())


def test_sites_that_cannot_be_listed_in_one_manifest_calibrate_on_the_first(site, tmp_path):
    data, config, plan, reasons = site
    npz = tmp_path / "south.npz"
    rng = np.random.default_rng(0)
    splits = ("train", "val", "test")
    np.savez(npz, **{f"{s}_images": rng.integers(0, 255, (8, 32, 32), dtype=np.uint8) for s in splits},
             **{f"{s}_labels": np.arange(8)[:, None] % 2 for s in splits})
    trainer = SiteTrainer(config, plan, data, site="north", log=lambda m: None)
    weights, n, metrics = trainer.fit(initial_weights(config, plan), round=1)
    said = []
    run = write_run(tmp_path / "run", config, plan, weights, [{"round": 1, "sites": {"north": metrics}}],
                    {"north": {"rounds": [1], "n_examples": n, "privacy": None}}, reasons=reasons,
                    calibrate_on={"north": data, "south": npz}, log=said.append)
    assert any("cannot be listed in one manifest" in line and "site north's validation split" in line
               and "south.npz" not in line for line in said)
    assert run.read_info()["federation"]["calibration"].startswith("site north's validation split")


def test_differential_privacy_trains_a_group_norm_network_within_its_epsilon(site):
    pytest.importorskip("opacus")
    data, config, plan, _ = site
    private = replace(plan, dp_epsilon=8.0, local_epochs=1)
    trainer = SiteTrainer(config, private, data, site="north", log=lambda m: None)
    kinds = {type(m) for m in trainer.module.model.modules()}
    assert torch.nn.GroupNorm in kinds and not any(issubclass(k, torch.nn.modules.batchnorm._BatchNorm)
                                                   for k in kinds)
    start = initial_weights(config, private)  # the server builds the same DP-compatible network
    assert set(start) == set(trainer.module.model.state_dict())
    assert trainer.privacy_spent() is None
    weights, _, metrics = trainer.fit(start, round=1)
    epsilon, delta = trainer.privacy_spent()
    assert 0 < epsilon <= 8.0 and delta == pytest.approx(1 / (10 * trainer.n_train))
    assert metrics["dp_epsilon"] == epsilon and set(weights) == set(start)
    assert any(not np.array_equal(weights[k], start[k]) for k in start)


def test_privacy_without_opacus_is_refused_with_the_fix(site, monkeypatch):
    import sys

    data, config, plan, _ = site
    monkeypatch.setitem(sys.modules, "opacus", None)  # as on a machine without the federated extra
    with pytest.raises(ConfigError, match=r"differential privacy needs Opacus.*medlens\[federated\]"):
        initial_weights(config, replace(plan, dp_epsilon=8.0))
