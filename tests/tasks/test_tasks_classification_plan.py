"""plan_classification: the rules from a dataset card to a plan, each value with its reason."""

from __future__ import annotations

import pytest

from medlens.config import Config
from medlens.errors import DatasetError
from medlens.tasks.classification.plan import plan_classification


def card(*, shape=(28, 28), dtypes=("uint8",), modality=None, task="binary", class_names=("normal", "lesion"),
         train=None, total=None, channels=None, percentiles=None, source="/data/set") -> dict:
    """A dataset card laid out like ``inspect_dataset``'s, with only what the planner reads."""
    dims = len(shape)
    train = {"normal": 50, "lesion": 50} if train is None else train
    total = dict(train) if total is None else total
    n = sum(v for k, v in total.items() if k != "cases") if "cases" not in total else total["cases"]
    return {
        "dataset": {"source": source, "layout": "class_folders", "task": task, "spatial_dims": dims,
                    "task_label": f"{task} {dims}D", "class_names": list(class_names), "num_cases": n,
                    "num_readable": n, "modality": modality, "meta": {}},
        "counts": {"by_split": {"train": train} if train else {"unassigned": total}, "total": total},
        "images": {
            "shape": {f"axis{a}": {"min": float(s), "median": float(s), "max": float(s)} for a, s in enumerate(shape)},
            "distinct_shapes": 1,
            "channels": channels or {"1": n},
            "dtypes": {d: n for d in dtypes},
            "spacing_known": False,
            "intensity": {"min": 0.0, "max": 255.0, "mean": 100.0, "std": 50.0,
                          "percentiles": percentiles or {"0.5": 2.0, "1": 3.0, "50": 100.0, "99": 250.0,
                                                         "99.5": 253.0}},
        },
        "unreadable": [], "duplicates": [], "findings": [], "fingerprint": "abc123",
    }


def plan(c: dict, **kwargs):
    kwargs.setdefault("time_budget_s", 120.0)
    return plan_classification(c, device=kwargs.pop("device", "cpu"), probe=kwargs.pop("probe", False), **kwargs)


# ---- data section -----------------------------------------------------------------------------

def test_small_8bit_images_keep_their_size_and_scale_0_255():
    config, reasons = plan(card(shape=(28, 28), dtypes=("uint8",)))

    assert config.data.input_size == (28, 28)
    assert config.data.normalization == "scale01"
    assert config.data.intensity_range == (0.0, 255.0)
    assert config.data.channels == 1
    assert "native size (median 28x28)" in reasons["data.input_size"]
    assert "8-bit" in reasons["data.normalization"]


def test_a_thin_volume_is_resized_to_the_networks_smallest_input_on_its_thin_axis():
    config, reasons = plan(card(shape=(12, 10, 4)))

    assert config.data.input_size == (12, 10, 8)
    assert "axes under 8 resized to 8" in reasons["data.input_size"]


def test_ct_windows_to_the_percentiles():
    config, reasons = plan(card(shape=(64, 64, 32), dtypes=("int16",), modality="CT",
                                percentiles={"0.5": -950.25, "1": -900.0, "50": 30.0, "99": 1100.0,
                                             "99.5": 1250.75}))

    assert config.data.normalization == "ct_window"
    assert config.data.intensity_range == (-950.2, 1250.8)
    assert "Hounsfield" in reasons["data.normalization"]
    assert reasons["data.intensity_range"]


def test_ct_window_is_clipped_to_the_hounsfield_range():
    config, _ = plan(card(dtypes=("int16",), modality="ct",
                          percentiles={"0.5": -3024.0, "1": -2000.0, "50": 0.0, "99": 3500.0, "99.5": 4000.0}))

    assert config.data.intensity_range == (-1024.0, 3071.0)


def test_ct_among_several_modalities_is_recognised():
    config, _ = plan(card(dtypes=("int16",), modality="PT, CT"))

    assert config.data.normalization == "ct_window"


