"""Engine pieces without a training run: checkpoints, weight transfer, run folders, the epoch CSV,
learning-rate schedules and losses."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from medlens.engine.callbacks import EpochCSV
from medlens.errors import ConfigError
from medlens.models import build_classifier
from medlens.models.weights import load_state_dict, save_atomic, transfer_weights
from medlens.runs import RunFolder, new_run, open_run, read_epoch_rows
from medlens.tasks.classification.fit import CSV_METRICS as CLASSIFICATION_METRICS
from medlens.tasks.losses import LOSSES, build_loss
from medlens.tasks.optim import schedule_factor

# ---- checkpoints ------------------------------------------------------------------------------

def test_save_atomic_leaves_only_the_file(tmp_path):
    state = {"w": torch.arange(3.0)}

    path = save_atomic(state, tmp_path / "sub" / "weights.pt")

    assert path == tmp_path / "sub" / "weights.pt"
    assert [p.name for p in path.parent.iterdir()] == ["weights.pt"]
    torch.testing.assert_close(torch.load(path, weights_only=True)["w"], state["w"])


def test_save_atomic_replaces_and_cleans_up_on_failure(tmp_path):
    path = save_atomic({"w": torch.zeros(2)}, tmp_path / "weights.pt")

    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails, whatever the exact type
        save_atomic({"w": lambda: 0}, path)

    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]  # the old file, no temporary
    torch.testing.assert_close(load_state_dict(path)["w"], torch.zeros(2))


def test_load_state_dict_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"a": object()}, path)

    with pytest.raises(ConfigError, match=r"evil\.pt: not a loadable weights file .*weights_only=True"):
        load_state_dict(path)


def test_load_state_dict_refuses_non_tensors(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"a": 1, "b": torch.zeros(1)}, path)

    with pytest.raises(ConfigError, match=r"numbers\.pt: holds no state_dict of tensors"):
        load_state_dict(path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ConfigError, match=r"holds no state_dict of tensors"):
        load_state_dict(path)


def test_load_state_dict_strips_the_lightning_prefix(tmp_path):
    x, y = torch.ones(2), torch.zeros(3)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"model.x": x, "model.head.y": y, "loss.weight": torch.ones(1)}, "epoch": 3}, path)

    state = load_state_dict(path)

    assert set(state) == {"x", "head.y"}
    torch.testing.assert_close(state["x"], x)
    torch.testing.assert_close(state["head.y"], y)


def test_load_state_dict_of_a_run_folder_and_missing_files(tmp_path):
    save_atomic({"w": torch.ones(1)}, tmp_path / "run" / "weights.pt")

    assert set(load_state_dict(tmp_path / "run")) == {"w"}
    with pytest.raises(ConfigError, match=r"absent\.pt: no such checkpoint; give a run folder"):
        load_state_dict(tmp_path / "absent.pt")
    with pytest.raises(ConfigError, match=r"empty/weights\.pt: no such checkpoint"):
        (tmp_path / "empty").mkdir()
        load_state_dict(tmp_path / "empty")


def seedcnn(num_classes: int, seed: int):
    torch.manual_seed(seed)
    return build_classifier("seedcnn_2d", in_channels=1, num_classes=num_classes, input_size=(28, 28))


def test_transfer_weights_reinitialises_only_the_head(tmp_path):
    source = seedcnn(2, seed=0)
    save_atomic(source.state_dict(), tmp_path / "weights.pt")
    target = seedcnn(5, seed=1)
    fresh_head = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("head.")}

    report = transfer_weights(target, tmp_path / "weights.pt")

    assert report["reinitialised"] == ["head.fc.bias", "head.fc.weight"]
    assert report["missing"] == []
    assert report["loaded"] == len(target.state_dict()) - 2
    for key, value in target.state_dict().items():
        if key.startswith("head."):
            torch.testing.assert_close(value, fresh_head[key])
        else:
            torch.testing.assert_close(value, source.state_dict()[key])
    assert target(torch.zeros(2, 1, 28, 28)).shape == (2, 5)


def test_transfer_weights_between_equal_models_copies_everything(tmp_path):
    source = seedcnn(3, seed=0)
    save_atomic(source.state_dict(), tmp_path / "weights.pt")
    target = seedcnn(3, seed=1)

    report = transfer_weights(target, tmp_path)

    assert report["reinitialised"] == [] and report["loaded"] == len(source.state_dict())
    x = torch.randn(2, 1, 28, 28)
    source.eval(), target.eval()
    torch.testing.assert_close(target(x), source(x))


def test_transfer_weights_refuses_another_network(tmp_path):
    other = build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(28, 28), width=0.25)
    save_atomic(other.state_dict(), tmp_path / "weights.pt")
    target = seedcnn(2, seed=0)
    before = {k: v.clone() for k, v in target.state_dict().items()}

    with pytest.raises(ConfigError, match=r"only \d+ of 26 weight tensors fit this seedcnn_2d .*checkpoint of another "
                                          r"network or task"):
        transfer_weights(target, tmp_path / "weights.pt")

    for key, value in target.state_dict().items():  # nothing was loaded
        torch.testing.assert_close(value, before[key])


# ---- run folders ------------------------------------------------------------------------------

def test_new_run_creates_the_folder_with_run_json(tmp_path):
    run = new_run(tmp_path / "out", "ignored")

    assert run.root == tmp_path / "out"
    info = json.loads(run.info.read_text())
    assert info["status"] == "created" and info["medlens_run_version"] == 1
    assert run.weights == tmp_path / "out" / "weights.pt"
    assert run.last_checkpoint == tmp_path / "out" / "checkpoints" / "last.ckpt"


def test_new_run_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")

    with pytest.raises(ConfigError, match=r"out already holds a run; choose another --out, or continue it with "
                                          r"`medlens train --resume .*out`"):
        new_run(tmp_path / "out", "x")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_new_run_reuses_an_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()

    assert new_run(tmp_path / "out", "x").root == tmp_path / "out"


def test_new_run_without_out_picks_a_free_name(tmp_path):
    first = new_run(None, "chest x-ray/v1", runs_root=tmp_path)
    second = new_run(None, "chest x-ray/v1", runs_root=tmp_path)
    third = new_run(None, "chest x-ray/v1", runs_root=tmp_path)

    assert first.root == tmp_path / "chest-x-ray-v1"
    assert second.root == tmp_path / "chest-x-ray-v1-2"
    assert third.root == tmp_path / "chest-x-ray-v1-3"


def test_new_run_without_a_usable_name(tmp_path):
    assert new_run(None, "///", runs_root=tmp_path).root == tmp_path / "run"


def test_open_run_checks_for_weights(tmp_path):
    run = new_run(tmp_path / "out", "x")

    with pytest.raises(ConfigError, match=r"training did not finish \(status created\); continue it with "
                                          r"`medlens train --resume"):
        open_run(run.root)
    assert open_run(run.root, finished=False) == run
    with pytest.raises(ConfigError, match=r"no such run folder"):
        open_run(tmp_path / "absent")
    (tmp_path / "bare").mkdir()
    with pytest.raises(ConfigError, match=r"not a medlens run folder \(no readable run\.json\)"):
        open_run(tmp_path / "bare")


def test_update_info_merges(tmp_path):
    run = new_run(tmp_path / "out", "x")

    run.update_info(status="running", epochs=3)
    info = run.update_info(status="finished")

    assert info["status"] == "finished" and info["epochs"] == 3 and "created" in info
    assert RunFolder(run.root).read_info() == info
    assert run.read_calibration() == {"temperature": 1.0, "threshold": 0.5}


# ---- the epoch CSV ----------------------------------------------------------------------------

def test_read_epoch_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    assert read_epoch_rows(path) == []
    path.write_text("epoch,train_loss,val_loss,val_auc,val_accuracy,lr,elapsed_s\n"
                    "0,0.7,0.69,0.5,0.5,0.001,1.50\n"
                    "1,0.6,,0.75,0.6,0.0009,3.00\n")

    rows = read_epoch_rows(path)

    assert rows == [{"epoch": "0", "train_loss": "0.7", "val_loss": "0.69", "val_auc": "0.5", "val_accuracy": "0.5",
                     "lr": "0.001", "elapsed_s": "1.50"},
                    {"epoch": "1", "train_loss": "0.6", "val_loss": "", "val_auc": "0.75", "val_accuracy": "0.6",
                     "lr": "0.0009", "elapsed_s": "3.00"}]


def start(callback: EpochCSV, trainer) -> None:
    """Lightning's start hooks in their order (the trimming may sit in either)."""
    callback.on_fit_start(trainer, None)
    callback.on_train_start(trainer, None)


