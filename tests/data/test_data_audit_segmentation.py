"""inspect_dataset on segmentation data: mask shape checks, empty masks, foreground statistics.

Every dataset is written as real files (NIfTI / PNG) under ``tmp_path``: a Decathlon folder with a
``dataset.json`` or ``images/`` + ``labels/`` pairs, opened the way ``medlens inspect`` opens them.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.audit_masks import FOREGROUND_SAMPLES_PER_CASE
from medlens.io import Image, identity_direction, write_image
from medlens.types import Split

SHAPE = (6, 5, 4)  # (X, Y, Z) of every test volume


def findings(card, code=None) -> list[dict]:
    return [f for f in card["findings"] if code is None or f["code"] == code]


def mask_codes(card) -> list[str]:
    return [f["code"] for f in card["findings"] if f["code"].startswith("mask.")]


def lesion(value=1, shape=SHAPE) -> np.ndarray:
    """``(X, Y, Z)`` uint8 mask with a 2 x 2 x 2 block of ``value`` (8 voxels)."""
    mask = np.zeros(shape, np.uint8)
    mask[2:4, 1:3, 1:3] = value
    return mask


def decathlon(root, make, images: dict, masks: dict, labels=None):
    """A Decathlon folder: ``images[case]`` / ``masks[case]`` are ``(X, Y, Z)`` arrays (or a path already written)."""
    entries = []
    for case, volume in images.items():
        make.volume(root / "imagesTr" / f"{case}.nii.gz", volume)
        label = masks[case] if not isinstance(masks[case], np.ndarray) else \
            make.volume(root / "labelsTr" / f"{case}.nii.gz", masks[case])
        entries.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./{label.relative_to(root).as_posix()}"})
    spec = {"labels": labels or {"0": "background", "1": "lesion"}, "tensorImageSize": "3D", "training": entries}
    (root / "dataset.json").write_text(json.dumps(spec))
    return open_dataset(root, strict=False)


def pairs(root, make, masks: dict):
    """``images/`` + ``labels/`` NIfTI pairs with a distinct constant image (1, 2, ...) per mask."""
    for i, (case, mask) in enumerate(masks.items()):
        make.volume(root / "images" / f"{case}.nii.gz", np.full(mask.shape, i + 1, np.float32))
        make.volume(root / "labels" / f"{case}.nii.gz", mask)
    return open_dataset(root, strict=False)


# --- mask.dims / mask.channels ----------------------------------------------------------------

def test_a_2d_png_mask_for_a_3d_volume_is_a_dims_error_naming_both_files(tmp_path, make):
    png = make.png(tmp_path / "labelsTr" / "c.png", lesion()[:, :, 0].T)  # rows x cols = Y x X

    card = inspect_dataset(decathlon(tmp_path, make, {"c": np.ones(SHAPE, np.float32)}, {"c": png}))

    (dims,) = findings(card, "mask.dims")
    assert dims["severity"] == "error" and dims["cases"] == ["c"]
    assert str(png) in dims["message"] and str(tmp_path / "imagesTr" / "c.nii.gz") in dims["message"]
    assert "2D (shape (6, 5))" in dims["message"] and "3D (shape (6, 5, 4))" in dims["message"]
    assert "one mask per image on the image's grid" in dims["message"]
    assert mask_codes(card) == ["mask.dims"]  # not also mask.geometry


def test_a_2d_nifti_mask_in_image_label_folders_is_a_dims_error(tmp_path, make):
    make.volume(tmp_path / "images" / "c.nii.gz", np.ones(SHAPE, np.float32))
    make.volume(tmp_path / "labels" / "c.nii.gz", lesion()[:, :, 0])

    card = inspect_dataset(open_dataset(tmp_path, strict=False))

    assert mask_codes(card) == ["mask.dims"]
    assert card["masks"]["label_voxels"] == {} and card["masks"]["foreground_intensity"] is None


def test_a_two_channel_mask_is_a_channels_error(tmp_path, make):
    two = np.stack([lesion(), 1 - lesion()])
    write_image(Image(two, (1.0,) * 3, (0.0,) * 3, identity_direction(3)), tmp_path / "labelsTr" / "c.nii.gz")

    card = inspect_dataset(decathlon(tmp_path, make, {"c": np.ones(SHAPE, np.float32)},
                                     {"c": tmp_path / "labelsTr" / "c.nii.gz"}))

    (channels,) = findings(card, "mask.channels")
    assert channels["severity"] == "error" and channels["cases"] == ["c"]
    assert "2 channels" in channels["message"] and "labelsTr/c.nii.gz" in channels["message"]
    assert mask_codes(card) == ["mask.channels"]


def test_an_rgb_png_mask_is_a_channels_error(tmp_path, make):
    make.png(tmp_path / "images" / "c.png", make.pixels(0))
    rgb = np.zeros((3, 8, 8), np.uint8)
    rgb[0, 2:5, 2:5] = 255  # a red lesion
    write_image(Image(rgb, (1.0, 1.0), (0.0, 0.0), identity_direction(2)), tmp_path / "labels" / "c.png")

    card = inspect_dataset(open_dataset(tmp_path, strict=False))

    assert mask_codes(card) == ["mask.channels"] and "3 channels" in findings(card, "mask.channels")[0]["message"]


# --- mask.all_background ----------------------------------------------------------------------

def test_a_dataset_whose_masks_are_all_background_is_an_error(tmp_path, make):
    card = inspect_dataset(pairs(tmp_path, make, {c: np.zeros(SHAPE, np.uint8) for c in "abc"}))

    (empty,) = findings(card, "mask.all_background")
    assert empty["severity"] == "error" and empty["cases"] == ["a", "b", "c"]
    assert "all 3" in empty["message"] and "nothing to learn" in empty["message"]
    assert card["masks"]["all_background"] == ["a", "b", "c"]
    assert card["masks"]["label_voxels"] == {"0": 3 * 120}
    assert card["masks"]["foreground_fraction"] == 0.0 and card["masks"]["foreground_intensity"] is None


def test_some_empty_masks_are_only_info(tmp_path, make):
    card = inspect_dataset(pairs(tmp_path, make, {"a": lesion(), "b": np.zeros(SHAPE, np.uint8), "c": lesion()}))

    assert [(f["code"], f["severity"], f["cases"]) for f in card["findings"]] == \
        [("mask.all_background", "info", ["b"])]
    assert "1 of 3" in card["findings"][0]["message"]


def _with_splits(dataset, splits: dict):
    cases = [dataclasses.replace(c, split=splits[c.case_id]) for c in dataset.cases]
    return dataclasses.replace(dataset, cases=cases)


def test_empty_masks_in_every_training_case_are_an_error(tmp_path, make):
    dataset = pairs(tmp_path, make, {"a": np.zeros(SHAPE, np.uint8), "b": np.zeros(SHAPE, np.uint8), "c": lesion()})
    dataset = _with_splits(dataset, {"a": Split.TRAIN, "b": Split.TRAIN, "c": Split.TEST})

    (empty,) = findings(inspect_dataset(dataset), "mask.all_background")

    assert empty["severity"] == "error" and empty["cases"] == ["a", "b"]
    assert "all 2 training" in empty["message"]


def test_an_empty_test_case_beside_training_foreground_is_only_info(tmp_path, make):
    dataset = pairs(tmp_path, make, {"a": lesion(), "b": np.zeros(SHAPE, np.uint8)})
    dataset = _with_splits(dataset, {"a": Split.TRAIN, "b": Split.TEST})

    (empty,) = findings(inspect_dataset(dataset), "mask.all_background")

    assert empty["severity"] == "info" and empty["cases"] == ["b"]


# --- foreground statistics --------------------------------------------------------------------

def test_foreground_statistics_equal_numpy_on_known_intensities(tmp_path, make):
    ramp = np.arange(120, dtype=np.float32).reshape(SHAPE) - 40  # every voxel a distinct, exact value
    two_labels = lesion()
    two_labels[0, 0, :] = 2  # 4 voxels of label 2
    images = {"a": ramp, "b": 2 * ramp, "c": ramp + 1000}
    masks = {"a": lesion(), "b": two_labels, "c": np.zeros(SHAPE, np.uint8)}
    labels = {"0": "background", "1": "lesion", "2": "edema"}

    card = inspect_dataset(decathlon(tmp_path, make, images, masks, labels))

    pooled = np.concatenate([images[c][masks[c] > 0] for c in "ab"]).astype(np.float64)
    stats = card["masks"]["foreground_intensity"]
    assert stats["voxels_sampled"] == 8 + 12
    assert stats["percentiles"] == pytest.approx(dict(zip(("0.5", "50", "99.5"),
                                                          np.percentile(pooled, [0.5, 50, 99.5]))))
    assert stats["mean"] == pytest.approx(pooled.mean()) and stats["std"] == pytest.approx(pooled.std())
    assert card["masks"]["label_voxels"] == {"0": 360 - 8 - 12, "1": 16, "2": 4}
    assert card["masks"]["foreground_fraction"] == pytest.approx(8 / 120)  # median of 8/120, 12/120, 0
    assert card["masks"]["cases_with_label"] == {"0": 3, "1": 2, "2": 1}
    assert [(f["code"], f["severity"]) for f in card["findings"]] == [("mask.all_background", "info")]


def test_foreground_samples_are_capped_per_case_and_deterministic(tmp_path, make):
    shape = (30, 30, 12)  # 10_800 voxels, all foreground
    volume = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
    dataset = decathlon(tmp_path, make, {"big": volume}, {"big": np.ones(shape, np.uint8)})

    first, second = inspect_dataset(dataset), inspect_dataset(dataset)

    stats = first["masks"]["foreground_intensity"]
    assert stats["voxels_sampled"] == FOREGROUND_SAMPLES_PER_CASE
    assert stats == second["masks"]["foreground_intensity"]
    assert volume.min() <= stats["percentiles"]["0.5"] < stats["percentiles"]["50"] < stats["percentiles"]["99.5"]
    assert stats["percentiles"]["50"] == pytest.approx(np.median(volume), abs=1.0)
    assert json.loads(json.dumps(first, allow_nan=False)) == first


# --- the older mask checks still hold ---------------------------------------------------------

def test_unexpected_label_values_are_still_flagged(tmp_path, make):
    card = inspect_dataset(decathlon(tmp_path, make, {"c": np.ones(SHAPE, np.float32)}, {"c": lesion(value=3)}))

    (bad,) = findings(card, "mask.labels")
    assert bad["severity"] == "error" and "[3]" in bad["message"] and "labelsTr/c.nii.gz" in bad["message"]
    assert card["masks"]["label_voxels"] == {"0": 112, "3": 8}


def test_non_integer_mask_values_are_flagged(tmp_path, make):
    mask = lesion().astype(np.float32) * 0.5
    card = inspect_dataset(decathlon(tmp_path, make, {"c": np.ones(SHAPE, np.float32)}, {"c": mask}))

    assert mask_codes(card) == ["mask.values"]  # not also mask.all_background: 0.5 is not a label
    assert card["masks"]["label_voxels"] == {} and card["masks"]["foreground_intensity"] is None


def test_a_mask_on_another_grid_is_still_a_geometry_error_and_is_not_sampled(tmp_path, make):
    make.volume(tmp_path / "images" / "c.nii.gz", np.ones(SHAPE, np.float32))
    make.volume(tmp_path / "labels" / "c.nii.gz", lesion(), spacing=(1.0, 1.0, 2.5))

    card = inspect_dataset(open_dataset(tmp_path, strict=False))

    (bad,) = findings(card, "mask.geometry")
    assert bad["severity"] == "error" and bad["cases"] == ["c"]
    assert str(tmp_path / "labels" / "c.nii.gz") in bad["message"] and "spacing (1.0, 1.0, 2.5)" in bad["message"]
    assert mask_codes(card) == ["mask.geometry"]
    assert card["masks"]["foreground_intensity"] is None  # intensities off the image grid would be wrong
    assert card["masks"]["label_voxels"] == {"0": 112, "1": 8}
