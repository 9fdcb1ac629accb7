"""Segmentation volumes: resampling, normalisation, label mapping, caching and patch sampling.

Every dataset is a real Decathlon folder of tiny NIfTI volumes written under ``tmp_path`` and
opened with :func:`medlens.data.open_dataset`, the way ``medlens train`` opens it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medlens.config import Config, DataSection, DatasetSection, SegmentSection
from medlens.data import open_dataset
from medlens.data.volumes import (
    FOREGROUND_SAMPLES,
    PatchDataset,
    Volume,
    VolumeDataset,
    crop,
    foreground_positions,
    prepare_volumes,
)
from medlens.errors import DatasetError
from medlens.io import Image, identity_direction, write_image
from medlens.transforms.volume import (
    label_lookup,
    normalize,
    prepare_image,
    prepare_mask,
    resample,
    target_shape,
    to_original_grid,
)
from medlens.types import Case

SHAPE = (16, 16, 16)


def blob(shape=SHAPE, centre=(8, 8, 8), radius=3, value=1) -> np.ndarray:
    """``(X, Y, Z)`` uint8 mask: a ball of ``value`` around ``centre``."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ((np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius) * value).astype(np.uint8)


def volume_of(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """An MR-like ``(X, Y, Z)`` float32 volume, brighter where ``mask`` is set."""
    rng = np.random.default_rng(seed)
    return (100 + 200 * (mask > 0) + rng.normal(0, 10, mask.shape)).astype(np.float32)


def write_case(path, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    write_image(Image(np.asarray(array)[None], spacing, origin, identity_direction(3)), path)


def decathlon(root, cases: dict, *, labels=None, spacing=(1.0, 1.0, 1.0), mask_origin=(0.0, 0.0, 0.0)):
    """A Decathlon folder; ``cases[name] = mask`` (the image is made from the mask)."""
    labels = labels or {"0": "background", "1": "lesion"}
    training = []
    for i, (name, mask) in enumerate(cases.items()):
        write_case(root / "imagesTr" / f"{name}.nii.gz", volume_of(mask, seed=i), spacing)
        write_case(root / "labelsTr" / f"{name}.nii.gz", mask, spacing, mask_origin)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    spec = {"name": "tiny", "tensorImageSize": "3D", "modality": {"0": "MRI"}, "labels": labels,
            "numTraining": len(cases), "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(spec))
    return open_dataset(root)


def config(*, target_spacing=(1.0, 1.0, 1.0), label_values=(0, 1), cache="memory", **data) -> Config:
    names = ("background",) + tuple(f"class_{v}" for v in label_values[1:])
    data = {"input_size": SHAPE, "channels": 1, "normalization": "zscore", "target_spacing": target_spacing,
            "cache": cache, **data}
    return Config(dataset=DatasetSection(task="segmentation", class_names=names, label_values=label_values,
                                         spatial_dims=3),
                  data=DataSection(**data), segment=SegmentSection())


@pytest.fixture
def two_cases(tmp_path):
    return decathlon(tmp_path / "set", {"case_a": blob(), "case_b": blob(centre=(4, 10, 6), radius=2)})


# ---- prepare_volumes -------------------------------------------------------------------------------------

def test_volumes_on_their_own_grid_are_zscored_and_keep_their_masks(two_cases):
    volumes = prepare_volumes(two_cases, two_cases.cases, config())

    assert [v.case.case_id for v in volumes] == ["case_a", "case_b"]
    first = volumes[0]
    assert first.image.shape == (1, *SHAPE) and first.image.dtype == np.float32
    assert abs(first.image.mean()) < 1e-4 and abs(first.image.std() - 1) < 1e-3
    assert first.mask.dtype == np.uint8
    np.testing.assert_array_equal(first.mask, blob())
    assert len(first.foreground) == 1
    np.testing.assert_array_equal(np.sort(first.foreground[0], axis=0), np.sort(np.argwhere(blob() == 1), axis=0))


def test_coarser_target_spacing_resamples_image_and_mask(two_cases):
    volumes = prepare_volumes(two_cases, two_cases.cases, config(target_spacing=(2.0, 2.0, 1.5)))

    expected = (8, 8, 11)  # round(16 * 1 / 2), round(16 * 1 / 1.5)
    for v in volumes:
        assert v.image.shape == (1, *expected)
        assert v.mask.shape == expected
        assert v.mask.dtype == np.uint8
        assert set(np.unique(v.mask).tolist()) == {0, 1}
        assert np.isfinite(v.image).all()
    assert volumes[0].mask[4, 4, 5] == 1 and volumes[0].mask[0, 0, 0] == 0  # the ball stays in the centre


def test_progress_is_reported_per_case(two_cases):
    calls = []
    prepare_volumes(two_cases, two_cases.cases, config(), progress=lambda i, n: calls.append((i, n)))

    assert calls == [(1, 2), (2, 2)]


def test_no_case_is_rejected(two_cases):
    with pytest.raises(DatasetError, match="a split with no case"):
        prepare_volumes(two_cases, [], config())


def test_mask_off_the_image_grid_names_the_case(tmp_path):
    dataset = decathlon(tmp_path / "set", {"shifted": blob()}, mask_origin=(5.0, 0.0, 0.0))

    with pytest.raises(DatasetError, match=r"case shifted \(.*shifted\.nii\.gz\): the mask .* is not on the image's "
                                           r"grid.*resample the mask onto the image"):
        prepare_volumes(dataset, dataset.cases, config())


def test_undeclared_mask_values_are_rejected(tmp_path):
    mask = blob()
    mask[0, 0, 0] = 3
    dataset = decathlon(tmp_path / "set", {"odd": mask})

    with pytest.raises(DatasetError, match=r"case odd .*mask values \[3\] are not among the planned labels \[0, 1\]"):
        prepare_volumes(dataset, dataset.cases, config())


def test_label_values_map_to_consecutive_class_indices(tmp_path):
    mask = blob() + blob(centre=(3, 3, 3), radius=1, value=7)
    dataset = decathlon(tmp_path / "set", {"multi": mask},
                        labels={"0": "background", "1": "organ", "7": "tumour"})

    (volume,) = prepare_volumes(dataset, dataset.cases, config(label_values=(0, 1, 7)))

    np.testing.assert_array_equal(volume.mask, np.select([mask == 7, mask == 1], [2, 1], 0))
    assert [len(p) for p in volume.foreground] == [int((mask == 1).sum()), int((mask == 7).sum())]


def test_label_lookup_table():
    table = label_lookup([0, 1, 7])

    assert table.dtype == np.uint8
    assert table[[0, 1, 7]].tolist() == [0, 1, 2]
    assert set(table[[2, 3, 4, 5, 6]].tolist()) == {255}


def test_wrong_channel_count_is_rejected(two_cases):
    with pytest.raises(DatasetError, match="1 channel\\(s\\) but the plan expects 2"):
        prepare_volumes(two_cases, two_cases.cases, config(channels=2))


# ---- disk cache ----------------------------------------------------------------------------------------

def test_disk_cache_matches_memory_and_is_read_back(two_cases, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLENS_CACHE_DIR", str(tmp_path / "cache"))
    in_memory = prepare_volumes(two_cases, two_cases.cases, config(cache="memory"))
    assert not (tmp_path / "cache").exists()

    written = prepare_volumes(two_cases, two_cases.cases, config(cache="disk"))
    files = sorted((tmp_path / "cache" / "volumes").rglob("*.npy"))
    read = prepare_volumes(two_cases, two_cases.cases, config(cache="disk"))

    assert len(files) == 4  # image + mask per case
    for memory, first, second in zip(in_memory, written, read):
        for other in (first, second):
            np.testing.assert_array_equal(other.image, memory.image)
            np.testing.assert_array_equal(other.mask, memory.mask)
            for a, b in zip(other.foreground, memory.foreground):
                np.testing.assert_array_equal(a, b)
        assert isinstance(second.image, np.memmap)  # the second call reads the cache
    assert sorted((tmp_path / "cache" / "volumes").rglob("*.npy")) == files


def test_disk_cache_depends_on_the_preprocessing(two_cases, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLENS_CACHE_DIR", str(tmp_path / "cache"))
    prepare_volumes(two_cases, two_cases.cases, config(cache="disk"))
    coarse = prepare_volumes(two_cases, two_cases.cases, config(cache="disk", target_spacing=(2.0, 2.0, 2.0)))

    assert coarse[0].image.shape == (1, 8, 8, 8)
    assert len(list((tmp_path / "cache" / "volumes").iterdir())) == 2


# ---- crop / PatchDataset / VolumeDataset -------------------------------------------------------------

def test_crop_inside_matches_slicing():
    rng = np.random.default_rng(0)
    image, mask = rng.normal(size=(2, 10, 12, 8)).astype(np.float32), rng.integers(0, 3, (10, 12, 8)).astype(np.uint8)

    patch_image, patch_mask = crop(image, mask, (5, 6, 4), (4, 6, 4))

    np.testing.assert_array_equal(patch_image, image[:, 3:7, 3:9, 2:6])
    np.testing.assert_array_equal(patch_mask, mask[3:7, 3:9, 2:6])
    assert patch_image.dtype == np.float32 and patch_mask.dtype == np.uint8


def test_crop_pads_beyond_the_edges_with_zeros():
    image = np.ones((1, 6, 6, 6), np.float32)
    mask = np.ones((6, 6, 6), np.uint8)

    patch_image, patch_mask = crop(image, mask, (0, 5, 3), (4, 4, 4))

    assert patch_image.shape == (1, 4, 4, 4) and patch_mask.shape == (4, 4, 4)
    # x: window -2..1 (2 voxels outside), y: 3..6 (1 outside), z: 1..4 (inside)
    expected = np.zeros((4, 4, 4), np.uint8)
    expected[2:, :3, :] = 1
    np.testing.assert_array_equal(patch_mask, expected)
    np.testing.assert_array_equal(patch_image[0], expected.astype(np.float32))


def test_crop_entirely_outside_is_all_zeros():
    image, mask = np.ones((1, 4, 4, 4), np.float32), np.ones((4, 4, 4), np.uint8)

    patch_image, patch_mask = crop(image, mask, (20, 2, 2), (4, 4, 4))

    assert not patch_image.any() and not patch_mask.any()


def small_volume(case_id="v", shape=SHAPE, centre=(2, 3, 13), radius=1) -> Volume:
    mask = blob(shape, centre, radius)
    image = volume_of(mask)[None]
    return Volume(Case(case_id, ()), image, mask, foreground_positions(mask, 2, case_id))


def test_patch_dataset_is_reproducible_per_seed_epoch_and_index():
    volumes = [small_volume("a"), small_volume("b", centre=(12, 12, 4))]
    data = PatchDataset(volumes, (8, 8, 8), length=6, foreground_fraction=0.5, seed=3)
    again = PatchDataset(volumes, (8, 8, 8), length=6, foreground_fraction=0.5, seed=3)

    first = [data[i] for i in range(len(data))]
    for i, (image, mask) in enumerate(first):
        assert image.shape == (1, 8, 8, 8) and image.dtype == torch.float32
        assert mask.shape == (8, 8, 8) and mask.dtype == torch.int64
        torch.testing.assert_close(again[i][0], image)
        torch.testing.assert_close(again[i][1], mask)
    data.epoch = 1
    second = [data[i] for i in range(len(data))]
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, second))
    data.epoch = 0
    torch.testing.assert_close(data[4][0], first[4][0])


def test_foreground_fraction_one_centres_every_patch_on_foreground():
    data = PatchDataset([small_volume()], (6, 6, 6), length=40, foreground_fraction=1.0, seed=0)

    for i in range(len(data)):
        _, mask = data[i]
        assert mask[3, 3, 3] == 1


def test_foreground_fraction_zero_draws_patches_anywhere():
    data = PatchDataset([small_volume()], (6, 6, 6), length=40, foreground_fraction=0.0, seed=0)

    centres = [int(data[i][1][3, 3, 3]) for i in range(len(data))]
    patches = [data[i][0] for i in range(len(data))]

    assert centres.count(0) > 30  # the 7-voxel lesion is rarely hit by chance
    assert len({p.sum().item() for p in patches}) > 10


def test_patch_dataset_without_foreground_still_draws():
    volume = small_volume()
    volume.mask[:] = 0
    volume.foreground = foreground_positions(volume.mask, 2, "empty")
    data = PatchDataset([volume], (8, 8, 8), length=3, foreground_fraction=1.0, seed=0)

    assert all(data[i][1].sum() == 0 for i in range(3))


def test_foreground_positions_are_capped_and_deterministic():
    mask = np.ones((30, 30, 30), np.uint8)
    mask[0] = 2

    first = foreground_positions(mask, 3, "case")
    second = foreground_positions(mask, 3, "case")

    assert len(first[0]) == FOREGROUND_SAMPLES and len(first[1]) == 900
    np.testing.assert_array_equal(first[0], second[0])
    assert (mask[tuple(first[0].T)] == 1).all()
    assert first[0].dtype == np.int32


def test_volume_dataset_gives_whole_cases(two_cases):
    volumes = prepare_volumes(two_cases, two_cases.cases, config())
    data = VolumeDataset(volumes)

    image, mask = data[1]

    assert len(data) == 2
    assert image.shape == (1, *SHAPE) and mask.dtype == torch.int64
    np.testing.assert_array_equal(mask.numpy(), volumes[1].mask)


# ---- transforms.volume ------------------------------------------------------------------------------

def test_target_shape_keeps_the_physical_extent():
    image = Image(np.zeros((1, 10, 20, 7)), (0.5, 1.0, 3.0), (0, 0, 0), identity_direction(3))

    assert target_shape(image, DataSection(target_spacing=(1.0, 1.0, 1.0))) == (5, 20, 21)
    assert target_shape(image, DataSection(target_spacing=())) == (10, 20, 7)


def test_target_shape_without_known_spacing_keeps_the_grid():
    image = Image(np.zeros((1, 10, 20)), (1.0, 1.0), (0, 0), identity_direction(2), spacing_known=False)

    assert target_shape(image, DataSection(target_spacing=(2.0, 2.0))) == (10, 20)


def test_resample_nearest_keeps_labels_and_dtype():
    labels = np.zeros((1, 8, 8, 8), np.uint8)
    labels[0, 2:6, 2:6, 2:6] = 2

    out = resample(labels, (4, 12, 8), nearest=True)

    assert out.shape == (1, 4, 12, 8) and out.dtype == np.uint8
    assert set(np.unique(out).tolist()) == {0, 2}
    assert resample(labels, (8, 8, 8)) is labels


def test_normalize_ct_foreground_clips_then_zscores():
    array = np.array([[-2000.0, -100.0, 0.0, 50.0, 300.0, 3000.0]], np.float32)
    data = DataSection(normalization="ct_foreground", intensity_range=(-100.0, 300.0), foreground_stats=(50.0, 25.0))

    np.testing.assert_allclose(normalize(array, data), [[-6.0, -6.0, -2.0, 0.0, 10.0, 10.0]])


def test_normalize_zscore_is_per_channel():
    array = np.stack([np.arange(8, dtype=np.float32).reshape(2, 4), 100 + 10 * np.arange(8, dtype=np.float32)
                      .reshape(2, 4)])

    out = normalize(array, DataSection(normalization="zscore"))

    np.testing.assert_allclose(out.mean(axis=(1, 2)), [0, 0], atol=1e-6)
    np.testing.assert_allclose(out.std(axis=(1, 2)), [1, 1], atol=1e-5)
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


def test_prepare_image_and_mask_on_the_target_grid():
    mask_array = blob(shape=(8, 8, 8), centre=(4, 4, 4), radius=2)
    image = Image(volume_of(mask_array)[None], (1.0, 1.0, 2.0), (0, 0, 0), identity_direction(3))
    mask = image.with_array(mask_array[None])
    data = DataSection(input_size=(8, 8, 8), target_spacing=(2.0, 2.0, 2.0))

    prepared_image = prepare_image(image, data, "here")
    prepared_mask = prepare_mask(mask, image, data, [0, 1], "here")

    assert prepared_image.shape == (1, 4, 4, 8) and prepared_image.dtype == np.float32
    assert prepared_mask.shape == (4, 4, 8) and prepared_mask.dtype == np.uint8
    assert prepared_mask[2, 2, 4] == 1


def test_prepare_mask_rejects_another_spacing():
    image = Image(np.zeros((1, 4, 4, 4), np.float32), (1.0, 1.0, 1.0), (0, 0, 0), identity_direction(3))
    mask = Image(np.zeros((1, 4, 4, 4), np.uint8), (1.0, 1.0, 2.0), (0, 0, 0), identity_direction(3))

    with pytest.raises(DatasetError, match="where: the mask \\(shape \\(4, 4, 4\\), spacing \\(1.0, 1.0, 2.0\\)\\)"):
        prepare_mask(mask, image, DataSection(), [0, 1], "where")


@pytest.mark.parametrize("shape", [(16, 16, 16), (12, 20, 7)])
def test_to_original_grid_returns_the_requested_shape(shape):
    probs = torch.softmax(torch.randn(3, 8, 8, 8), dim=0)

    out = to_original_grid(probs, shape)

    assert out.shape == (3, *shape)
    torch.testing.assert_close(out.sum(0), torch.ones(shape))  # linear interpolation keeps a distribution
    assert to_original_grid(probs, (8, 8, 8)) is probs


def test_to_original_grid_2d():
    probs = torch.softmax(torch.randn(2, 5, 6), dim=0)

    assert to_original_grid(probs, (10, 3)).shape == (2, 10, 3)