def fake_trainer(epoch: int, metrics: dict | None = None, lr: float = 1e-3):
    optimizer = SimpleNamespace(param_groups=[{"lr": lr * 0.1}, {"lr": lr}])
    return SimpleNamespace(global_rank=0, current_epoch=epoch, sanity_checking=False,
                           callback_metrics={k: torch.tensor(v) for k, v in (metrics or {}).items()},
                           optimizers=[optimizer])


def test_epoch_csv_appends_a_row_per_epoch(tmp_path):
    path = tmp_path / "metrics.csv"
    callback = EpochCSV(path, CLASSIFICATION_METRICS)

    start(callback, fake_trainer(0))
    callback.on_train_epoch_end(fake_trainer(0, {"train_loss": 0.5, "val_auc": 0.75}), None)
    callback.on_train_epoch_end(fake_trainer(1, {"train_loss": 0.25}, lr=5e-4), None)

    rows = read_epoch_rows(path)
    assert path.read_text().splitlines()[0] == ",".join(["epoch", *CLASSIFICATION_METRICS, "lr", "elapsed_s"])
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert (rows[0]["train_loss"], rows[0]["val_auc"], rows[0]["val_loss"], rows[0]["lr"]) == ("0.5", "0.75", "",
                                                                                              "0.001")
    assert rows[1]["lr"] == "0.0005"  # the head's group, the last one
    assert float(rows[0]["elapsed_s"]) <= float(rows[1]["elapsed_s"])


