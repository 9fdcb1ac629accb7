"""The task interface: one registry, every task behind one protocol, no task name compared elsewhere."""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

import pytest

from medlens.config import (
    Config,
    DataSection,
    DatasetSection,
    ModelSection,
    TrainSection,
    apply_overrides,
    config_from_dict,
    render_plan,
)
from medlens.errors import ConfigError
from medlens.tasks import TASKS, Task, all_kinds, register_task, task_for, task_named
from medlens.types import Task as Kind

SRC = Path(__file__).resolve().parents[2] / "src" / "medlens"


def test_every_kind_the_data_layer_detects_has_exactly_one_task():
    assert sorted(all_kinds()) == sorted(k.value for k in Kind)
    assert task_for("binary") is task_for("multilabel") is task_named("classification")
    assert task_for("segmentation") is task_named("segmentation")
    assert task_for("anomaly") is task_named("anomaly")  # asked for by name (--task anomaly), not by the data
    assert task_for(Config(dataset=DatasetSection(task="ordinal"))).name == "classification"


@pytest.mark.parametrize("name", ["classification", "segmentation", "detection", "anomaly", "pretraining"])
def test_registered_tasks_satisfy_the_protocol(name):
    from medlens.deploy.service import OPTIONS

    task = task_named(name)
    assert isinstance(task, Task)
    assert task.monitors and set(task.service_options) <= set(OPTIONS)
    fields = {f"{s}.{k}" for s, v in Config().as_dict().items() for k in v} | set(Config().as_dict())
    assert task.ignored <= fields, f"{name} ignores keys that do not exist: {sorted(task.ignored - fields)}"


def test_an_unknown_kind_names_the_tasks_there_are():
    with pytest.raises(ConfigError, match=r"no task trains `boxes` data; the tasks are .*classification \(binary, "):
        task_for("boxes")
    with pytest.raises(ConfigError, match=r"unknown task `segmentaton`; did you mean `segmentation`"):
        task_named("segmentaton")


def test_a_kind_belongs_to_one_task():
    class Duplicate:
        name, kinds = "duplicate", ("binary",)

    with pytest.raises(ValueError, match=r"kind\(s\) \['binary'\] already belong to task 'classification'"):
        register_task(Duplicate())
    assert "duplicate" not in TASKS


# ---- no code outside the tasks compares a task name ---------------------------------------------------

def _names() -> set[str]:
    return set(TASKS.names()) | set(all_kinds())


def _compared_names(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """``(line, name)`` of every comparison (==, !=, in, is) with a task or kind name, as a string or a
    :class:`medlens.types.Task` member."""
    members = {k.name for k in Kind}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            for v in values:
                if isinstance(v, ast.Constant) and v.value in names:
                    found.append((node.lineno, v.value))
                elif isinstance(v, ast.Attribute) and v.attr in members and getattr(v.value, "id", "") == "Task":
                    found.append((node.lineno, f"Task.{v.attr}"))
    return found


def test_the_check_finds_a_comparison_when_there_is_one():
    code = 'if config.dataset.task == "segmentation" or kind in ("binary", "x") or task is Task.MULTILABEL: pass'
    assert [n for _, n in _compared_names(ast.parse(code), _names())] == ["segmentation", "binary", "Task.MULTILABEL"]


def test_no_code_outside_the_task_packages_compares_a_task_name():
    names, offenders = _names(), []
    for path in sorted(SRC.rglob("*.py")):
        if (SRC / "tasks") in path.parents:
            continue
        for line, name in _compared_names(ast.parse(path.read_text(encoding="utf-8")), names):
            offenders.append(f"{path.relative_to(SRC)}:{line} compares {name}")
    page = (SRC / "deploy" / "page.html").read_text(encoding="utf-8")
    offenders += [f"deploy/page.html compares {m}" for m in re.findall(r"=== *[\"'](\w+)[\"']", page) if m in names]
    assert not offenders, "ask the task object instead:\n" + "\n".join(offenders)


# ---- every config key does what it says -----------------------------------------------------------------

def classifier(**train) -> Config:
    return Config(dataset=DatasetSection(task="binary", class_names=("a", "b"), spatial_dims=2),
                  data=DataSection(input_size=(28, 28)), model=ModelSection(name="seedcnn_2d"),
                  train=TrainSection(**train))


def segmenter(**train) -> Config:
    return Config(dataset=DatasetSection(task="segmentation", class_names=("background", "lesion"),
                                         label_values=(0, 1), spatial_dims=2),
                  data=DataSection(input_size=(32, 32)), model=ModelSection(name="unet_2d"),
                  train=TrainSection(loss="dice_ce", monitor="val_dice", **train))


def test_plans_that_fit_their_task_pass_the_check():
    task_for(classifier()).check(classifier())
    task_for(segmenter()).check(segmenter())


def test_a_key_the_task_ignores_is_refused_not_dropped():
    with pytest.raises(ConfigError, match=r"train\.freeze_epochs=3 does nothing for segmentation runs .* remove it"):
        task_for("segmentation").check(segmenter(freeze_epochs=3))
    config = apply_overrides(classifier(), ["segment.keep_largest=always"])
    with pytest.raises(ConfigError, match=r"segment\.keep_largest='always' does nothing for classification runs"):
        task_for(config).check(config)


def test_a_monitor_or_loss_of_another_task_is_refused():
    with pytest.raises(ConfigError, match=r"train\.monitor=val_dice: classification runs log val_auc, val_loss"):
        task_for("binary").check(classifier(monitor="val_dice"))
    with pytest.raises(ConfigError, match=r"train\.loss=ce is a single-label classification loss and does not fit "
                                          r"a segmentation task; use dice_ce"):
        task_for("segmentation").check(replace(segmenter(), train=replace(segmenter().train, loss="ce")))
    with pytest.raises(ConfigError, match=r"unknown loss `dice_c`; did you mean `dice_ce`"):
        task_for("segmentation").check(replace(segmenter(), train=replace(segmenter().train, loss="dice_c")))


def test_plans_leave_out_the_keys_their_task_ignores():
    text = render_plan(classifier(), {}, omit=task_for("binary").ignored)
    assert "segment:" not in text and "filters:" not in text and "freeze_epochs:" in text
    text = render_plan(segmenter(), {}, omit=task_for("segmentation").ignored)
    assert "segment:" in text and "freeze_epochs:" not in text and "members:" not in text


def test_plans_of_earlier_versions_read_with_todays_keys():
    old = {"train": {"optimizer": "sgd", "loss": "dice_ce"}, "segment": {"mirror_tta": True}}
    config = config_from_dict(old)
    assert config.evaluate.tta is True and config.train.momentum == 0.99
    assert config_from_dict({"train": {"optimizer": "adamw", "loss": "ce"}}).train.momentum == 0.9
    with pytest.raises(ConfigError, match=r"--set segment\.mirror_tta: this key is now `evaluate\.tta`"):
        apply_overrides(Config(), ["segment.mirror_tta=true"])


def test_momentum_reaches_sgd_and_leaves_adamw_alone():
    import torch

    from medlens.tasks.optim import build_optimizer

    sgd = build_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainSection(optimizer="sgd", momentum=0.7))
    assert sgd.param_groups[0]["momentum"] == 0.7 and sgd.param_groups[0]["nesterov"]
    # a segmentation plan (SGD, momentum 0.99) switched to AdamW keeps AdamW's own decays
    adamw = build_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainSection(optimizer="adamw", momentum=0.99))
    assert adamw.param_groups[0]["betas"] == (0.9, 0.999)
