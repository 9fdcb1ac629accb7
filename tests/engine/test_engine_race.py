"""The race (``train.race``): rivals of the plan trained on validation for a share of the budget, the winner
trains for the rest; ``run.json`` keeps the race, a resumed run does not rerun it; the classification plan
races the fast 3D networks on a CPU when its timing says each gets a few epochs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medlens.config import Config, apply_overrides
from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.prepared import open_config_dataset, split_cases
from medlens.data.splits import read_splits
from medlens.data.synthetic import chest_image
from medlens.engine.race import after_race, contestant_config, drop_overridden_rivals, pick_winner, settle_race
from medlens.engine.train import train, write_plan
from medlens.errors import ConfigError
from medlens.io import Image, identity_direction, write_image
from medlens.models import CLASSIFIERS
from medlens.runs import RunFolder, new_run
from medlens.tasks.classification import plan as classification_plan
from medlens.tasks.classification.plan import plan_classification
from tests.tasks.test_tasks_classification_plan import card

RIVALS = ["model.width=0.5", "model.name=unet_2d"]  # the last is a segmenter: it must fail
TINY = ["model.name=seedcnn_2d", "model.width=0.25", "train.max_epochs=2", "train.batch_size=8",
        "train.time_budget_s=60", "train.patience=50", "evaluate.baseline=false", "evaluate.n_bootstrap=20"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Class folders of 24 x 24 chest-like PNGs, 20 per class (a lesion is a bright blob)."""
    root = tmp_path_factory.mktemp("race") / "data"
    rng = np.random.default_rng(0)
    for label in ("normal", "lesion"):
        for k in range(20):
            pixels = chest_image(rng, lesion=label == "lesion", size=24)
            write_image(Image(pixels.T[None], (1.0, 1.0), (0.0, 0.0), identity_direction(2)),
                        root / label / f"{label}{k:02d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_plan(tiny_data) -> Path:
    """The rules' plan for ``tiny_data`` (no timing probe) as a plan file."""
    config, reasons = plan_classification(inspect_dataset(open_dataset(tiny_data)), probe=False)
    return write_plan(tiny_data.parent / "plan.yaml", config, reasons, tiny_data)


@pytest.fixture(scope="module")
def raced(tiny_data, tiny_plan) -> tuple[RunFolder, list[str]]:
    """A whole training run with a race of the plan and two rivals (one failing)."""
    lines: list[str] = []
    overrides = [*TINY, f"train.race={json.dumps(RIVALS)}", "train.race_share=0.5"]
    run = train(tiny_data, plan=tiny_plan, overrides=overrides, out=tiny_data.parent / "run", progress_bar=False,
                log=lines.append)
    return run, lines


def original(tiny_plan: Path, *extra: str) -> Config:
    from medlens.config import read_plan

    return apply_overrides(read_plan(tiny_plan)[0], [*TINY, f"train.race={json.dumps(RIVALS)}",
                                                     "train.race_share=0.5", *extra])


@pytest.mark.e2e
def test_the_race_is_in_run_json_and_the_run_trains_the_winner_for_the_budget_left(raced, tiny_plan):
    run, lines = raced
    info = run.read_info()

    assert info["status"] == "finished"
    assert [r["overrides"] for r in info["race"]] == ["", *RIVALS]
    scored = [r for r in info["race"] if "error" not in r]
    assert len(scored) == 2 and all(0.0 <= r["score"] <= 1.0 and r["epochs"] == 1 and r["seconds"] > 0
                                    for r in scored)  # 2 epochs x (0.5 x 60 s / 3) / 60 s -> at least 1 epoch
    best = max(r["score"] for r in scored)
    assert info["winner"] == next(r["overrides"] for r in scored if r["score"] == best)
    assert info["winner"] in info["race_reason"] or info["winner"] == ""
    spent = sum(r["seconds"] for r in info["race"])
    expected = after_race(original(tiny_plan), info["winner"], spent)
    saved = run.read_config()
    assert saved == expected and saved.train.race == () and saved.train.race_share == 0.0
    assert saved.train.time_budget_s == pytest.approx(60 - spent, abs=0.06)
    assert saved.train.max_epochs == max(1, int(2 * (60 - spent) / 60))
    assert int(info["epochs_run"]) <= saved.train.max_epochs
    plan_text = run.plan.read_text()
    assert "raced 3 contestants on validation" in plan_text and "what the race left of the 60 s budget" in plan_text
    assert not (run.root / "race").exists()  # the scratch runs are gone
    assert any("race: winner" in line for line in lines)


@pytest.mark.e2e
def test_a_failing_contestant_is_reported_and_dropped(raced):
    run, lines = raced
    failed = run.read_info()["race"][-1]

    assert failed["score"] is None and failed["epochs"] == 0
    assert "unet_2d" in failed["error"]
    assert any(line.startswith("race: `model.name=unet_2d` dropped after") for line in lines)
    assert "1 dropped" in run.read_info()["race_reason"]


@pytest.mark.e2e
def test_a_resumed_run_does_not_rerun_a_finished_race_and_trains_the_winner(raced, tiny_plan, tmp_path):
    """Killed after run.json recorded the winner but before plan.yaml was rewritten: the worst case."""
    run = _copy_unfinished(raced[0], tmp_path, original(tiny_plan))
    before = run.read_info()["race"]
    lines: list[str] = []

    train(resume=run.root, progress_bar=False, log=lines.append)

    info = run.read_info()
    assert info["status"] == "finished" and info["race"] == before
    assert run.read_config() == after_race(original(tiny_plan), info["winner"], sum(r["seconds"] for r in before))
    assert any("not run again" in line for line in lines) and not any(line.startswith("race: `") for line in lines)
    assert not (run.root / "race").exists()


@pytest.mark.e2e
def test_a_race_killed_half_way_trains_only_the_contestants_left(raced, tiny_plan, tmp_path):
    plan = original(tiny_plan, f"train.race={json.dumps(RIVALS[:1])}")
    run = _copy_unfinished(raced[0], tmp_path, plan)
    done = {"overrides": "", "score": 0.999, "epochs": 1, "seconds": 2.5, "monitor": "val_auc"}
    info = run.read_info()
    del info["winner"]
    info["race"] = [done]
    run.info.write_text(json.dumps(info))
    dataset = open_config_dataset(plan)
    lines: list[str] = []

    config = settle_race(run, plan, dataset, split_cases(dataset, read_splits(run.splits, dataset), 0),
                         log=lines.append)

    race = run.read_info()["race"]
    assert race[0] == done and [r["overrides"] for r in race] == ["", RIVALS[0]] and race[1]["epochs"] == 1
    assert sum(line.startswith("race: `") for line in lines) == 1  # the rival only
    assert run.read_info()["winner"] == ("" if race[1]["score"] <= 0.999 else RIVALS[0])
    assert config.train.race == () and config.train.time_budget_s < 60


def _copy_unfinished(run: RunFolder, tmp_path: Path, plan: Config) -> RunFolder:
    """The race run's run.json and splits, with the plan as it was before the race."""
    copy = new_run(tmp_path / "resumed", "resumed")
    for name in ("run.json", "splits.json"):
        shutil.copy(run.root / name, copy.root / name)
    copy.update_info(status="racing")
    write_plan(copy.plan, plan, {}, plan.dataset.source)
    return copy


# ---- the pieces -------------------------------------------------------------------------------

def test_a_contestant_gets_its_epochs_scaled_to_its_share_and_no_race_of_its_own():
    config = Config()
    config = replace(config, train=replace(config.train, max_epochs=40, time_budget_s=600.0, patience=10,
                                           race=("model.width=0.5;train.max_epochs=20",), race_share=0.25))

    contestant = contestant_config(config, "model.width=0.5;train.max_epochs=20", 75.0)

    assert contestant.model.width == 0.5
    assert (contestant.train.max_epochs, contestant.train.patience) == (2, 10)  # 20 epochs x 75 / 600 s
    assert (contestant.train.time_budget_s, contestant.train.race, contestant.train.race_share) == (75.0, (), 0.0)
    assert contestant_config(config, "", 75.0).train.max_epochs == 5
    with pytest.raises(ConfigError, match="unknown key"):
        contestant_config(config, "train.max_epoch=3", 75.0)


def test_the_winner_keeps_what_the_race_left_and_scales_its_epochs():
    config = Config()
    config = replace(config, train=replace(config.train, max_epochs=40, time_budget_s=600.0, race=("x.y=1",),
                                           race_share=0.25))

    final = after_race(config, "model.width=0.5;train.max_epochs=20", 150.0)

    assert (final.model.width, final.train.max_epochs, final.train.time_budget_s) == (0.5, 15, 450.0)
    assert (final.train.race, final.train.race_share) == ((), 0.0)
    assert after_race(config, "", 1000.0).train.time_budget_s == 30.0  # at least 5% of the budget is left


def test_the_best_score_wins_ties_go_to_the_plan_and_all_failed_is_an_error():
    def entry(overrides, score, monitor="val_auc"):
        return {"overrides": overrides, "score": score, "epochs": 2, "seconds": 1.0, "monitor": monitor}

    assert pick_winner([entry("", 0.8), entry("a.b=1", 0.9), entry("c.d=2", 0.9)])["overrides"] == "a.b=1"
    assert pick_winner([entry("", 0.9), entry("a.b=1", 0.9)])["overrides"] == ""
    assert pick_winner([entry("", 0.4, "val_loss"), entry("a.b=1", 0.3, "val_loss")])["overrides"] == "a.b=1"
    failed = {**entry("a.b=1", None), "error": "ConfigError: no"}
    assert pick_winner([failed, entry("", 0.5)])["overrides"] == ""
    with pytest.raises(ConfigError, match=r"every contestant of the race failed:\n  `a.b=1` dropped .*ConfigError: "
                                          r"no\n.*train.race_share=0"):
        pick_winner([failed])


# ---- the classification plan's race -----------------------------------------------------------

VOLUMES = {"shape": (8, 8, 8), "dtypes": ("float32",), "train": {"normal": 40, "lesion": 40}}


@pytest.fixture
def one_thread():
    """Time the networks on one thread: on a shared 2-core machine two threads wait on each other for seconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_3d_plan_on_a_cpu_races_the_registered_fast_networks_with_its_reasons(monkeypatch, one_thread):
    monkeypatch.setattr(classification_plan, "RIVALS_3D_CPU",
                        (*classification_plan.RIVALS_3D_CPU, ("notregistered_3d", 0.5)))
    registered = [n for n, _ in classification_plan.RIVALS_3D_CPU if n in CLASSIFIERS]

    config, reasons = plan_classification(card(**VOLUMES), time_budget_s=1e5, device="cpu")  # any load fits

    raced = [dict(part.split("=") for part in rival.split(";")) for rival in config.train.race]
    assert sorted(r["model.name"] for r in raced) == sorted(registered) and registered
    assert all(int(r["train.max_epochs"]) >= 12 and r["model.width"] == "0.5" for r in raced)  # >= 3 in 25% / 4
    assert config.train.race_share == 0.25 and config.model.name == "seedcnn_3d"
    assert f"{len(raced)} fast 3D network(s) race the planned seedcnn_3d" in reasons["train.race"]
    assert f"25% of the 100000 s budget for the race: {25_000 / (len(raced) + 1):.0f} s for each of " \
           f"{len(raced) + 1} contestants" in reasons["train.race_share"]
    assert "notregistered_3d" not in reasons["train.race"]
    for rival in config.train.race:  # every rival is a valid set of overrides of this plan
        assert apply_overrides(config, rival.split(";")).model.name in registered


def test_a_budget_too_short_for_a_few_epochs_each_says_so_and_races_nothing(one_thread):
    config, reasons = plan_classification(card(**VOLUMES), time_budget_s=2.0, device="cpu")

    assert (config.train.race, config.train.race_share) == ((), 0.0)
    assert reasons["train.race"].startswith("no race of 3D networks: a 2 s budget is too short: the planned ")
    assert f"would be cut to under {classification_plan.MIN_RACE_EPOCHS} in an equal share" in reasons["train.race"]


def test_no_network_race_in_2d_on_a_gpu_or_untimed():
    for shape in ((28, 28), (64, 64)):
        config, reasons = plan_classification(card(shape=shape), time_budget_s=600.0, probe=False)
        assert config.train.race == () and "train.race" not in reasons
    for device, why in (("gpu", "on a GPU the planned ResNet-18 (3D) is the reference network"),
                        ("cpu", "the networks were not timed")):
        config, reasons = plan_classification(card(**VOLUMES), time_budget_s=600.0, device=device, probe=False)
        assert config.train.race == () and reasons["train.race"] == f"no race of 3D networks: {why}"


def test_a_rival_setting_a_key_the_user_chose_is_dropped_with_the_reason():
    config = Config()
    rivals = ("model.name=acsresnet18_3d;train.max_epochs=40", "train.loss=focal")
    config = replace(config, train=replace(config.train, race=rivals, race_share=0.25))
    reasons, lines = {"train.race": "planned"}, []

    kept = drop_overridden_rivals(config, ["train.max_epochs ", "train.patience"], reasons, lines.append)

    assert kept.train.race == ("train.loss=focal",)
    assert reasons["train.race"] == ("planned; `model.name=acsresnet18_3d;train.max_epochs=40` dropped: "
                                     "train.max_epochs set on the command line")
    assert lines == [f"race: {reasons['train.race'].removeprefix('planned; ')}"]
    assert drop_overridden_rivals(config, ["train.race", "train.loss"], {}, print) is config  # the user's own race
    assert drop_overridden_rivals(config, ["model.width"], {}, print) is config