def test_ct_wins_over_8bit():
    config, _ = plan(card(dtypes=("uint8",), modality="CT"))

    assert config.data.normalization == "ct_window"


def test_float_images_get_zscore_without_a_range():
    config, reasons = plan(card(dtypes=("float32",)))

    assert config.data.normalization == "zscore"
    assert config.data.intensity_range == ()
    assert "float32" in reasons["data.normalization"]


def test_mixed_8_and_16_bit_gets_zscore():
    config, _ = plan(card(dtypes=("uint8", "uint16")))

    assert config.data.normalization == "zscore"


@pytest.mark.parametrize(("shape", "device", "expected"), [
    ((512, 512), "cpu", (128, 128)),
    ((512, 400), "cpu", (128, 128)),
    ((512, 512), "gpu", (224, 224)),
    ((100, 80), "cpu", (96, 96)),  # below the cap: the larger side rounded to a multiple of 8
    ((64, 64), "cpu", (64, 64)),  # 64 is still native
    ((256, 256, 200), "cpu", (64, 64, 64)),
    ((256, 256, 200), "gpu", (96, 96, 96)),
])
def test_large_images_are_resized_to_the_device_cap(shape, device, expected):
    config, reasons = plan(card(shape=shape), device=device)

    assert config.data.input_size == expected
    if max(shape) > 64:
        assert f"resized to {expected[0]}" in reasons["data.input_size"]


def test_cpu_cap_is_named_in_the_reason():
    _, reasons = plan(card(shape=(512, 512)))

    assert reasons["data.input_size"] == "median size 512x512 resized to 128 (cpu cap 128)"


def test_most_common_channel_count_wins():
    config, reasons = plan(card(channels={"3": 90, "1": 10}))

    assert config.data.channels == 3
    assert reasons["data.channels"] == "3 channel(s) in 90 of 100 images"


# ---- model ------------------------------------------------------------------------------------

def test_2d_small_input_on_cpu_gets_a_narrow_resnet():
    config, _ = plan(card(shape=(28, 28)))

    assert config.model.name == "resnet18_2d" and config.model.width == 0.25
    assert config.dataset.spatial_dims == 2


def test_3d_card_gets_a_3d_network_fast_on_cpu_and_the_resnet_on_gpu():
    config, reasons = plan(card(shape=(28, 28, 28), dtypes=("float32",)))

    assert config.model.name == "seedcnn_3d" and config.model.width == 0.5
    assert config.dataset.spatial_dims == 3
    assert config.data.input_size == (28, 28, 28)
    assert "3D" in reasons["model.name"]
    assert plan(card(shape=(28, 28, 28), dtypes=("float32",)), device="gpu")[0].model.name == "resnet18_3d"


def test_large_2d_on_cpu_gets_width_half_and_on_gpu_full():
    assert plan(card(shape=(256, 256)))[0].model.width == 0.5
    assert plan(card(shape=(256, 256)), device="gpu")[0].model.width == 1.0


# ---- loss and sampler -------------------------------------------------------------------------

def test_balanced_classes_get_plain_ce():
    config, reasons = plan(card(train={"normal": 50, "lesion": 50}))

    assert (config.train.loss, config.train.sampler) == ("ce", "shuffle")
    assert "balanced (1.0:1)" in reasons["train.loss"]


def test_3_to_1_keeps_plain_ce_and_leaves_the_operating_point_to_the_threshold():
    config, reasons = plan(card(train={"normal": 75, "lesion": 25}))

    assert (config.train.loss, config.train.sampler) == ("ce", "shuffle")
    assert "3.0:1" in reasons["train.loss"] and "Youden threshold on validation" in reasons["train.loss"]


def test_20_to_1_gets_the_weighted_sampler():
    config, reasons = plan(card(train={"normal": 200, "lesion": 10}))

    assert (config.train.loss, config.train.sampler) == ("ce", "weighted")
    assert "20.0:1" in reasons["train.loss"]
    assert "weighted sampler" in reasons["train.sampler"]


