"""MedMNIST archives: metadata, the official split-size check, the array layout, lookup by name, fetch."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from medlens.data import medmnist, open_dataset
from medlens.data.medmnist import fetch_medmnist, medmnist_info, parse_name
from medlens.errors import DataMissingError, DatasetError
from medlens.types import Split, Task

TINY = {"train": 4, "val": 2, "test": 3}


def test_metadata_covers_all_18_datasets_with_an_md5_for_size_28():
    info = medmnist_info()

    assert len(info) == 18
    assert {"pneumoniamnist", "breastmnist", "chestmnist", "pathmnist", "organmnist3d", "adrenalmnist3d",
            "synapsemnist3d"} <= set(info)
    for name, entry in info.items():
        assert re.fullmatch(r"[0-9a-f]{32}", entry["files"]["28"]["md5"]), name
        assert entry["files"]["28"]["url"].startswith("https://"), name
        assert entry["task"] in {t.value for t in Task}, name
        assert entry["spatial_dims"] == (3 if name.endswith("3d") else 2), name
    assert info["pneumoniamnist"]["n_samples"] == {"train": 4708, "val": 524, "test": 624}


@pytest.mark.parametrize("text, expected", [("pneumoniamnist", ("pneumoniamnist", 28)),
                                            ("PneumoniaMNIST_64.npz", ("pneumoniamnist", 64)),
                                            ("organmnist3d_64", ("organmnist3d", 64))])
def test_parse_name(text, expected):
    assert parse_name(text) == expected


@pytest.mark.parametrize("text, message", [("foomnist", "not a MedMNIST dataset"),
                                           ("organmnist3d_128", "comes in sizes 28, 64, not 128")])
def test_parse_name_refuses_unknown_names_and_sizes(text, message):
    with pytest.raises(DatasetError, match=message):
        parse_name(text)


def test_an_archive_with_other_split_sizes_than_the_official_one_is_refused(tmp_path, make):
    path = make.npz(tmp_path / "pneumoniamnist.npz", TINY)

    with pytest.raises(DatasetError, match=r"train split has 4 images; the official pneumoniamnist has 4708"):
        open_dataset(path)


def test_an_archive_missing_arrays_is_refused(tmp_path):
    path = tmp_path / "breastmnist.npz"
    np.savez(path, train_images=np.zeros((1, 2, 2), np.uint8))

    with pytest.raises(DatasetError, match="missing arrays .*train_labels"):
        open_dataset(path)


def test_a_2d_archive_lists_official_splits_and_serves_x_y_arrays(tmp_path, make, medmnist_sizes):
    medmnist_sizes("pneumoniamnist", TINY)
    path = make.npz(tmp_path / "pneumoniamnist.npz", TINY, image_shape=(5, 7))
    raw = np.load(path)

    ds = open_dataset(path)

    assert ds.layout == "medmnist" and ds.task is Task.BINARY and ds.spatial_dims == 2
    assert ds.class_names == ("normal", "pneumonia")
    assert ds.meta["medmnist"] == "pneumoniamnist" and ds.meta["size"] == 28
    assert {k: len(v) for k, v in ds.by_split().items()} == TINY
    case = next(c for c in ds.cases if c.case_id == "val/000001")
    assert case.split is Split.VAL and case.index == 1 and case.label == int(raw["val_labels"][1, 0])
    image = ds.load_image(case)
    assert image.array.shape == (1, 7, 5)  # (C, X, Y): X is the width (columns)
    rows_cols = raw["val_images"][1]
    assert image.array[0, 6, 4] == rows_cols[4, 6]
    np.testing.assert_array_equal(image.array[0].T, rows_cols)
    assert image.spacing_known is False


def test_a_colour_archive_serves_three_channels(tmp_path, make, medmnist_sizes):
    medmnist_sizes("pathmnist", TINY)
    path = make.npz(tmp_path / "pathmnist.npz", TINY, image_shape=(5, 7, 3), num_classes=9)

    ds = open_dataset(path)

    assert ds.task is Task.MULTICLASS and ds.num_classes == 9
    rgb = np.load(path)["train_images"][2]
    image = ds.load_image(ds.cases[2])
    assert image.array.shape == (3, 7, 5)
    np.testing.assert_array_equal(image.array[:, 3, 1], rgb[1, 3, :])


def test_a_3d_archive_serves_x_y_z_volumes(tmp_path, make, medmnist_sizes):
    medmnist_sizes("adrenalmnist3d", TINY)
    path = make.npz(tmp_path / "adrenalmnist3d.npz", TINY, image_shape=(3, 4, 5))  # (D, H, W)

    ds = open_dataset(path)

    assert ds.spatial_dims == 3 and ds.task is Task.BINARY
    volume = np.load(path)["test_images"][0]
    image = ds.load_image(next(c for c in ds.cases if c.case_id == "test/000000"))
    assert image.array.shape == (1, 5, 4, 3)  # (C, X, Y, Z)
    assert image.array[0, 4, 1, 2] == volume[2, 1, 4]


def test_a_multilabel_archive_gives_0_1_tuples(tmp_path, make, medmnist_sizes):
    medmnist_sizes("chestmnist", TINY)
    path = make.npz(tmp_path / "chestmnist.npz", TINY, labels_per_case=14)

    ds = open_dataset(path)

    assert ds.task is Task.MULTILABEL
    expected = tuple(int(v) for v in np.load(path)["train_labels"][0])
    assert ds.cases[0].label == expected and len(expected) == 14


def test_a_name_is_looked_up_in_medlens_data_dir(isolated_medmnist_search, make, medmnist_sizes):
    medmnist_sizes("breastmnist", TINY)
    make.npz(isolated_medmnist_search / "medmnist" / "breastmnist_64.npz", TINY)

    ds = open_dataset("breastmnist_64")

    assert ds.root == isolated_medmnist_search / "medmnist" / "breastmnist_64.npz"
    assert ds.meta["size"] == 64


def test_a_name_that_is_nowhere_says_where_it_looked_and_how_to_fetch_it(isolated_medmnist_search):
    with pytest.raises(DataMissingError) as error:
        open_dataset("pneumoniamnist")

    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert "pneumoniamnist.npz not found" in message
    assert str(isolated_medmnist_search) in message and str(isolated_medmnist_search / "medmnist") in message
    assert "`medlens fetch medmnist pneumoniamnist --size 28`" in message
    assert medmnist_info()["pneumoniamnist"]["files"]["28"]["url"] in message
    assert medmnist_info()["pneumoniamnist"]["files"]["28"]["md5"] in message


def test_a_missing_larger_size_names_that_size(isolated_medmnist_search):
    with pytest.raises(DataMissingError, match=r"pneumoniamnist_128\.npz not found.*--size 128"):
        open_dataset("pneumoniamnist_128")


# --- fetch ----------------------------------------------------------------------------------

def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_fetch_downloads_verifies_and_places_the_file(tmp_path, make, medmnist_sizes):
    source = make.npz(tmp_path / "mirror" / "anything.npz", TINY)
    medmnist_sizes("pneumoniamnist", md5=_md5(source))
    root = tmp_path / "dest"

    path = fetch_medmnist("pneumoniamnist", 28, root, url=source.as_uri())

    assert path == root / "pneumoniamnist.npz"
    assert path.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in root.iterdir()) == ["pneumoniamnist.npz"]


def test_fetch_keeps_a_file_that_is_already_verified(tmp_path, make, medmnist_sizes):
    root = tmp_path / "dest"
    existing = make.npz(root / "pneumoniamnist.npz", TINY)
    medmnist_sizes("pneumoniamnist", md5=_md5(existing))

    assert fetch_medmnist("pneumoniamnist", root=root, url=(tmp_path / "nothing-here").as_uri()) == existing


def test_fetch_with_a_wrong_md5_leaves_nothing_behind(tmp_path, make, medmnist_sizes):
    source = make.npz(tmp_path / "mirror" / "anything.npz", TINY)
    medmnist_sizes("pneumoniamnist", md5="0" * 32)
    root = tmp_path / "dest"

    with pytest.raises(DatasetError, match=r"has MD5 [0-9a-f]{32}, expected 0{32}"):
        fetch_medmnist("pneumoniamnist", 28, root, url=source.as_uri())

    assert list(root.iterdir()) == []


def test_fetch_from_an_unreachable_address_is_a_dataset_error(tmp_path, medmnist_sizes):
    root = tmp_path / "dest"

    with pytest.raises(DatasetError, match="could not download"):
        fetch_medmnist("breastmnist", 28, root, url=(tmp_path / "missing.npz").as_uri())
    assert list(root.iterdir()) == []


def test_fetch_defaults_to_medlens_data_dir(tmp_path, make, medmnist_sizes, monkeypatch):
    source = make.npz(tmp_path / "mirror" / "x.npz", TINY)
    medmnist_sizes("breastmnist", md5=_md5(source))
    monkeypatch.setenv("MEDLENS_DATA_DIR", str(tmp_path / "data"))

    assert fetch_medmnist("breastmnist", url=source.as_uri()) == tmp_path / "data" / "breastmnist.npz"


def test_the_metadata_patch_is_undone_between_tests():
    assert medmnist.medmnist_info()["pneumoniamnist"]["n_samples"]["train"] == 4708
