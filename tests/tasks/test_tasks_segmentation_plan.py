"""plan_segmentation: from a segmentation dataset card to patch, topology, normalisation and plan file.

Cards are built by hand, laid out like :func:`medlens.data.audit.inspect_dataset`'s, with only
what the planner reads. The network is never timed (``probe=False``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medlens.config import Config, read_plan, render_plan
from medlens.data import inspect_dataset, open_dataset
from medlens.errors import DatasetError
from medlens.io import Image, identity_direction, write_image
from medlens.tasks.segmentation import plan as planner
from medlens.tasks.segmentation.plan import (
    PATCH_VOXELS,
    downsampling_steps,
    patch_and_pools,
    plan_segmentation,
    pool_counts,
    target_spacing,
    topology,
)


def axes(values, extra: dict | None = None) -> dict:
    """``{"axisK": {"min", "median", "max"}}`` with every statistic equal to ``values[K]``."""
    summary = {f"axis{a}": {"min": float(v), "median": float(v), "max": float(v)} for a, v in enumerate(values)}
    for a, more in (extra or {}).items():
        summary[f"axis{a}"].update(more)
    return summary


def card(*, shape=(35, 50, 36), spacing=(1.0, 1.0, 1.0), spacing_extra=None, modality="MRI", task="segmentation",
         labels=None, cases_with_label=None, foreground=None, channels=None, spacing_known=True,
         source="/data/hippocampus") -> dict:
    """A segmentation card: ``labels`` is the declared value -> name map (``{}`` for none declared)."""
    labels = {"0": "background", "1": "anterior", "2": "posterior"} if labels is None else labels
    n = 20
    images = {"shape": axes(shape), "distinct_shapes": 1, "channels": channels or {"1": n}, "dtypes": {"float32": n},
              "spacing_known": spacing_known}
    if spacing_known:
        images["spacing_mm"] = axes(spacing, spacing_extra)
    return {
        "dataset": {"source": source, "layout": "decathlon", "task": task, "spatial_dims": len(shape),
                    "class_names": list(labels.values()), "num_cases": n, "num_readable": n, "modality": modality},
        "images": images,
        "masks": {"declared_labels": labels,
                  "cases_with_label": cases_with_label or {v: n for v in labels} or {"0": n, "1": n},
                  "all_background": [], "foreground_intensity": foreground},
        "findings": [], "fingerprint": "abc123",
    }


def plan(c: dict, **kwargs):
    kwargs.setdefault("time_budget_s", 600.0)
    return plan_segmentation(c, device=kwargs.pop("device", "cpu"), probe=False, **kwargs)


ANISOTROPIC = {"shape": (128, 128, 24), "spacing": (0.7, 0.7, 5.0)}


# ---- isotropic 3D: the Hippocampus-like reference ------------------------------------------------

def test_isotropic_card_gives_the_nnunet_like_patch_and_topology():
    config, reasons = plan(card())

    assert config.data.input_size == (40, 56, 40)
    assert config.data.target_spacing == (1.0, 1.0, 1.0)
    assert config.model.name == "dynunet_3d"
    assert config.model.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert config.model.kernels == ((3, 3, 3),) * 4
    assert config.model.filters == (16, 32, 64, 128)
    assert config.model.deep_supervision is True
    assert config.train.batch_size == 2
    assert config.train.loss == "dice_ce" and config.train.monitor == "val_dice"
    assert config.train.max_epochs == 50  # not timed
    assert config.dataset.task == "segmentation"
    assert config.dataset.label_values == (0, 1, 2)
    assert config.dataset.class_names == ("background", "anterior", "posterior")
    assert "multiple of [8, 8, 8]" in reasons["data.input_size"]


def test_gpu_gets_wider_filters_than_cpu():
    cpu, _ = plan(card(), device="cpu")
    gpu, _ = plan(card(), device="gpu")

    assert cpu.model.filters[0] == 16 and gpu.model.filters[0] == 32
    assert all(f <= 320 for f in gpu.model.filters)


def test_every_value_has_a_reason_for_the_main_keys():
    _, reasons = plan(card())

    for key in ("dataset.label_values", "data.input_size", "data.target_spacing", "data.normalization",
                "model.strides", "model.kernels", "train.batch_size", "train.max_epochs", "segment.overlap"):
        assert reasons.get(key), key


@pytest.mark.parametrize("epochs, processes, optimizer", [(4, 1, "adamw"), (50, 1, "sgd"), (12, 2, "adamw"),
                                                         (40, 2, "sgd")])
def test_a_budget_of_few_steps_trains_with_adamw_and_a_long_one_with_nnunets_sgd(monkeypatch, epochs, processes,
                                                                               optimizer):
    monkeypatch.setattr(planner, "_epochs", lambda *args, **kwargs: epochs)

    config, reasons = plan(card(), processes=processes)

    steps = epochs * math.ceil(config.segment.iterations_per_epoch / processes)
    assert (steps < planner.ADAMW_BELOW_STEPS) == (optimizer == "adamw")
    assert config.train.optimizer == optimizer
    assert config.train.lr == (3e-3 if optimizer == "adamw" else 0.01)
    assert ("AdamW" in reasons["train.optimizer"]) == (optimizer == "adamw")


# ---- anisotropic 3D ---------------------------------------------------------------------------------

def test_anisotropic_card_uses_the_p10_spacing_of_the_coarse_axis():
    config, reasons = plan(card(**ANISOTROPIC, spacing_extra={2: {"p10": 4.0}}))

    assert config.data.target_spacing == (0.7, 0.7, 4.0)
    assert "10th-percentile" in reasons["data.target_spacing"]


def test_anisotropic_card_without_p10_keeps_the_median():
    config, _ = plan(card(**ANISOTROPIC))

    assert config.data.target_spacing == (0.7, 0.7, 5.0)


def test_anisotropic_card_keeps_kernel_1_across_the_coarse_axis_first():
    config, _ = plan(card(**ANISOTROPIC, spacing_extra={2: {"p10": 4.0}}))
    strides, kernels = config.model.strides, config.model.kernels

    assert kernels[0] == (3, 3, 1)
    assert kernels[1][2] == 1  # still over twice the in-plane spacing after one in-plane down-sampling
    assert strides[0] == (1, 1, 1)
    down_z = math.prod(s[2] for s in strides)
    down_xy = math.prod(s[0] for s in strides)
    assert down_z < down_xy  # the coarse axis is down-sampled less often


def test_anisotropic_card_keeps_stride_1_across_the_coarse_axis_at_the_first_levels():
    config, _ = plan(card(**ANISOTROPIC, spacing_extra={2: {"p10": 4.0}}))
    strides = config.model.strides

    assert strides[1][2] == 1  # 0.7 x 0.7 x 4 mm: z is not pooled before x/y reach ~2 mm
    assert strides[2][2] == 1
    # every down-sampling of z happens when its spacing is at most twice the finest (pool_counts' rule)
    current = list(config.data.target_spacing)
    for stride in strides[1:]:
        if stride[2] == 2:
            assert current[2] <= 2 * min(current)
        current = [c * s for c, s in zip(current, stride)]


def test_topology_strides_multiply_to_the_pools_per_axis():
    spacing = [0.7, 0.7, 4.0]
    patch, steps = patch_and_pools([128.0, 128.0, 30.0], spacing, PATCH_VOXELS[("cpu", 3)])
    strides, kernels = topology(steps, spacing)
    pools = pool_counts(steps, 3)

    assert len(strides) == len(kernels) == max(pools) + 1
    assert [math.prod(s[a] for s in strides) for a in range(3)] == [2 ** p for p in pools]
    assert pools[2] < pools[0] == pools[1]


# ---- target_spacing / patch_and_pools / pool_counts ---------------------------------------------------

def test_target_spacing_without_known_spacing_is_one_unit():
    reasons = {}
    images = {"shape": axes((30, 30, 30)), "spacing_known": False}

    assert target_spacing(images, 3, reasons) == [1.0, 1.0, 1.0]
    assert "no spacing" in reasons["data.target_spacing"]


def test_target_spacing_is_the_median_when_isotropic_enough():
    images = {"spacing_known": True, "spacing_mm": axes((0.8, 0.8, 2.0), {2: {"p10": 1.0}})}

    assert target_spacing(images, 3, {}) == [0.8, 0.8, 2.0]  # 2.5x is under the 3x anisotropy threshold


@pytest.mark.parametrize("shape,spacing", [
    ((35, 50, 36), (1.0, 1.0, 1.0)),
    ((512, 512, 100), (0.8, 0.8, 2.5)),
    ((320, 320, 20), (0.6, 0.6, 4.0)),
    ((60, 300, 300), (5.0, 1.0, 1.0)),
    ((10, 10, 10), (1.0, 1.0, 1.0)),
])
def test_patch_fits_the_budget_before_rounding_and_divides_by_the_pools(monkeypatch, shape, spacing):
    budget = PATCH_VOXELS[("cpu", 3)]
    seen = []
    original = planner.downsampling_steps
    monkeypatch.setattr(planner, "downsampling_steps",
                        lambda patch, sp: seen.append(list(patch)) or original(patch, sp))

    patch, steps = patch_and_pools(list(shape), list(spacing), budget)
    pools = pool_counts(steps, 3)

    (before,) = seen
    assert math.prod(before) <= budget or all(b == planner.MIN_PATCH for b in before)
    assert all(p % 2 ** k == 0 for p, k in zip(patch, pools))
    assert all(p >= b - 1e-2 for p, b in zip(patch, before))  # rounded up, never down
    assert all(p - b < 2 ** k for p, b, k in zip(patch, before, pools))
    assert max(pools) >= 2  # DynUNet needs at least 3 levels


def test_pool_counts_stop_at_the_minimum_feature_map():
    counts = lambda patch, spacing: pool_counts(downsampling_steps(patch, spacing), len(patch))  # noqa: E731
    assert counts([16.0, 16.0], [1.0, 1.0]) == [2, 2]
    assert counts([40.0, 56.0, 40.0], [1.0, 1.0, 1.0]) == [3, 3, 3]
    assert counts([256.0, 256.0], [1.0, 1.0]) == [5, 5]  # MAX_POOLS
    # z (5 mm) waits until x/y reach 4 mm, then follows them while its map stays >= 4 voxels
    assert counts([64.0, 64.0, 64.0], [1.0, 1.0, 5.0]) == [4, 4, 3]
    assert downsampling_steps([64.0, 64.0, 64.0], [1.0, 1.0, 5.0])[:2] == [(2, 2, 1), (2, 2, 1)]


# ---- normalisation ----------------------------------------------------------------------------------

def test_ct_with_foreground_intensity_clips_to_percentiles_and_uses_its_stats():
    foreground = {"percentiles": {"0.5": -57.25, "50": 101.0, "99.5": 212.5}, "mean": 99.123456, "std": 40.5,
                  "voxels_sampled": 1000}
    config, reasons = plan(card(modality="CT", foreground=foreground))

    assert config.data.normalization == "ct_foreground"
    assert config.data.intensity_range == (-57.25, 212.5)
    assert config.data.foreground_stats == (99.1235, 40.5)
    assert "percentiles" in reasons["data.intensity_range"]


def test_ct_without_foreground_intensity_falls_back_to_zscore():
    config, _ = plan(card(modality="CT", foreground=None))

    assert config.data.normalization == "zscore"


def test_mr_gets_zscore_per_image():
    foreground = {"percentiles": {"0.5": 1.0, "50": 2.0, "99.5": 3.0}, "mean": 2.0, "std": 1.0}
    config, reasons = plan(card(modality="MRI", foreground=foreground))

    assert config.data.normalization == "zscore"
    assert config.data.intensity_range == () and config.data.foreground_stats == ()
    assert "z-score" in reasons["data.normalization"]


# ---- labels and rejected cards ------------------------------------------------------------------------

def test_undeclared_labels_come_from_the_mask_values():
    config, reasons = plan(card(labels={}, cases_with_label={"0": 20, "1": 18, "4": 3}))

    assert config.dataset.label_values == (0, 1, 4)
    assert config.dataset.class_names == ("background", "label_1", "label_4")
    assert "found in the masks" in reasons["dataset.label_values"]


def test_masks_holding_only_background_are_rejected():
    with pytest.raises(DatasetError, match=r"background \(0\) only"):
        plan(card(labels={}, cases_with_label={"0": 20}))


def test_a_single_declared_label_is_rejected():
    with pytest.raises(DatasetError, match="nothing to segment"):
        plan(card(labels={"0": "background"}, cases_with_label={"0": 20}))


def test_a_classification_card_is_rejected():
    with pytest.raises(DatasetError, match="binary dataset, not image \\+ mask pairs"):
        plan(card(task="binary"))


def test_a_card_without_readable_images_is_rejected():
    c = card()
    c["dataset"]["spatial_dims"] = None
    with pytest.raises(DatasetError, match="no readable image"):
        plan(c)


# ---- 2D, channels, plan file ---------------------------------------------------------------------------

def test_2d_card_gives_dynunet_2d_and_a_batch_of_at_least_2():
    config, _ = plan(card(shape=(320, 320), spacing=(0.5, 0.5)))

    assert config.model.name == "dynunet_2d"
    assert config.dataset.spatial_dims == 2
    assert len(config.data.input_size) == 2
    assert math.prod(config.data.input_size) <= 1.2 * PATCH_VOXELS[("cpu", 2)]
    assert all(len(s) == 2 for s in config.model.strides)
    assert 2 <= config.train.batch_size <= 32
    assert config.augment.flip_axes == (0, 1)


def test_small_2d_images_get_a_larger_batch():
    config, _ = plan(card(shape=(64, 64), spacing=(1.0, 1.0)))

    assert config.data.input_size == (64, 64)
    assert config.train.batch_size == 32  # 4 * 256^2 / 64^2 = 64, capped at 32


def test_channels_are_the_largest_channel_count():
    config, _ = plan(card(channels={"2": 18, "1": 2}))

    assert config.data.channels == 2


def test_rendered_plan_reads_back_to_the_same_config(tmp_path):
    foreground = {"percentiles": {"0.5": -57.25, "50": 101.0, "99.5": 212.5}, "mean": 99.1, "std": 40.5}
    config, reasons = plan(card(**ANISOTROPIC, spacing_extra={2: {"p10": 4.0}}, modality="CT",
                                foreground=foreground))
    path = tmp_path / "plan.yaml"
    path.write_text(render_plan(config, reasons, "a header\nsecond line"), encoding="utf-8")

    read, read_reasons = read_plan(path)

    assert isinstance(read, Config)
    assert read == config
    assert read_reasons["data.input_size"] == reasons["data.input_size"]


# ---- with a card from inspect_dataset --------------------------------------------------------------------

def test_anisotropic_dataset_audited_for_real_uses_a_finer_coarse_spacing(tmp_path):
    training = []
    for i, z_mm in enumerate((3.0, 4.0, 5.0, 6.0, 6.0)):
        mask = np.zeros((8, 8, 4), np.uint8)
        mask[3:5, 3:5, 1:3] = 1
        volume = (100 + 100 * mask).astype(np.float32)
        for folder, array in (("imagesTr", volume), ("labelsTr", mask)):
            write_image(Image(array[None], (1.0, 1.0, z_mm), (0.0, 0.0, 0.0), identity_direction(3)),
                        tmp_path / folder / f"case_{i}.nii.gz")
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"name": "aniso", "tensorImageSize": "3D", "modality": {"0": "MRI"},
         "labels": {"0": "background", "1": "lesion"}, "training": training}))
    real_card = inspect_dataset(open_dataset(tmp_path))

    config, _ = plan(real_card)

    assert real_card["images"]["spacing_mm"]["axis2"]["median"] == 5.0
    assert config.data.target_spacing[2] < 5.0  # nnU-Net: the 10th percentile (3.4 mm here)
