"""``model.norm: group``: batch norm becomes group norm, in the layout Opacus's fix gives (DP runs load by plan)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from medlens.config import Config, DataSection, DatasetSection, ModelSection
from medlens.errors import ConfigError
from medlens.models import build_classifier
from medlens.models.norms import with_norm
from medlens.tasks import task_for
from medlens.tasks.base import check_ignored


def kinds(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules()}


def test_group_norm_replaces_every_batch_norm_with_gcd_32_groups():
    net = with_norm(build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(28, 28)), "group")
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds(net))
    assert all(m.num_groups == 32 if m.num_channels % 32 == 0 else m.num_channels % m.num_groups == 0 for m in norms)
    assert net(torch.zeros(1, 1, 28, 28)).shape == (1, 2)  # one example: batch norm in training mode could not


def test_batch_leaves_the_network_as_built_and_other_names_are_refused():
    net = build_classifier("seedcnn_2d", in_channels=1, num_classes=2, input_size=(28, 28))
    assert with_norm(net, "batch") is net and nn.BatchNorm2d in kinds(net)
    with pytest.raises(ValueError, match="norm='layer'"):
        with_norm(net, "layer")


def test_group_norm_weights_of_opacus_fix_load_into_the_planned_network():
    pytest.importorskip("opacus")
    from opacus.validators import ModuleValidator

    built = build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(28, 28))
    fixed = ModuleValidator.fix(built)  # what a DP site trains
    planned = with_norm(build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(28, 28)), "group")
    planned.load_state_dict(fixed.state_dict())  # strict: the same keys and shapes


@pytest.mark.parametrize("dims, views", [(2, 1), (3, 1), (2, 3)])
def test_classification_builds_the_planned_norm(dims, views):
    config = Config(dataset=DatasetSection(task="binary", class_names=("a", "b")),
                    data=DataSection(input_size=(16,) * dims, channels=1,
                                     views=tuple(f"v{i}" for i in range(views)) if views > 1 else (),
                                     fusion="views" if views > 1 else "channels"),
                    model=ModelSection(name=f"seedcnn_{dims}d", norm="group"))
    model = task_for(config).build_model(config)
    assert nn.GroupNorm in kinds(model)
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds(model))


def test_tasks_without_the_option_refuse_it():
    config = Config(dataset=DatasetSection(task="detection", class_names=("background", "cell")),
                    model=replace(ModelSection(), norm="group"))
    with pytest.raises(ConfigError, match="model.norm='group' does nothing for detection"):
        check_ignored(task_for(config), config)
