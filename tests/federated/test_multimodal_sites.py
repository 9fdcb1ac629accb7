"""Sites whose cases have several images and clinical values: one fused plan from their summaries, clinical
statistics pooled from aggregates, residual fusion's regression averaged, and a real Flower run end to end."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.clinical import ClinicalEncoder, parse_standardise, standardise_entries
from medlens.data.prepared import split_cases
from medlens.data.synthetic_views import write_interaction_set
from medlens.errors import ConfigError
from medlens.federated.local import SiteTrainer, initial_weights, regression_state
from medlens.federated.plan import merged_card, plan_federation
from medlens.federated.summaries import check_summaries, site_splits, site_summary

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def write_site(root: Path, *, seed: int, age_shift: float = 0.0, cases: int = 120) -> Path:
    """The two-view parity set (:func:`write_interaction_set`) as one site; ``age`` moved by ``age_shift`` so that the
    sites' statistics differ. Returns the manifest."""
    manifest = write_interaction_set(root, cases=cases, size=16, seed=seed)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["age"] = f"{float(row['age']) + age_shift:.0f}"
        row["patient_id"] = f"PATIENT{seed}X{row['patient_id']}"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mm-sites")
    return {"north": write_site(root / "north", seed=1), "south": write_site(root / "south", seed=2, age_shift=25.0)}


@pytest.fixture(scope="module")
def summaries(sites) -> dict[str, dict]:
    return {name: site_summary(path, name=name) for name, path in sites.items()}


def training_cases(path: Path, seed: int = 0):
    dataset = open_dataset(path)
    return split_cases(dataset, site_splits(dataset, inspect_dataset(dataset), seed=seed), 0)["train"]