def test_imbalance_is_read_from_the_train_split():
    # balanced overall, 3:1 in training: the training split is what the loss sees
    _, reasons = plan(card(train={"normal": 75, "lesion": 25}, total={"normal": 100, "lesion": 100}))

    assert "3.0:1" in reasons["train.loss"]


def test_imbalance_without_splits_uses_the_total():
    config, _ = plan(card(train={}, total={"normal": 300, "lesion": 10}))

    assert config.train.sampler == "weighted"


def test_multiclass_with_an_empty_class_counts_as_skewed():
    config, _ = plan(card(task="multiclass", class_names=("a", "b", "c"), train={"a": 30, "b": 30}))

    assert config.train.sampler == "weighted"


def test_multilabel_gets_bce():
    c = card(task="multilabel", class_names=("effusion", "mass"), train={"cases": 100, "effusion": 10, "mass": 90})

    config, reasons = plan(c)

    assert config.dataset.task == "multilabel"
    assert (config.train.loss, config.train.sampler) == ("bce", "shuffle")
    assert "sigmoid" in reasons["train.loss"]


# ---- errors -----------------------------------------------------------------------------------

def test_segmentation_card_is_refused():
    with pytest.raises(DatasetError, match=r"/data/seg holds segmentation data; classification plans need class "
                                           r"labels"):
        plan(card(task="segmentation", shape=(32, 32, 32), source="/data/seg"))


def test_card_without_readable_images_is_refused():
    c = card()
    c["dataset"]["spatial_dims"] = None

    with pytest.raises(DatasetError, match=r"no readable image, so nothing to plan; run `medlens inspect`"):
        plan(c)


# ---- train section and reasons ----------------------------------------------------------------

def test_without_probe_epochs_default_and_budget_is_kept():
    config, reasons = plan(card(), time_budget_s=120.0)

    assert config.train.max_epochs == 30
    assert config.train.time_budget_s == 120.0
    assert config.train.patience == 7  # max(5, 30 // 4)
    assert "not timed" in reasons["train.max_epochs"]


def test_default_budget_depends_on_the_device():
    c = card()
    assert plan_classification(c, device="cpu", probe=False)[0].train.time_budget_s == 600.0
    assert plan_classification(c, device="gpu", probe=False)[0].train.time_budget_s == 1800.0


@pytest.mark.parametrize(("train", "shape", "batch"), [
    ({"normal": 50, "lesion": 50}, (28, 28), 8),  # 2 ** int(log2(128 / 16)) = 8: ~16 steps per epoch
    ({"normal": 300, "lesion": 300}, (28, 28), 32),  # 2 ** int(log2(600 / 16)) = 32
    ({"normal": 5000, "lesion": 5000}, (28, 28), 128),  # memory allows 128 at 28x28
    ({"normal": 5000, "lesion": 5000}, (512, 512), 32),  # 128x128 inputs: 32 fit
    ({"normal": 4, "lesion": 4}, (28, 28), 8),  # at least 8
])
def test_batch_size(train, shape, batch):
    config, _ = plan(card(train=train, shape=shape))

    assert config.train.batch_size == batch


def test_augmentation_is_stronger_for_small_datasets():
    small, _ = plan(card(train={"normal": 50, "lesion": 50}))
    large, _ = plan(card(train={"normal": 5000, "lesion": 5000}))

    assert (small.augment.rotate_deg, small.augment.probability) == (15.0, 0.7)
    assert (large.augment.rotate_deg, large.augment.probability) == (10.0, 0.5)
    assert small.augment.flip_axes == (0,)