def test_epoch_csv_on_resume_drops_epochs_the_checkpoint_had_not_reached(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss,val_loss,val_auc,val_accuracy,lr,elapsed_s\n"
                    + "".join(f"{e},0.5,0.5,0.5,0.5,0.001,{10.0 * (e + 1):.2f}\n" for e in range(4)))
    callback = EpochCSV(path, CLASSIFICATION_METRICS)

    start(callback, fake_trainer(2))  # resumed from the end of epoch 1

    assert [r["epoch"] for r in read_epoch_rows(path)] == ["0", "1"]
    assert callback.elapsed_before == 20.0
    callback.on_train_epoch_end(fake_trainer(2, {"train_loss": 0.1}), None)
    rows = read_epoch_rows(path)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert float(rows[2]["elapsed_s"]) >= 20.0


def test_epoch_csv_ignores_other_ranks_and_sanity_checks(tmp_path):
    path = tmp_path / "metrics.csv"
    callback = EpochCSV(path, CLASSIFICATION_METRICS)
    sanity = fake_trainer(0, {"train_loss": 1.0})
    sanity.sanity_checking = True
    other_rank = fake_trainer(0, {"train_loss": 1.0})
    other_rank.global_rank = 1

    callback.on_train_epoch_end(sanity, None)
    callback.on_train_epoch_end(other_rank, None)
    start(callback, other_rank)

    assert not path.exists()


# ---- learning-rate schedules ------------------------------------------------------------------

@pytest.mark.parametrize(("step", "expected"), [(0, 1.0), (50, 0.5), (25, 0.5 * (1 + math.cos(math.pi / 4))),
                                                (100, 0.0), (150, 0.0)])
