"""EpochSampler and balanced weights; preprocess_cases in memory and on disk; label_array checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.config import DataSection
from medlens.data import open_dataset
from medlens.data.dataset import Dataset
from medlens.data.loading import ArrayDataset, EpochSampler, balanced_weights, make_loader
from medlens.data.tensors import cache_dir, label_array, preprocess_cases
from medlens.errors import DatasetError
from medlens.types import Case, Task

# ---- sampler ----------------------------------------------------------------------------------


def order(sampler: EpochSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_is_a_permutation():
    sampler = EpochSampler(50, seed=3)

    drawn = order(sampler, 0)

    assert len(sampler) == 50
    assert sorted(drawn) == list(range(50))
    assert drawn != list(range(50))


def test_same_seed_and_epoch_give_the_same_order():
    assert order(EpochSampler(50, seed=3), 4) == order(EpochSampler(50, seed=3), 4)


def test_resumed_sampler_repeats_the_epoch():
    fresh, resumed = EpochSampler(30, seed=1), EpochSampler(30, seed=1)
    uninterrupted = [order(fresh, e) for e in range(3)]

    assert order(resumed, 2) == uninterrupted[2]


def test_different_epoch_or_seed_gives_a_different_order():
    sampler = EpochSampler(50, seed=3)

    assert order(sampler, 0) != order(sampler, 1)
    assert order(EpochSampler(50, seed=4), 0) != order(EpochSampler(50, seed=3), 0)


def test_balanced_weights_hand_computed():
    np.testing.assert_allclose(balanced_weights(np.array([0, 0, 0, 1])), [1 / 3, 1 / 3, 1 / 3, 1.0])


def test_weighted_sampler_draws_classes_equally_often():
    labels = np.array([0] * 900 + [1] * 100)
    sampler = EpochSampler(len(labels), seed=0, weights=balanced_weights(labels))

    drawn = np.concatenate([order(sampler, e) for e in range(5)])

    assert len(drawn) == 5000 and len(sampler) == 1000
    assert drawn.min() >= 0 and drawn.max() < 1000
    share_of_minority = (labels[drawn] == 1).mean()
    assert share_of_minority == pytest.approx(0.5, abs=0.04)  # 0.1 without the weights
    assert order(sampler, 2) == order(EpochSampler(1000, seed=0, weights=balanced_weights(labels)), 2)


def test_loader_over_arrays():
    images = np.arange(6 * 1 * 2 * 2, dtype=np.float32).reshape(6, 1, 2, 2)
    labels = np.array([0, 1, 0, 1, 1, 0])

    batches = list(make_loader(images, labels, batch_size=4))

    assert [len(b[0]) for b in batches] == [4, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (4, 1, 2, 2)
    torch.testing.assert_close(x, torch.from_numpy(images[:4]))
    assert y.tolist() == [0, 1, 0, 1]
    assert ArrayDataset(images)[5].shape == (1, 2, 2)


# ---- preprocess_cases -------------------------------------------------------------------------

@pytest.fixture
def folder_dataset(tmp_path, make) -> Dataset:
    make.class_folders(tmp_path / "data", {"normal": 3, "lesion": 2})
    return open_dataset(tmp_path / "data")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("MEDLENS_CACHE_DIR", str(path))
    return path


DATA = DataSection(input_size=(4, 4), channels=1, normalization="scale01", intensity_range=(0.0, 255.0))


def test_cache_dir_follows_the_environment(cache):
    assert cache_dir() == cache


def test_preprocess_in_memory(folder_dataset, cache):
    out = preprocess_cases(folder_dataset, folder_dataset.cases, DATA)

    assert isinstance(out, np.ndarray) and not isinstance(out, np.memmap)
    assert out.shape == (5, 1, 4, 4) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    first = folder_dataset.load_image(folder_dataset.cases[0]).array.astype(np.float32) / 255.0
    expected = first.reshape(1, 4, 2, 4, 2).mean(axis=(2, 4))  # 8x8 -> 4x4 block means
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    assert not cache.exists()  # nothing written for an in-memory run


def test_disk_cache_equals_memory_and_is_reused(folder_dataset, cache):
    in_memory = preprocess_cases(folder_dataset, folder_dataset.cases, DATA)
    disk = DataSection(**{**DATA.__dict__, "cache": "disk"})

    first = preprocess_cases(folder_dataset, folder_dataset.cases, disk)

    np.testing.assert_array_equal(np.asarray(first), in_memory)
    (path,) = (cache / "preprocessed").iterdir()  # one file, no temporary left over
    assert path.suffix == ".npy" and Path(first.filename) == path
    stamp = path.stat().st_mtime_ns
    calls = []

    second = preprocess_cases(folder_dataset, folder_dataset.cases, disk, progress=lambda i, n: calls.append(i))

    assert Path(second.filename) == path
    assert path.stat().st_mtime_ns == stamp
    assert calls == []  # nothing was read again
    np.testing.assert_array_equal(np.asarray(second), in_memory)


def test_changed_plan_or_cases_use_another_cache_file(folder_dataset, cache):
    disk = DataSection(**{**DATA.__dict__, "cache": "disk"})
    preprocess_cases(folder_dataset, folder_dataset.cases, disk)

    other = preprocess_cases(folder_dataset, folder_dataset.cases, DataSection(**{**disk.__dict__,
                                                                                 "input_size": (2, 2)}))
    fewer = preprocess_cases(folder_dataset, folder_dataset.cases[:3], disk)

    assert other.shape == (5, 1, 2, 2) and fewer.shape == (3, 1, 4, 4)
    assert len(list((cache / "preprocessed").iterdir())) == 3


def test_progress_is_reported(folder_dataset, cache):
    calls = []

    preprocess_cases(folder_dataset, folder_dataset.cases, DATA, progress=lambda i, n: calls.append((i, n)))

    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_unreadable_case_is_named(folder_dataset, cache):
    victim = folder_dataset.cases[1]
    victim.image.write_bytes(b"not a png")

    with pytest.raises(DatasetError, match=rf"case {victim.case_id}: .*Run `medlens inspect`"):
        preprocess_cases(folder_dataset, folder_dataset.cases, DATA)


def test_failed_disk_run_leaves_no_file(folder_dataset, cache):
    folder_dataset.cases[-1].image.unlink()
    disk = DataSection(**{**DATA.__dict__, "cache": "disk"})

    with pytest.raises(DatasetError):
        preprocess_cases(folder_dataset, folder_dataset.cases, disk)

    assert list((cache / "preprocessed").iterdir()) == []


def test_case_that_does_not_fit_the_plan(folder_dataset, cache):
    with pytest.raises(DatasetError, match=r"a 2D image .* but the model takes 3D input"):
        preprocess_cases(folder_dataset, folder_dataset.cases, DataSection(input_size=(4, 4, 4)))


# ---- label_array ------------------------------------------------------------------------------

def dataset(task: Task, class_names: tuple[str, ...], labels: list) -> Dataset:
    cases = [Case(f"c{i}", (Path(f"c{i}.png"),), label=label) for i, label in enumerate(labels)]
    return Dataset(Path("/nowhere"), "manual", task, class_names, cases)


def test_class_indices():
    ds = dataset(Task.MULTICLASS, ("a", "b", "c"), [2, 0, np.int64(1)])

    labels = label_array(ds, ds.cases)

    assert labels.dtype == np.int64 and labels.tolist() == [2, 0, 1]


def test_multilabel_flags():
    ds = dataset(Task.MULTILABEL, ("a", "b", "c"), [(1, 0, 1), (0, 0, 0)])

    labels = label_array(ds, ds.cases)

    assert labels.dtype == np.float32 and labels.shape == (2, 3)
    np.testing.assert_array_equal(labels, [[1, 0, 1], [0, 0, 0]])


def test_missing_label():
    ds = dataset(Task.BINARY, ("a", "b"), [0, None, None])

    with pytest.raises(DatasetError, match=r"2 case\(s\) have no label \(e\.g\. c1\); label them or leave them out"):
        label_array(ds, ds.cases)


@pytest.mark.parametrize("bad", [2, -1, "b", (0, 1)])
def test_label_outside_the_classes(bad):
    ds = dataset(Task.BINARY, ("a", "b"), [0, bad])

    with pytest.raises(DatasetError, match=rf"case c1: label {_re(bad)} is not a class index in 0\.\.1 \(a, b\)"):
        label_array(ds, ds.cases)


def _re(value) -> str:
    import re

    return re.escape(repr(value))


@pytest.mark.parametrize("bad", [(1, 0), (1, 0, 1, 0), 1])
def test_multilabel_of_the_wrong_length(bad):
    ds = dataset(Task.MULTILABEL, ("a", "b", "c"), [(0, 1, 0), bad])

    with pytest.raises(DatasetError, match=rf"case c1: a multi-label task needs 3 0/1 flags per case \(a, b, c\), "
                                           rf"found {_re(bad)}"):
        label_array(ds, ds.cases)


def test_labels_of_a_subset_follow_the_given_cases():
    ds = dataset(Task.BINARY, ("a", "b"), [0, 1, 1, 0])

    assert label_array(ds, ds.cases[1:3]).tolist() == [1, 1]
    assert label_array(ds, []).shape == (0,)