@pytest.mark.parametrize("c", [
    card(), card(shape=(512, 512), modality="CT", dtypes=("int16",)), card(shape=(28, 28, 28), dtypes=("float32",)),
    card(task="multilabel", class_names=("a", "b"), train={"cases": 40, "a": 10, "b": 30}),
    card(train={"normal": 200, "lesion": 10}),
], ids=["small-2d", "ct", "3d", "multilabel", "skewed"])
def test_every_reason_names_a_real_key_and_every_choice_has_a_reason(c):
    config, reasons = plan(c)

    known = {f"{section}.{key}" for section, values in config.as_dict().items() for key in values}
    assert set(reasons) <= known
    assert all(isinstance(r, str) and r.strip() for r in reasons.values())
    # every value the planner changed from the defaults (outside the dataset facts) is explained
    defaults = Config().as_dict()
    changed = {f"{section}.{key}" for section, values in config.as_dict().items() if section != "dataset"
               for key, value in values.items() if value != defaults[section][key]}
    assert changed <= set(reasons), changed - set(reasons)
    for key in ("dataset.task", "data.input_size", "data.channels", "data.normalization", "model.name",
                "model.width", "train.batch_size", "train.loss", "train.max_epochs", "evaluate.n_bootstrap"):
        assert key in reasons


def test_dataset_facts_are_copied():
    config, _ = plan(card(modality="MR", class_names=("b", "a"), source="/x/y"))

    assert config.dataset.source == "/x/y"
    assert config.dataset.class_names == ("b", "a")
    assert config.dataset.modality == "MR"
    assert config.dataset.fingerprint == "abc123"
    assert config.dataset.layout == "class_folders"


def test_plan_from_a_real_card(tmp_path):
    from medlens.data import open_dataset
    from medlens.data.audit import inspect_dataset
    from medlens.data.synthetic import write_demo_data

    demo = write_demo_data(tmp_path / "demo", patients=10, volumes=1)
    real = inspect_dataset(open_dataset(demo / "classification.csv"))

    config, reasons = plan(real)

    assert config.dataset.layout == "manifest" and config.dataset.class_names == ("normal", "lesion")
    assert config.data.input_size == (64, 64)  # the demo radiographs are 64 x 64, 8-bit
    assert (config.data.normalization, config.data.intensity_range) == ("scale01", (0.0, 255.0))
    assert (config.train.loss, config.train.sampler) == ("ce", "shuffle")  # 10 normal, 10 lesion
    assert config.model.name == "resnet18_2d"


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP threads that wait on each other make a
    tiny step take ~1 s instead of ~15 ms."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_probe_times_the_network_and_fits_the_budget(one_thread):
    c = card(shape=(16, 16), train={"normal": 8, "lesion": 8})

    config, reasons = plan(c, probe=True, time_budget_s=30.0)

    assert 3 <= config.train.max_epochs <= 100
    assert "s per epoch" in reasons["train.max_epochs"]
    assert "30 s budget" in reasons["train.max_epochs"]
    assert config.train.patience == max(5, config.train.max_epochs // 4)


@pytest.mark.parametrize(("step_ms", "members", "epochs"), [(1.0, 5, 100), (75.0, 2, 100), (280.0, 1, 85)])
def test_a_budget_that_fits_the_schedule_twice_trains_an_ensemble(monkeypatch, step_ms, members, epochs):
    monkeypatch.setattr("medlens.tasks.classification.plan.time_training_step", lambda *a, **k: step_ms / 1000)
    c = card(train={"normal": 400, "lesion": 144})  # BreastMNIST's size: 17 steps of 32 per epoch

    config, reasons = plan(c, probe=True, time_budget_s=600.0)

    assert (config.model.members, config.train.max_epochs) == (members, epochs)
    assert ("deep ensemble" in reasons["model.members"]) == (members > 1)


@pytest.mark.parametrize(("epochs", "shown"), [(100, "5.0"), (30, "1.5")])
def test_the_weight_average_spans_the_last_twentieth_of_training(monkeypatch, epochs, shown):
    monkeypatch.setattr("medlens.tasks.classification.plan._epochs", lambda *a: (epochs, 1))

    config, reasons = plan(card())

    assert config.train.ema_fraction == 0.05
    assert f"(~{shown} epochs)" in reasons["train.ema_fraction"]
