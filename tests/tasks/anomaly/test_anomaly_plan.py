"""The anomaly plan rules and the task's checks, on the synthetic blob set's card (no network timing)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest

from medlens.errors import ConfigError, DatasetError
from medlens.tasks import task_named
from medlens.tasks.anomaly.plan import MEMORY_CAP, plan_anomaly


@pytest.fixture(scope="module")
def card(blob_csv):
    from medlens.data import open_dataset
    from medlens.data.audit import inspect_dataset

    return inspect_dataset(open_dataset(blob_csv))


def test_plan_takes_the_classification_preprocessing_and_bounds_the_memory(card):
    config, reasons = plan_anomaly(card, device="cpu", probe=False, normal=("normal",))
    assert config.dataset.task == "anomaly" and config.dataset.class_names == ("normal", "blob")
    assert config.data.input_size == (32, 32) and config.model.name == "resnet18_2d"
    a = config.anomaly
    assert a.normal == ("normal",) and a.method == "gaussian_knn" and a.fpr == 0.05
    assert "Chosen on validation AUROC" in reasons["anomaly.method"]
    grid = task_named("anomaly").build_model(replace(config, anomaly=replace(a, method="patchcore"))).grid
    normal_train = int(60 * 0.64)  # generated splits: ~64% of the 60 normal cases train
    patchcore = math.ceil(0.1 * normal_train * math.prod(grid))
    assert a.memory_size == min(max(patchcore, normal_train), MEMORY_CAP["cpu"])  # room for every normal image
    assert config.train.monitor == "val_loss"
    for key in ("anomaly.method", "anomaly.memory_size", "anomaly.fpr", "train.max_epochs", "data.input_size"):
        assert reasons[key], key
    task_named("anomaly").check(config)


def test_8_bit_images_are_z_scored_per_image_and_ct_windows_kept(card):
    """A one-class model would flag an acquisition's brightness and contrast; CT's units are absolute."""
    config, reasons = plan_anomaly(card, device="cpu", probe=False, normal=("normal",))
    assert set(card["images"]["dtypes"]) == {"uint8"}
    assert config.data.normalization == "zscore" and config.data.intensity_range == ()
    assert "z-score per image" in reasons["data.normalization"] and "data.intensity_range" not in reasons
    ct = copy.deepcopy(card)
    ct["dataset"]["modality"] = "CT"
    config, reasons = plan_anomaly(ct, device="cpu", probe=False, normal=("normal",))
    assert config.data.normalization == "ct_window" and "Hounsfield" in reasons["data.normalization"]


def test_memory_is_capped_as_data_grow(card):
    big = copy.deepcopy(card)
    big["counts"]["total"]["normal"] = 1_000_000
    config, _ = plan_anomaly(big, device="cpu", probe=False, normal=("normal",))
    assert config.anomaly.memory_size == MEMORY_CAP["cpu"]


def test_normal_must_name_a_class(card):
    with pytest.raises(ConfigError, match=r"--normal healthy: no such class .* the classes are normal, blob"):
        plan_anomaly(card, probe=False, normal=("healthy",))
    with pytest.raises(ConfigError, match="add --normal CLASS"):
        plan_anomaly(card, probe=False, normal=())
    with pytest.raises(ConfigError, match="names every class"):
        plan_anomaly(card, probe=False, normal=("normal", "blob"))


def test_no_normal_training_case_is_refused(card):
    none = copy.deepcopy(card)
    none["counts"]["by_split"] = {"train": {"normal": 0, "blob": 30}, "test": {"normal": 20, "blob": 5}}
    with pytest.raises(DatasetError, match=r"no normal training case \(normal: the training split\)"):
        plan_anomaly(none, probe=False, normal=("normal",))


def test_check_refuses_what_the_method_cannot_build(card):
    config, _ = plan_anomaly(card, probe=False, normal=("normal",))
    task = task_named("anomaly")
    with pytest.raises(ConfigError, match="set model.name=autoencoder_2d"):
        task.check(replace(config, anomaly=replace(config.anomaly, method="autoencoder")))
    task.check(replace(config, anomaly=replace(config.anomaly, method="autoencoder"),
                       model=replace(config.model, name="autoencoder_2d")))
    densenet = replace(config.model, name="densenet121_2d", width=1.0)
    with pytest.raises(ConfigError, match="gaussian summarises the stages of a ResNet or SeedCNN"):
        task.check(replace(config, model=densenet))
    with pytest.raises(ConfigError, match="patchcore taps two intermediate stages"):
        task.check(replace(config, model=densenet, anomaly=replace(config.anomaly, method="patchcore")))
    with pytest.raises(ConfigError, match=r"anomaly.normal=\['x'\]"):
        task.check(replace(config, anomaly=replace(config.anomaly, normal=("x",))))
    with pytest.raises(ConfigError, match="anomaly.fpr=1.0"):
        task.check(replace(config, anomaly=replace(config.anomaly, fpr=1.0)))
    with pytest.raises(ConfigError, match="train.ema_fraction=0.1 does nothing for anomaly runs"):
        task.check(replace(config, train=replace(config.train, ema_fraction=0.1)))
