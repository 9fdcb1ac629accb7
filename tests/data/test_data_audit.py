"""inspect_dataset: the dataset card's counts, duplicates, leakage, unreadable files and mask checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset


def findings(card, code=None) -> list[dict]:
    return [f for f in card["findings"] if code is None or f["code"] == code]


def codes(card) -> list[str]:
    return [f["code"] for f in card["findings"]]


def test_counts_per_split_and_class(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 3, "lesion": 2}, split="train", seed=1)
    make.class_folders(tmp_path, {"normal": 1, "lesion": 2}, split="test", seed=2)

    card = inspect_dataset(open_dataset(tmp_path))

    assert card["counts"]["by_split"] == {"train": {"normal": 3, "lesion": 2}, "test": {"normal": 1, "lesion": 2}}
    assert card["counts"]["total"] == {"normal": 4, "lesion": 4}
    assert card["dataset"]["task_label"] == "binary 2D"
    assert card["dataset"]["num_cases"] == card["dataset"]["num_readable"] == 8
    assert card["images"]["shape"] == {"axis0": {"min": 8.0, "p10": 8.0, "median": 8.0, "max": 8.0},
                                       "axis1": {"min": 8.0, "p10": 8.0, "median": 8.0, "max": 8.0}}
    assert card["unreadable"] == [] and card["duplicates"] == []
    assert findings(card) == []


def test_patients_are_counted_per_split(tmp_path, make):
    for i in range(4):
        make.png(tmp_path / f"{i}.png", make.pixels(i))
    rows = [{"image": "0.png", "label": "a", "patient_id": "P1", "split": "train"},
            {"image": "1.png", "label": "b", "patient_id": "P1", "split": "train"},
            {"image": "2.png", "label": "a", "patient_id": "P2", "split": "train"},
            {"image": "3.png", "label": "b", "patient_id": "P3", "split": "test"}]

    card = inspect_dataset(open_dataset(make.csv(tmp_path / "m.csv", rows)))

    assert card["counts"]["patients_by_split"] == {"train": 2, "test": 1}
    assert findings(card) == []


def test_exact_duplicates_are_grouped(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 3, "lesion": 3})
    make.png(tmp_path / "normal" / "copy.png", make.pixels(0))  # the same pixels as normal/img_0.png

    card = inspect_dataset(open_dataset(tmp_path))

    assert card["duplicates"] == [["normal/copy.png", "normal/img_0.png"]]
    (dup,) = findings(card, "duplicates")
    assert dup["severity"] == "warning" and sorted(dup["cases"]) == ["normal/copy.png", "normal/img_0.png"]
    assert codes(card) == ["duplicates"]  # same label, no fixed splits: no conflict, no leakage


def test_duplicates_across_fixed_splits_are_leakage(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 2, "lesion": 2}, split="train", seed=1)
    make.class_folders(tmp_path, {"normal": 2, "lesion": 2}, split="test", seed=2)
    make.png(tmp_path / "test" / "lesion" / "copy.png", make.pixels(1 * 10_000 + 1000 + 0))  # = train/lesion/img_0

    card = inspect_dataset(open_dataset(tmp_path))

    (leak,) = findings(card, "leakage.duplicates")
    assert leak["severity"] == "error"
    assert sorted(leak["cases"]) == ["test/lesion/copy.png", "train/lesion/img_0.png"]
    assert "dataset splits" in leak["message"]
    assert findings(card, "label.conflict") == []


def test_identical_images_with_different_labels_are_a_conflict(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 2, "lesion": 2})
    make.png(tmp_path / "lesion" / "mislabelled.png", make.pixels(0))  # = normal/img_0.png

    card = inspect_dataset(open_dataset(tmp_path))

    (conflict,) = findings(card, "label.conflict")
    assert conflict["severity"] == "error"
    assert sorted(conflict["cases"]) == ["lesion/mislabelled.png", "normal/img_0.png"]


def _csv_with_patients(root, make, rows):
    for i, row in enumerate(rows):
        make.png(root / row["image"], make.pixels(500 + i))
    return make.csv(root / "m.csv", rows)


def test_a_patient_in_train_and_test_is_leakage(tmp_path, make):
    rows = [{"image": "a.png", "label": "x", "patient_id": "P1", "split": "train"},
            {"image": "b.png", "label": "y", "patient_id": "P2", "split": "train"},
            {"image": "c.png", "label": "y", "patient_id": "P1", "split": "test"},
            {"image": "d.png", "label": "x", "patient_id": "P3", "split": "test"}]

    card = inspect_dataset(open_dataset(_csv_with_patients(tmp_path, make, rows)))

    (leak,) = findings(card, "leakage.patient")
    assert leak["severity"] == "error" and leak["cases"] == ["P1"]
    assert "dataset splits" in leak["message"] and "medlens split" in leak["message"]


def test_a_splits_file_putting_a_patient_on_both_sides_is_leakage(tmp_path, make):
    rows = [{"image": f"{i}.png", "label": "xy"[i % 2], "patient_id": f"P{i // 2}"} for i in range(6)]
    dataset = open_dataset(_csv_with_patients(tmp_path, make, rows))
    splits = {"test": ["4.png", "5.png"], "folds": [{"train": ["0.png", "2.png", "3.png"], "val": ["1.png"]}]}

    card = inspect_dataset(dataset, splits=splits)

    (leak,) = findings(card, "leakage.patient")
    assert leak["cases"] == ["P0"] and "splits file fold 0" in leak["message"]


def test_an_unreadable_file_is_listed_and_the_rest_is_audited(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 3, "lesion": 3})
    broken = tmp_path / "lesion" / "img_1.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated PNG

    card = inspect_dataset(open_dataset(tmp_path))

    assert [u["case"] for u in card["unreadable"]] == ["lesion/img_1.png"]
    assert card["unreadable"][0]["path"] == str(broken)
    assert "truncated or corrupt" in card["unreadable"][0]["error"]
    assert card["dataset"]["num_readable"] == 5
    (finding,) = findings(card, "image.unreadable")
    assert finding["severity"] == "error" and finding["cases"] == ["lesion/img_1.png"]


def _nan_dataset(root, make, suffix):
    for name in ("a", "b"):
        make.volume(root / "images" / f"{name}{suffix}", np.ones((4, 4, 3), np.float32))
        make.volume(root / "labels" / f"{name}{suffix}", np.zeros((4, 4, 3), np.uint8))
    volume = np.ones((4, 4, 3), np.float32)
    volume[1, 2, 0] = np.nan
    make.volume(root / "images" / f"b{suffix}", volume)
    return open_dataset(root)


def test_an_image_with_nan_voxels_is_flagged(tmp_path, make):
    card = inspect_dataset(_nan_dataset(tmp_path, make, ".mha"))

    (nan,) = findings(card, "image.nan")
    assert nan["severity"] == "error" and nan["cases"] == ["b"]
    assert [u["case"] for u in card["unreadable"]] == ["b"]


def test_a_nifti_with_nan_voxels_is_flagged(tmp_path, make):
    card = inspect_dataset(_nan_dataset(tmp_path, make, ".nii.gz"))

    assert [f["cases"] for f in findings(card, "image.nan")] == [["b"]]


def _decathlon(root, make, mask, *, mask_spacing=(1.0, 1.0, 1.0), mask_origin=(0.0, 0.0, 0.0), labels=None):
    make.volume(root / "imagesTr" / "c.nii.gz", np.ones((6, 5, 4), np.float32))
    make.volume(root / "labelsTr" / "c.nii.gz", mask, spacing=mask_spacing, origin=mask_origin)
    spec = {"labels": labels or {"0": "background", "1": "lesion"}, "tensorImageSize": "3D",
            "training": [{"image": "./imagesTr/c.nii.gz", "label": "./labelsTr/c.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return open_dataset(root)


def _mask(value=1, shape=(6, 5, 4)):
    mask = np.zeros(shape, np.uint8)
    mask[2:4, 1:3, 1:3] = value
    return mask


def test_a_clean_segmentation_dataset_has_no_mask_findings(tmp_path, make):
    card = inspect_dataset(_decathlon(tmp_path, make, _mask()))

    assert findings(card) == []
    assert card["masks"] == {"declared_labels": {"0": "background", "1": "lesion"},
                             "cases_with_label": {"0": 1, "1": 1}, "all_background": [],
                             "label_voxels": {"0": 112, "1": 8}, "foreground_fraction": 8 / 120,
                             "foreground_intensity": {"percentiles": {"0.5": 1.0, "50": 1.0, "99.5": 1.0},
                                                      "mean": 1.0, "std": 0.0, "voxels_sampled": 8}}
    assert card["dataset"]["task_label"] == "segmentation 3D"
    assert card["images"]["spacing_mm"]["axis2"] == {"min": 1.0, "p10": 1.0, "median": 1.0, "max": 1.0}


def test_a_mask_label_outside_the_declared_labels_is_flagged(tmp_path, make):
    card = inspect_dataset(_decathlon(tmp_path, make, _mask(value=3)))

    (bad,) = findings(card, "mask.labels")
    assert bad["severity"] == "error" and bad["cases"] == ["c"] and "[3]" in bad["message"]


def test_non_contiguous_declared_labels_are_accepted(tmp_path, make):
    mask = _mask(value=4)
    mask[0, 0, 0] = 2
    labels = {"0": "background", "1": "necrosis", "2": "edema", "4": "enhancing"}

    card = inspect_dataset(_decathlon(tmp_path, make, mask, labels=labels))

    assert findings(card, "mask.labels") == []


@pytest.mark.parametrize("geometry", [{"mask_spacing": (1.0, 1.0, 2.0)}, {"mask_origin": (0.0, 5.0, 0.0)}])
def test_a_mask_on_another_grid_is_flagged(tmp_path, make, geometry):
    card = inspect_dataset(_decathlon(tmp_path, make, _mask(), **geometry))

    (bad,) = findings(card, "mask.geometry")
    assert bad["severity"] == "error" and bad["cases"] == ["c"]
    assert "resample the mask onto the image grid" in bad["message"]


def test_a_2d_mask_for_a_3d_image_is_a_dims_problem(tmp_path, make):
    make.volume(tmp_path / "images" / "c.nii.gz", np.ones((6, 5, 4), np.float32))
    make.volume(tmp_path / "labels" / "c.nii.gz", _mask()[:, :, 0])

    card = inspect_dataset(open_dataset(tmp_path))

    (bad,) = findings(card, "mask.dims")
    assert bad["cases"] == ["c"] and "shape (6, 5)" in bad["message"]


def test_a_2d_mask_in_a_decathlon_folder_is_a_dims_problem_only(tmp_path, make):
    card = inspect_dataset(_decathlon(tmp_path, make, _mask()[:, :, 0]))

    assert [f["code"] for f in findings(card) if f["code"].startswith("mask.")] == ["mask.dims"]


def test_mixed_2d_and_3d_images_are_flagged(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 3, "lesion": 2})
    make.volume(tmp_path / "lesion" / "volume.nii.gz", np.ones((8, 8, 3), np.float32))

    card = inspect_dataset(open_dataset(tmp_path))

    (dims,) = findings(card, "image.dims")
    assert dims["severity"] == "error" and dims["cases"] == ["lesion/volume.nii.gz"]
    assert "3D while most are 2D" in dims["message"]


def test_a_class_without_training_cases_is_flagged(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 3}, split="train", seed=1)
    make.class_folders(tmp_path, {"normal": 1, "lesion": 2}, split="test", seed=2)

    card = inspect_dataset(open_dataset(tmp_path))

    (missing,) = findings(card, "class.no_training")
    assert missing["severity"] == "error" and "lesion" in missing["message"]


def test_strong_imbalance_is_reported_as_info(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 10, "lesion": 2})

    card = inspect_dataset(open_dataset(tmp_path))

    assert [(f["code"], f["severity"]) for f in card["findings"]] == [("class.imbalance", "info")]


def test_the_card_is_json_and_its_fingerprint_is_stable(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 3, "lesion": 3})
    dataset = open_dataset(tmp_path)
    calls = []

    first = inspect_dataset(dataset, progress=lambda done, total: calls.append((done, total)))
    second = inspect_dataset(open_dataset(tmp_path))

    assert json.loads(json.dumps(first, allow_nan=False))["fingerprint"] == first["fingerprint"]
    assert first["fingerprint"] == second["fingerprint"] and len(first["fingerprint"]) == 64
    assert calls[-1] == (6, 6) and len(calls) == 6
    make.png(tmp_path / "lesion" / "img_2.png", make.pixels(999))
    assert inspect_dataset(open_dataset(tmp_path))["fingerprint"] != first["fingerprint"]


def test_cards_of_every_source_are_json(tmp_path, make, medmnist_sizes):
    sizes = {"train": 4, "val": 2, "test": 2}
    medmnist_sizes("breastmnist", sizes)
    _decathlon(tmp_path / "seg", make, _mask())
    for i in range(2):
        make.png(tmp_path / "csv" / f"{i}.png", make.pixels(i))
    sources = [make.npz(tmp_path / "breastmnist.npz", sizes), tmp_path / "seg",
               make.csv(tmp_path / "csv" / "m.csv", [{"image": "0.png", "label": "a"},
                                                     {"image": "1.png", "label": "b"}])]

    for source in sources:
        card = inspect_dataset(open_dataset(source))
        assert json.loads(json.dumps(card, allow_nan=False)) == card