def test_a_summary_names_views_and_clinical_columns_but_holds_no_case_value(sites, summaries):
    summary = summaries["north"]
    assert summary["views"]["names"] == ["front", "side"]
    assert set(summary["clinical"]) == {"marker", "age", "site"}
    assert summary["clinical"]["site"]["categories"].keys() == {"A", "B"}
    assert "categories" not in summary["clinical"]["age"] and "numeric" not in summary["clinical"]["age"]
    text = json.dumps(summary)
    assert "PATIENT" not in text and "case0" not in text and ".png" not in text
    # a column of many distinct words (names, free text) keeps its values at the site
    rows = list(csv.DictReader(open(sites["north"], newline="")))
    for k, row in enumerate(rows):
        row["site"] = f"Ward{k % 40:02d}"
    named = sites["north"].parent / "named.csv"  # beside the images it lists
    with open(named, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    column = site_summary(named, name="north")["clinical"]["site"]
    assert column["distinct"] == 40 and "categories" not in column and "Ward" not in json.dumps(column)


def test_one_fused_plan_from_the_summaries(summaries):
    reasons: dict = {}
    config, plan = plan_federation(summaries, rounds=2, probe=False, task_reasons=reasons)
    assert config.data.views == ("front", "side") and config.data.fusion == "views"
    assert config.clinical.numeric == ("marker", "age") and config.clinical.categorical == ("site=A|B",)
    assert config.clinical.fusion == "residual" and "round 1" in reasons["clinical.fusion"]
    private, _ = plan_federation(summaries, rounds=2, probe=False, dp_epsilon=8.0)
    assert private.clinical.fusion == "concat"  # the regression would be fitted outside DP-SGD's accounting


def test_sites_with_other_views_or_columns_are_refused_or_left_out(summaries):
    other = json.loads(json.dumps(summaries["south"]))
    other["views"]["names"] = ["front", "back"]
    with pytest.raises(ConfigError, match=r"site south: its cases have the image inputs \['front', 'back'\]"):
        check_summaries({"north": summaries["north"], "south": other})
    lacking = json.loads(json.dumps(summaries["south"]))
    del lacking["clinical"]["age"]
    lacking["clinical"]["marker"]["kind"] = "categorical"
    reasons: dict = {}
    config, _ = plan_federation({"north": summaries["north"], "south": lacking}, rounds=1, probe=False,
                                task_reasons=reasons)
    assert config.clinical.numeric == () and config.clinical.categorical == ("site=A|B",)
    assert "age (not in the manifest at site(s) south" in reasons["clinical.numeric"]
    assert "marker (read as numeric at north, categorical at south" in reasons["clinical.numeric"]
    assert merged_card(summaries)["clinical"]["site"]["categories"] == {
        k: summaries["north"]["clinical"]["site"]["categories"][k] + summaries["south"]["clinical"]["site"]
        ["categories"][k] for k in ("A", "B")}


def test_pooled_statistics_equal_those_of_all_training_cases_together(sites, summaries):
    config, _ = plan_federation(summaries, rounds=1, probe=False)
    parts = [training_cases(path) for path in sites.values()]
    entries = standardise_entries(ClinicalEncoder.moments(config.clinical, cases) for cases in parts)
    together = ClinicalEncoder.fit(config.clinical, [c for cases in parts for c in cases])
    fixed = parse_standardise(replace(config.clinical, standardise=entries))
    for column in ("marker", "age"):
        assert fixed[column] == pytest.approx((together.means[column], together.stds[column]), rel=1e-5)
    alone = ClinicalEncoder.fit(config.clinical, parts[0])
    assert abs(alone.means["age"] - fixed["age"][0]) > 5  # the south site's ages moved the pooled mean


def test_every_site_encodes_with_the_plans_statistics_and_residual_regressions_are_averaged(sites, summaries):
    config, plan = plan_federation(summaries, rounds=2, probe=False)
    config = replace(config, clinical=replace(config.clinical, standardise=("marker=0,2", "age=70,10")),
                     train=replace(config.train, max_epochs=2, batch_size=16))
    plan = replace(plan, local_epochs=1)
    start = initial_weights(config, plan)
    trained = {}
    for name, path in sites.items():
        site = SiteTrainer(config, plan, path, site=name, log=lambda m: None)
        encoder = site.fit_.validation.clinical
        assert encoder.means == {"marker": 0.0, "age": 70.0} and encoder.stds == {"marker": 2.0, "age": 10.0}
        own = regression_state(site.module.model)
        assert own and all(v.abs().sum() > 0 for v in own.values())
        weights, _, _ = site.fit(start, round=1)  # round 1: on top of the site's own regression, sent back
        for key, value in own.items():
            np.testing.assert_allclose(weights[key], value.numpy())
        trained[name] = weights
        later, _, _ = site.fit(weights | {k: np.zeros_like(v) for k, v in weights.items() if k in own}, round=2)
        assert all(np.abs(later[k]).sum() == 0 for k in own)  # from round 2: the global (averaged) one, fixed
    north, south = (regression_state_of(trained[n]) for n in ("north", "south"))
    assert any(not np.allclose(north[k], south[k]) for k in north)  # each site fitted its own


def regression_state_of(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if ".clinical_logits." in f".{k}"}


def federate_cli(*arguments) -> str:
    from medlens.cli import main as medlens

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert medlens(["federate", *map(str, arguments), "--rounds", "1", "--time-budget", "5s"]) == 0, \
            printed.getvalue()[-3000:]
    return printed.getvalue()


@pytest.mark.e2e
def test_a_federation_of_sites_with_two_views_and_clinical_values_is_an_ordinary_run(sites, tmp_path, flower_env):
    """``medlens federate`` on Flower's real runtime: the plan fuses the views and clinical values, the statistics
    are pooled from the sites' moments, the comparison trains on a pooled manifest of views and clinical columns,
    and evaluate and predict take the result with its clinical encoder."""
    from medlens.cli import main as medlens

    run = tmp_path / "run"
    printed = federate_cli("--sites", *sites.values(), "--out", run)
    plan = (run / "plan.yaml").read_text()
    assert "fusion: views" in plan and "standardise: [" in plan and "pooled from each site's count" in plan
    encoder = ClinicalEncoder.from_dict(json.loads((run / "clinical.json").read_text()))
    parts = [training_cases(path) for path in sites.values()]
    together = ClinicalEncoder.fit(replace(_section(run), standardise=()), [c for cases in parts for c in cases])
    assert encoder.means["age"] == pytest.approx(together.means["age"], rel=1e-5)
    wire = (run / "federated" / "messages.jsonl").read_text()
    assert '"clinical"' in wire and "PATIENT" not in wire
    pooled = (run / "federated" / "compare" / "pooled.csv").read_text().splitlines()[0]
    assert pooled.startswith("image:front,image:side,label,") and pooled.endswith("marker,age,site")
    assert "pooled" in printed and (run / "federated" / "comparison.csv").is_file()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert medlens(["evaluate", str(run), "--bootstrap", "50", "--no-baseline"]) == 0, printed.getvalue()[-2000:]
    north = sites["north"].parent
    record = json.dumps({"marker": 1.2, "age": 61, "site": "A"})
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert medlens(["predict", str(run), "--input", f"front={north / 'front' / 'case0000.png'}", "--input",
                        f"side={north / 'side' / 'case0000.png'}", "--clinical", record,
                        "--out", str(tmp_path / "pred.csv")]) == 0, printed.getvalue()[-2000:]


@pytest.mark.e2e
def test_sites_of_dicom_studies_federate_through_their_series_rules(tmp_path, flower_env):
    """Two sites of DICOM studies (a T1 and a FLAIR series each, and a localizer): every site picks its series with
    ``--series-rule``, the plan keeps the rules, and ``predict RUN STUDY`` reads a new study with them."""
    from medlens.cli import main as medlens
    from medlens.config import read_plan
    from tests.data.test_series_manifest import write_csv, write_study

    sites = []
    for k, name in enumerate(("north", "south")):
        rows = []
        for i in range(12):
            write_study(tmp_path / name / "studies" / f"s{i:02d}", 20 * k + i, i % 2 == 1)
            rows.append({"study": f"studies/s{i:02d}", "label": "tumour" if i % 2 else "none",
                         "patient": f"P{name}{i:02d}"})
        sites.append(write_csv(tmp_path / name / f"{name}.csv", rows))
    run = tmp_path / "run"
    federate_cli("--sites", *sites, "--series-rule", "t1=T1", "--series-rule", "flair=FLAIR", "--out", run)
    config, reasons = read_plan(run / "plan.yaml")
    assert config.dataset.series_rules == ("t1=T1", "flair=FLAIR") and "every site reads" in reasons[
        "dataset.series_rules"]
    assert config.data.fusion == "channels" and config.data.channels == 2
    pooled = (run / "federated" / "compare" / "pooled.csv").read_text().splitlines()
    assert pooled[0].startswith("image:t1,image:flair,") and "5-flair" in pooled[1]
    new = write_study(tmp_path / "new_study", 77, True)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert medlens(["predict", str(run), str(new), "--out", str(tmp_path / "pred.csv")]) == 0, \
            printed.getvalue()[-2000:]
    assert (tmp_path / "pred.csv").read_text().count("\n") == 2


def test_a_sites_series_rules_travel_in_its_node_config_and_a_bad_one_is_refused_before_it_starts(tmp_path):
    from medlens.federated.site import SiteSettings, series_rules_of, supernode_command

    data = tmp_path / "studies.csv"
    data.write_text("study,label\n")
    rules = ("t1=T1 (POST|PRE)", 'flair="FLAIR"\\b')
    command = supernode_command(SiteSettings("127.0.0.1:9092", data, "north", series_rules=rules), 9094)
    from flwr.common.config import parse_config_args

    config = parse_config_args([command[command.index("--node-config") + 1]])
    assert series_rules_of(config) == rules and config["name"] == "north"
    with pytest.raises(ConfigError, match="NAME=REGEX"):
        supernode_command(SiteSettings("127.0.0.1:9092", data, "north", series_rules=("no rule",)), 9094)


def _section(run: Path):
    from medlens.config import read_plan

    return read_plan(run / "plan.yaml")[0].clinical