def test_cosine_schedule(step, expected):
    assert schedule_factor("cosine", step, 100) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.04), (15, 0.52), (30, 1.0), (65, 0.5), (100, 0.0)])
def test_onecycle_schedule(step, expected):
    assert schedule_factor("onecycle", step, 100) == pytest.approx(expected, abs=1e-12)


def test_onecycle_warms_up_monotonically_then_decays():
    values = [schedule_factor("onecycle", s, 100) for s in range(101)]

    assert values.index(max(values)) == 30
    assert all(a < b for a, b in zip(values[:30], values[1:31]))
    assert all(a >= b for a, b in zip(values[30:], values[31:]))


@pytest.mark.parametrize("step", [0, 37, 100])
def test_constant_schedule(step):
    assert schedule_factor("constant", step, 100) == 1.0


# ---- losses -----------------------------------------------------------------------------------

def test_bce_on_a_single_label_task_is_refused():
    with pytest.raises(ConfigError, match=r"train\.loss=bce is a multi-label classification loss and does not fit a "
                                          r"single-label classification task; use ce or focal or ordinal_bce or "
                                          r"weighted_ce"):
        build_loss("bce", targets="index")


@pytest.mark.parametrize("name", ["ce", "weighted_ce", "focal"])
def test_single_label_losses_on_a_multilabel_task_are_refused(name):
    with pytest.raises(ConfigError, match=rf"train\.loss={name} .* does not fit a multi-label classification task; "
                                          r"use bce"):
        build_loss(name, targets="multilabel")


def test_dice_ce_is_registered_for_masks_only():
    assert LOSSES.get("dice_ce").targets == "mask"
    with pytest.raises(ConfigError, match=r"train\.loss=dice_ce is a segmentation loss .* use ce or focal or "
                                          r"ordinal_bce or weighted_ce"):
        build_loss("dice_ce", targets="index")
    logits = torch.zeros(1, 2, 4, 4)
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    assert float(build_loss("dice_ce", targets="mask")(logits, target)) > 0


def test_unknown_loss_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown loss `dice`; did you mean `dice_ce`"):
        build_loss("dice", targets="mask")


def test_ce_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    target = torch.tensor([0, 0])

    loss = build_loss("ce", targets="index")(logits, target)

    # -log(1/2) and -log(3/4), averaged
    assert loss.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)


def test_ce_with_label_smoothing_matches_torch():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    target = torch.tensor([0, 2])

    loss = build_loss("ce", targets="index", label_smoothing=0.1)(logits, target)

    torch.testing.assert_close(loss, F.cross_entropy(logits, target, label_smoothing=0.1))


def test_weighted_ce_uses_the_weights():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [1.0, 1.0, -2.0]])
    target = torch.tensor([0, 2, 1])
    weights = torch.tensor([0.2, 3.0, 1.0])

    loss = build_loss("weighted_ce", targets="index", class_weights=weights)(logits, target)

    torch.testing.assert_close(loss, F.cross_entropy(logits, target, weight=weights))
    per_case = F.cross_entropy(logits, target, reduction="none")
    expected = (per_case * weights[target]).sum() / weights[target].sum()
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, F.cross_entropy(logits, target))


def test_focal_confident_correct_is_below_uncertain():
    focal = build_loss("focal", targets="index")
    target = torch.tensor([1])

    confident = focal(torch.tensor([[-3.0, 3.0]]), target)
    uncertain = focal(torch.tensor([[0.0, 0.0]]), target)
    wrong = focal(torch.tensor([[3.0, -3.0]]), target)

    assert 0.0 <= confident.item() < uncertain.item() < wrong.item()


def test_focal_hand_computed():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # p(target) = 3/4 and 1/2
    target = torch.tensor([0, 1])

    loss = build_loss("focal", targets="index")(logits, target)

    # (1 - p)^2 * -log p per case; MONAI's mean runs over cases *and* classes (K = 2), so / 2 more
    per_case = [(1 / 4) ** 2 * -math.log(3 / 4), (1 / 2) ** 2 * -math.log(1 / 2)]
    assert loss.item() == pytest.approx(sum(per_case) / 2 / 2, rel=1e-5)


