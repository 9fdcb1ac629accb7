"""Site summaries (aggregates only, checked across sites) and the federation plan made from them."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medlens.data import open_dataset
from medlens.errors import ConfigError
from medlens.federated.plan import (
    FederationPlan,
    has_batch_norm,
    merged_card,
    plan_federation,
    pooled_quantiles,
    read_federation,
    write_federation,
)
from medlens.federated.summaries import check_summaries, site_summary, train_count


def write_site(root: Path, *, patients: int, lesion_share: float, seed: int, brightness: float = 0.0,
               prefix: str = "ZQX", classes=("normal", "lesion")) -> Path:
    """A CSV site of the demo data's chest images (32 x 32), two studies a patient; returns the manifest."""
    from medlens.data.synthetic import chest_image
    from medlens.io import Image, identity_direction, write_image

    rng, rows = np.random.default_rng(seed), []
    for p in range(patients):
        lesion = rng.random() < lesion_share
        for s in range(2):
            pixels = np.clip(chest_image(rng, lesion=lesion, size=32).astype(float) + brightness, 0, 255)
            rel = f"scans/{prefix}img{p:03d}x{s}.png"
            write_image(Image(pixels.astype(np.uint8).T[None], (0.6, 0.6), (0.0, 0.0), identity_direction(2)),
                        root / rel)
            rows.append({"image": rel, "label": classes[int(lesion)], "patient_id": f"PAT{prefix}{p:03d}"})
    with open(root / "site.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "site.csv"


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sites")
    return {"a": write_site(root / "a-dataroot", patients=30, lesion_share=0.5, seed=1, prefix="AQX"),
            "b": write_site(root / "b-dataroot", patients=30, lesion_share=0.12, seed=2, prefix="BQX"),  # label skew
            "c": write_site(root / "c-dataroot", patients=30, lesion_share=0.5, seed=3, brightness=60,
                            prefix="CQX"),  # intensity shift
            "d": write_site(root / "d-dataroot", patients=30, lesion_share=0.5, seed=4, prefix="DQX")}  # like a


@pytest.fixture(scope="module")
def summaries(sites) -> dict[str, dict]:
    return {name: site_summary(path, name=name) for name, path in sites.items()}


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        assert len(value) <= 16, f"a list of {len(value)} values in a summary: per-case data?"
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def test_summary_holds_aggregates_only(sites, summaries):
    summary, path = summaries["a"], sites["a"]
    text = json.dumps(summary)  # JSON-able as it is
    dataset = open_dataset(path)
    forbidden = {str(path.parent), path.parent.name, "scans", ".png"}
    forbidden |= {c.case_id for c in dataset.cases} | {c.patient_id for c in dataset.cases}
    forbidden |= {Path(str(c.image)).stem for c in dataset.cases}
    leaked = sorted(f for f in forbidden if f in text)
    assert not leaked, f"the summary names {leaked[:5]}"
    assert "AQX" not in text  # no fragment of any file name or patient id
    for leaf in _leaves(summary):
        assert leaf is None or isinstance(leaf, (int, float, bool)) or (isinstance(leaf, str) and len(leaf) < 80)
    # the counts are medlens' patient-grouped split of the site's 60 images of 30 patients
    by_split = summary["counts"]["by_split"]
    assert sum(sum(c.values()) for c in by_split.values()) == 60
    assert sum(summary["counts"]["patients_by_split"].values()) == 30
    assert train_count(summary) == sum(by_split["train"].values()) > 0
    assert summary["dataset"]["class_names"] == ["normal", "lesion"]
    assert summary["images"]["intensity"]["percentiles"]["50"] > 0


def test_sites_whose_classes_disagree_are_refused_naming_the_site(tmp_path, summaries):
    other = write_site(tmp_path / "e", patients=10, lesion_share=0.5, seed=5, classes=("normal", "nodule"))
    bad = {"a": summaries["a"], "east": site_summary(other, name="east")}
    with pytest.raises(ConfigError, match=r"site east: its classes \['normal', 'nodule'\].*site a"):
        check_summaries(bad)
    with pytest.raises(ConfigError, match="site east"):
        plan_federation(bad, probe=False)


def test_sites_whose_dimensions_disagree_are_refused(summaries):
    volume = {**summaries["b"], "dataset": {**summaries["b"]["dataset"], "spatial_dims": 3}}
    with pytest.raises(ConfigError, match="site b: its image dimensions 3 disagree with site a's 2"):
        check_summaries({"a": summaries["a"], "b": volume})


def test_a_site_with_fewer_training_cases_than_a_batch_is_refused(summaries):
    tiny = json.loads(json.dumps(summaries["d"]))
    tiny["counts"]["by_split"]["train"] = {"normal": 1, "lesion": 2}
    with pytest.raises(ConfigError, match=r"site tiny has 3 training case\(s\).*at least one batch of 4"):
        plan_federation({"a": summaries["a"], "tiny": tiny}, probe=False)


def test_a_site_without_training_cases_of_a_class_is_refused(summaries):
    one_class = json.loads(json.dumps(summaries["d"]))
    one_class["counts"]["by_split"]["train"] = {"normal": 20, "lesion": 0}
    with pytest.raises(ConfigError, match="site west has no training case of class.es. lesion"):
        check_summaries({"a": summaries["a"], "west": one_class})


def test_a_small_site_lowers_the_batch_so_it_holds_one(summaries):
    small = json.loads(json.dumps(summaries["d"]))
    small["counts"]["by_split"]["train"] = {"normal": 3, "lesion": 3}
    reasons = {}
    config, _ = plan_federation({"a": summaries["a"], "small": small}, probe=False, task_reasons=reasons)
    assert config.train.batch_size == 4
    assert "site small's 6 training cases" in reasons["train.batch_size"]


@pytest.mark.parametrize(("pair", "strategy", "why"), [
    (("a", "d"), "fedavg", "FedAvg: the sites are alike"),
    (("a", "b"), "fedprox", "FedProx: label balance: largest Jensen-Shannon divergence"),
    (("a", "c"), "fedbn", "FedBN: the sites' intensities"),
])
def test_strategy_follows_how_different_the_sites_are(summaries, pair, strategy, why):
    config, plan = plan_federation({k: summaries[k] for k in pair}, probe=False)
    assert plan.strategy == strategy
    assert plan.reasons["strategy"].startswith(why)
    assert plan.proximal_mu == (0.01 if strategy == "fedprox" else 0.0)
    assert config.train.max_epochs == plan.rounds * plan.local_epochs
    assert plan.min_sites == 2


@pytest.mark.parametrize(("pair", "norm"), [(("a", "d"), "batch"), (("a", "b"), "group"), (("a", "c"), "batch")])
def test_label_skew_plans_group_norm(summaries, pair, norm):
    # label skew: batch norm's statistics are each site's class mix (Hsieh et al. 2020); FedBN keeps them per site
    reasons = {}
    config, plan = plan_federation({k: summaries[k] for k in pair}, probe=False, task_reasons=reasons)
    assert config.model.norm == norm
    assert has_batch_norm(config) == (norm == "batch")  # the network the sites build is the one the plan names
    if norm == "group":
        assert reasons["model.norm"].startswith("group: the sites' label balance differs (largest Jensen-Shannon")
    kept, asked = plan_federation({k: summaries[k] for k in pair}, probe=False, strategy="fedbn")
    assert asked.strategy == "fedbn" and kept.model.norm == "batch"  # asked for: its batch norm stays, skew or not


def test_no_fedbn_under_differential_privacy(summaries):
    config, plan = plan_federation({k: summaries[k] for k in "ac"}, probe=False, dp_epsilon=8.0)
    assert plan.strategy == "fedavg" and config.model.norm == "group"  # the plan names the network DP trains
    assert "no batch norm under differential privacy (group norm)" in plan.reasons["strategy"]
    assert plan.dp_epsilon == 8.0 and "GroupNorm".lower() in plan.reasons["dp_epsilon"].replace(" ", "").lower()


def test_one_plan_from_pooled_statistics(summaries):
    alike = {k: summaries[k] for k in "ad"}
    card = merged_card(alike)
    assert card["counts"]["total"] == {"normal": sum(s["counts"]["total"]["normal"] for s in alike.values()),
                                       "lesion": sum(s["counts"]["total"]["lesion"] for s in alike.values())}
    merged, single = card["images"]["intensity"]["percentiles"], summaries["a"]["images"]["intensity"]["percentiles"]
    assert merged["50"] == pytest.approx(single["50"], abs=3)  # alike sites: close to either
    shifted = merged_card({k: summaries[k] for k in "ac"})["images"]["intensity"]["percentiles"]
    low, high = sorted((summaries["a"]["images"]["intensity"]["percentiles"]["50"],
                        summaries["c"]["images"]["intensity"]["percentiles"]["50"]))
    assert low < shifted["50"] < high  # between the two sites' medians
    config, plan = plan_federation(alike, probe=False, rounds=3)
    assert config.data.input_size == (32, 32) and config.data.normalization == "scale01"
    assert config.dataset.class_names == ("normal", "lesion")
    assert "/" not in config.dataset.source  # the server never learns where a site's data is
    assert plan.rounds == 3 and plan.reasons["rounds"] == "3: asked for"


def test_pooled_quantiles_of_two_uniform_sites():
    # site 1 uniform on [0, 100], site 2 on [100, 200], equal weights: the pooled median is 100, quartiles 50 / 150
    curves = [{0.0: 0.0, 50.0: 50.0, 100.0: 100.0}, {0.0: 100.0, 50.0: 150.0, 100.0: 200.0}]
    assert pooled_quantiles(curves, [1, 1], (25.0, 50.0, 75.0)) == pytest.approx([50.0, 100.0, 150.0])
    assert pooled_quantiles(curves, [3, 1], (50.0,)) == pytest.approx([200 / 3])  # 3:1 -> median in site 1


def test_federation_yaml_round_trip_and_unknown_keys(tmp_path):
    plan = FederationPlan("fedprox", rounds=4, local_epochs=2, proximal_mu=0.01, reasons={"strategy": "why"})
    path = write_federation(tmp_path / "federation.yaml", plan)
    assert read_federation(path) == plan
    path.write_text(path.read_text().replace("local_epochs", "local_epoch"))
    with pytest.raises(ConfigError, match="unknown key `local_epoch`; did you mean `local_epochs`"):
        read_federation(path)
    with pytest.raises(ConfigError, match="strategy 'fedsgd'"):
        replace(plan, strategy="fedsgd")


def test_an_asked_strategy_is_used_with_what_the_data_suggested(summaries):
    _, plan = plan_federation({k: summaries[k] for k in "ad"}, probe=False, strategy="fedbn")
    assert plan.strategy == "fedbn" and plan.reasons["strategy"] == "fedbn: asked for (--strategy); the sites' " \
        "differences suggest fedavg"
    with pytest.raises(ConfigError, match="--strategy fedbn keeps each site's batch-norm layers, but differential"):
        plan_federation({k: summaries[k] for k in "ad"}, probe=False, strategy="fedbn", dp_epsilon=8.0)
    with pytest.raises(ConfigError, match="--strategy fedsgd: choose one of fedavg, fedprox, fedbn"):
        plan_federation({k: summaries[k] for k in "ad"}, probe=False, strategy="fedsgd")


def test_sites_sharing_this_machine_get_the_epochs_it_fits_not_one_machine_each(summaries):
    from medlens.federated.plan import _schedule

    config, _ = plan_federation({k: summaries[k] for k in "ab"}, probe=False)
    config = replace(config, train=replace(config.train, max_epochs=6))
    timed = {"train.max_epochs": "6: the timing probe fits 6 epochs in the budget"}
    apart = _schedule(config, dict(timed), {k: summaries[k] for k in "ab"}, None, {})
    fed = {}
    shared = _schedule(config, dict(timed), {k: summaries[k] for k in "ab"}, None, fed, shared_machine=True)
    assert shared[0] * shared[1] == 6 < apart[0] * apart[1]  # two like sites apart: about twice the epochs
    assert "every site trains here (federate), sharing it" in fed["rounds"]


def test_local_epochs_asked_for_replace_the_budgets(summaries):
    config, plan = plan_federation({k: summaries[k] for k in "ad"}, probe=False, rounds=2, local_epochs=3)
    assert (plan.rounds, plan.local_epochs, config.train.max_epochs) == (2, 3, 6)
    assert plan.reasons["local_epochs"].startswith("3: asked for (the budget suggested")
    with pytest.raises(ConfigError, match="--local-epochs 0: give 1 or more"):
        plan_federation({k: summaries[k] for k in "ad"}, probe=False, local_epochs=0)


def test_a_sites_split_is_kept_between_messages_until_its_data_change(tmp_path, monkeypatch):
    import shutil

    import medlens.federated.summaries as summaries_module
    from medlens.federated.summaries import split_for, summary_and_split

    data = write_site(tmp_path / "site", patients=12, lesion_share=0.5, seed=5)
    summary, kept = summary_and_split(data, name="north")
    assert summary == site_summary(data, name="north") and set(kept) == {"key", "seed", "splits"}
    assert "PATZQX000" not in json.dumps(summary)  # the split (case ids) stays out of what is sent

    def no_audit(*args, **kwargs):
        raise AssertionError("audited although the kept split still holds")

    with monkeypatch.context() as patch:
        patch.setattr(summaries_module, "inspect_dataset", no_audit)
        record, reused = split_for(open_dataset(data), seed=0, kept=kept)
    assert reused and record["splits"] == kept["splits"]
    assert not split_for(open_dataset(data), seed=1, kept=kept)[1]  # another seed: another split
    image = next(data.parent.glob("scans/*.png"))
    shutil.copy(next(p for p in data.parent.glob("scans/*.png") if p != image), image)  # one file rewritten
    record, reused = split_for(open_dataset(data), seed=0, kept=kept)
    assert not reused and record["key"] != kept["key"]


def test_a_budget_planned_federation_is_replanned_at_the_pace_round_1_measured():
    from medlens.federated.plan import EXCHANGE_SHARE, replan_after_first_round

    plan = FederationPlan("fedprox", rounds=10, local_epochs=4, reasons={"strategy": "label skew"})
    # the slowest site fitted 4 epochs in 40 s; the round took 67 s: 27 s of exchange a round
    record = {"seconds": 67.0, "sites": {"a": {"seconds": 40.0}, "b": {"seconds": 5.0}}}
    new = replan_after_first_round(plan, record, 600.0)
    rounds_left = new.rounds - 1
    assert rounds_left * 27.0 <= EXCHANGE_SHARE * 600.0 < (rounds_left + 2) * 27.0  # as many as the share allows
    assert 67.0 + rounds_left * (27.0 + 10.0 * new.local_epochs) <= 600.0  # the rest fits the budget
    assert 67.0 + rounds_left * (27.0 + 10.0 * (new.local_epochs + 1)) > 600.0  # and fills it
    assert (new.rounds, new.local_epochs) == (5, 10) and new.strategy == "fedprox"
    assert "re-planned after round 1" in new.reasons["rounds"] and new.reasons["strategy"] == "label skew"
    cheap = replan_after_first_round(plan, {"seconds": 6.0, "sites": {"a": {"seconds": 4.0}}}, 600.0)
    assert cheap.rounds == 10 and 4 + 9 * cheap.local_epochs <= 100  # at most 100 epochs in all
    assert replan_after_first_round(plan, {"seconds": 350.0, "sites": {"a": {"seconds": 300.0}}}, 600.0) is None