def test_focal_down_weights_easy_cases_relative_to_ce():
    focal, ce = build_loss("focal", targets="index"), build_loss("ce", targets="index")
    target = torch.tensor([0])
    easy, hard = torch.tensor([[2.0, 0.0]]), torch.tensor([[-1.0, 0.0]])

    assert focal(easy, target) / ce(easy, target) < focal(hard, target) / ce(hard, target)


def test_bce_with_smoothing_matches_torch():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
    target = torch.tensor([[1, 0, 1], [0, 1, 0]])
    pos_weight = torch.tensor([1.0, 2.0, 0.5])

    loss = build_loss("bce", targets="multilabel", class_weights=pos_weight, label_smoothing=0.2)(logits, target)

    smoothed = target.float() * 0.8 + 0.1  # 1 -> 0.9, 0 -> 0.1
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, smoothed, pos_weight=pos_weight))


# ---- --init-from: the plan takes the source run's network ----------------------------------------

def _plan_with(tmp_path, name: str, width: float, task: str = "binary", dims: int = 2):
    from medlens.config import Config, DatasetSection, ModelSection
    from medlens.engine.train import write_plan

    config = Config(dataset=DatasetSection(task=task, class_names=("a", "b"), spatial_dims=dims),
                    model=ModelSection(name=name, width=width))
    folder = tmp_path / f"{name}-{width}"
    folder.mkdir()
    write_plan(folder / "plan.yaml", config, {}, "data")
    return config, folder


def test_init_from_a_run_adopts_its_network_and_freezes_the_backbone_first(tmp_path):
    from dataclasses import replace

    from medlens.engine.train import adopt_encoder

    planned, _ = _plan_with(tmp_path, "seedcnn_2d", 1.0)
    planned = replace(planned, train=replace(planned.train, max_epochs=30))
    _, source = _plan_with(tmp_path, "resnet18_2d", 0.5)
    reasons, said = {}, []

    adopted = adopt_encoder(planned, reasons, source, log=said.append)

    assert (adopted.model.name, adopted.model.width) == ("resnet18_2d", 0.5)
    assert adopted.train.freeze_epochs == 3 and "frozen" in reasons["train.freeze_epochs"]
    assert "resnet18_2d" in said[0] and source.name in reasons["model.name"]


def test_init_from_a_file_or_a_3d_run_keeps_the_planned_network(tmp_path):
    from medlens.engine.train import adopt_encoder

    planned, _ = _plan_with(tmp_path, "seedcnn_2d", 1.0)
    _, volumes = _plan_with(tmp_path, "resnet18_3d", 1.0, dims=3)

    assert adopt_encoder(planned, {}, volumes, log=None).model == planned.model
    assert adopt_encoder(planned, {}, tmp_path / "weights.pt", log=None).model == planned.model
    segmentation, _ = _plan_with(tmp_path, "unet_2d", 1.0, task="segmentation")
    assert adopt_encoder(segmentation, {}, volumes, log=None).train.freeze_epochs == 0  # not a schedule it has


def test_skip_unreadable_is_read_from_set_and_from_the_plan_file(tmp_path):
    from dataclasses import replace

    from medlens.config import Config, render_plan
    from medlens.engine.train import skip_requested

    assert not skip_requested(None, [])
    assert skip_requested(None, ["dataset.skip_unreadable=true"])
    assert not skip_requested(None, ["dataset.skip_unreadable=true", "dataset.skip_unreadable=false"])
    plan = tmp_path / "plan.yaml"
    plan.write_text(render_plan(replace(Config(), dataset=replace(Config().dataset, skip_unreadable=True)), {}, "h"))
    assert skip_requested(plan, [])
    assert not skip_requested(plan, ["dataset.skip_unreadable=false"])
