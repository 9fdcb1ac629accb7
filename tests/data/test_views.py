"""Cases of several named images: views read apart (fusion views), co-registered views stacked (fusion channels)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medlens.config import DataSection
from medlens.data.dataset import Dataset, read_case_image
from medlens.data.tensors import _cache_key, preprocess_cases
from medlens.data.views import input_channels, prepare_views, read_channels, stack_views
from medlens.errors import DatasetError
from medlens.io import read_image
from medlens.transforms import Preprocessor
from medlens.types import Case, Task


def write_volume(path: Path, array_xyz: np.ndarray, spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0)) -> Path:
    """An array ``(X, Y[, Z])`` written with SimpleITK (which takes ``(Z, Y, X)``) and its geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.T.astype(np.float32)))
    image.SetSpacing(spacing_mm)
    image.SetOrigin(origin_mm)
    sitk.WriteImage(image, str(path))
    return path


def views_dataset(root: Path, cases: list[Case], views: tuple[str, ...]) -> Dataset:
    return Dataset(root, "manifest", Task.BINARY, ("no", "yes"), cases, meta={"views": list(views)})


def ramp(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(10.0 * seed, 1.0 + seed, size=shape).astype(np.float32)


@pytest.fixture
def two_d(tmp_path):
    """Case ``p1`` with views b then a (files listed out of plan order) of different sizes; ``p2`` lacks b."""
    a = write_volume(tmp_path / "a1.nii.gz", ramp((12, 10), 1), (1.0, 1.0), (0.0, 0.0))
    b = write_volume(tmp_path / "b1.nii.gz", ramp((20, 16), 2), (0.5, 0.5), (0.0, 0.0))
    a2 = write_volume(tmp_path / "a2.nii.gz", ramp((12, 10), 3), (1.0, 1.0), (0.0, 0.0))
    cases = [Case("p1", (b, a), label=0, views=("b", "a")), Case("p2", (a2,), label=1, views=("a",))]
    return views_dataset(tmp_path, cases, ("a", "b"))


def test_input_channels_counts_views_only_when_encoded_apart():
    assert input_channels(DataSection(channels=2)) == 2
    assert input_channels(DataSection(channels=2, views=("t1", "t2", "flair"), fusion="views")) == 6
    assert input_channels(DataSection(channels=3, views=("t1", "t2", "flair"), fusion="channels")) == 3


def test_prepare_views_places_each_view_by_name_and_leaves_a_missing_one_nan(two_d):
    data = DataSection(input_size=(8, 8), channels=1, views=("a", "b", "c"), fusion="views")
    p1, p2 = two_d.cases

    out = prepare_views(two_d, p1, data)

    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    prepare = Preprocessor(data)
    np.testing.assert_allclose(out[0], prepare(read_image(p1.images[1]))[0], atol=1e-6)  # "a" is the 2nd file
    np.testing.assert_allclose(out[1], prepare(read_image(p1.images[0]))[0], atol=1e-6)
    assert np.isnan(out[2]).all() and np.isfinite(out[:2]).all()
    lacking_b = prepare_views(two_d, p2, data)
    assert np.isfinite(lacking_b[0]).all() and np.isnan(lacking_b[1]).all()


def test_prepare_views_in_3d_with_three_channels_per_view(tmp_path):
    t1 = write_volume(tmp_path / "t1.nii.gz", ramp((6, 7, 5), 1))
    t2 = write_volume(tmp_path / "t2.nii.gz", ramp((9, 9, 9), 2), (2.0, 2.0, 2.0))
    dataset = views_dataset(tmp_path, [Case("p1", (t1, t2), label=0, views=("t1", "t2"))], ("t1", "t2"))
    data = DataSection(input_size=(4, 4, 4), channels=3, views=("t2", "missing", "t1"), fusion="views")

    out = prepare_views(dataset, dataset.cases[0], data)

    assert out.shape == (9, 4, 4, 4)
    assert np.isfinite(out[:3]).all() and np.isnan(out[3:6]).all() and np.isfinite(out[6:]).all()
    np.testing.assert_allclose(out[0], out[2])  # one grey view repeated to the plan's 3 channels
    np.testing.assert_allclose(out[6:], Preprocessor(data)(read_image(t1)), atol=1e-6)


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_preprocess_cases_gives_views_times_channels(two_d, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLENS_CACHE_DIR", str(tmp_path / "cache"))
    data = DataSection(input_size=(8, 8), channels=1, views=("a", "b"), fusion="views", cache=cache)

    out = preprocess_cases(two_d, two_d.cases, data)

    assert out.shape == (2, 2, 8, 8)
    assert np.isfinite(out[0]).all() and np.isfinite(out[1, 0]).all() and np.isnan(out[1, 1]).all()
    assert (tmp_path / "cache").exists() == (cache == "disk")


def test_the_cache_key_changes_with_the_views_and_the_fusion(two_d):
    base = DataSection(input_size=(8, 8), views=("a", "b"), fusion="views")
    keys = {_cache_key(two_d, two_d.cases, data) for data in
            (base, DataSection(input_size=(8, 8), views=("b", "a"), fusion="views"),
             DataSection(input_size=(8, 8), views=("a", "b"), fusion="channels"))}
    assert len(keys) == 3


def same_extent_volumes(tmp_path: Path, shift_mm: float = 0.0) -> tuple[Path, Path]:
    """8^3 voxels of 2 mm and 16^3 of 1 mm covering the same box [-1, 15] mm (``shift_mm`` moves the second);
    the 1 mm volume holds each voxel centre's x in mm, so resampled it must give the coarse centres' x."""
    coarse = write_volume(tmp_path / "t1.nii.gz", np.ones((8, 8, 8)), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    x_mm = np.arange(16) - 0.5 + shift_mm
    fine = np.broadcast_to(x_mm[:, None, None], (16, 16, 16))
    return coarse, write_volume(tmp_path / "t2.nii.gz", fine, (1.0, 1.0, 1.0), (-0.5 + shift_mm, -0.5, -0.5))


def test_stack_views_resamples_onto_the_first_grid(tmp_path):
    coarse, fine = same_extent_volumes(tmp_path)

    stacked = read_case_image(Case("p1", (coarse, fine), views=("t1", "t2")))

    first = read_image(coarse)
    assert stacked.array.shape == (2, 8, 8, 8) and stacked.same_geometry(first)
    np.testing.assert_allclose(stacked.array[0], 1.0)
    x_of_centres = 2.0 * np.arange(8)  # linear interpolation of a linear ramp is exact inside the volume
    np.testing.assert_allclose(stacked.array[1, :7, 3, 3], x_of_centres[:7], atol=1e-4)


def test_views_on_grids_that_do_not_overlap_are_refused_with_the_distance(tmp_path):
    coarse, fine = same_extent_volumes(tmp_path, shift_mm=100.0)

    with pytest.raises(DatasetError, match=r"case p1: t2 and t1 do not overlap .* 84\.0 mm apart.*register them"):
        read_case_image(Case("p1", (coarse, fine), views=("t1", "t2")))


def test_views_without_geometry_on_different_grids_are_refused(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.zeros((6, 6), np.float32))
    np.save(b, np.zeros((6, 8), np.float32))
    images = [read_image(a), read_image(b)]

    with pytest.raises(DatasetError, match="no physical geometry.*data.fusion: views"):
        stack_views(images, ["axial", "coronal"], where="case 7")


def test_read_channels_orders_by_the_plan_and_names_a_missing_view(tmp_path):
    coarse, fine = same_extent_volumes(tmp_path)
    dataset = views_dataset(tmp_path, [Case("p1", (coarse, fine), views=("t1", "t2")),
                                       Case("p2", (coarse,), views=("t1",))], ("t1", "t2"))

    stacked = read_channels(dataset, dataset.cases[0], ("t2", "t1"))

    assert stacked.same_geometry(read_image(fine))  # the first view of the plan is the reference grid
    np.testing.assert_allclose(stacked.array[1], 1.0, atol=1e-5)
    with pytest.raises(DatasetError, match="case p2 has no t2 view"):
        read_channels(dataset, dataset.cases[1], ("t1", "t2"))
    data = DataSection(input_size=(8, 8, 8), channels=2, views=("t1", "t2"), fusion="channels")
    with pytest.raises(DatasetError, match="case p2 .*no t2 view"):
        preprocess_cases(dataset, dataset.cases, data)
    assert preprocess_cases(dataset, dataset.cases[:1], data).shape == (1, 2, 8, 8, 8)


def views_study(root: Path, shift_mm: float = 0.0) -> Dataset:
    """Four cases of t1 and t2 volumes (t2 ``shift_mm`` along x off t1's grid); case c3 lacks t2."""
    cases = []
    for k in range(4):
        t1 = write_volume(root / f"c{k}_t1.nii.gz", ramp((6, 6, 4), 1), (1.5, 1.5, 3.0))
        if k == 3:
            cases.append(Case(f"c{k}", (t1,), label=k % 2, views=("t1",)))
            continue
        t2 = write_volume(root / f"c{k}_t2.nii.gz", ramp((6, 6, 4), 5), (1.5, 1.5, 3.0), (shift_mm, 0.0, 0.0))
        cases.append(Case(f"c{k}", (t1, t2), label=k % 2, views=("t1", "t2")))
    return views_dataset(root, cases, ("t1", "t2"))


def test_the_modality_audit_counts_views_and_sees_co_registered_volumes(tmp_path):
    from medlens.data.audit import inspect_dataset

    card = inspect_dataset(views_study(tmp_path))

    views = card["views"]
    assert views["names"] == ["t1", "t2"] and views["co_registered"] is True
    t1, t2 = views["per_view"]["t1"], views["per_view"]["t2"]
    assert (t1["cases"], t1["missing"], t2["cases"], t2["missing"], t2["missing_cases"]) == (4, 0, 3, 1, ["c3"])
    assert t2["intensity"]["mean"] == pytest.approx(50.0, abs=1.0) and t2["intensity"]["std"] == pytest.approx(6, abs=1)
    assert t1["intensity"]["p1"] < 10.0 < t1["intensity"]["p99"]
    assert t1["spacing_mm"]["axis2"]["median"] == pytest.approx(3.0) and t2["shape"]["axis0"]["max"] == 6
    codes = {f["code"]: f for f in card["findings"]}
    assert codes["views.incomplete"]["severity"] == "warning" and codes["views.incomplete"]["cases"] == ["c3"]
    assert "views.grid" not in codes
    assert card["images"]["channels"] == {"2": 3, "1": 1}  # co-registered views are stacked for the main audit


def test_the_modality_audit_measures_how_far_apart_the_grids_are(tmp_path):
    from medlens.data.audit import inspect_dataset

    card = inspect_dataset(views_study(tmp_path, shift_mm=5.0))

    views = card["views"]
    assert views["co_registered"] is False
    assert views["grids"]["cases_apart"] == 3 and views["grids"]["max_origin_distance_mm"] == pytest.approx(5.0)
    assert views["grids"]["not_overlapping"] == []
    [grid] = [f for f in card["findings"] if f["code"] == "views.grid"]
    assert grid["severity"] == "warning" and "5.0 mm" in grid["message"] and "encode each view apart" in grid["message"]
    assert card["images"]["channels"] == {"1": 4}  # off one grid: the first view stands for the case


def test_a_dataset_without_views_has_no_views_card(tmp_path):
    from medlens.data.audit import inspect_dataset

    image = write_volume(tmp_path / "a.nii.gz", ramp((6, 6, 4), 1))
    dataset = Dataset(tmp_path, "manifest", Task.BINARY, ("no", "yes"), [Case("a", (image,), label=0)])
    assert "views" not in inspect_dataset(dataset)


def test_pictures_of_different_planes_are_audited_view_by_view(tmp_path):
    """Files without geometry on different grids (axial and sagittal pictures): every case stays readable."""
    from medlens.data.audit import inspect_dataset

    cases = []
    for k in range(3):
        axial, sagittal = tmp_path / f"{k}_a.npy", tmp_path / f"{k}_s.npy"
        np.save(axial, ramp((10, 12), k + 1))
        np.save(sagittal, ramp((12, 8), k + 1))
        cases.append(Case(f"s{k}", (axial, sagittal), label=k % 2, views=("axial", "sagittal")))

    card = inspect_dataset(views_dataset(tmp_path, cases, ("axial", "sagittal")))

    axial_shape, sagittal_shape = (read_image(path).spatial_shape for path in cases[0].images)
    assert card["dataset"]["num_readable"] == 3 and card["images"]["shape"]["axis1"]["median"] == axial_shape[1]
    assert card["views"]["co_registered"] is False
    assert card["views"]["per_view"]["sagittal"]["shape"]["axis1"]["max"] == sagittal_shape[1] != axial_shape[1]
    [grid] = [f for f in card["findings"] if f["code"] == "views.grid"]
    assert grid["severity"] == "info" and "no patient geometry" in grid["message"]


OASIS = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
             ) / "multimodal" / "oasis1_three_views"


@pytest.mark.realdata
def test_the_oasis_views_are_audited_as_three_pictures_encoded_apart(tmp_path):
    from medlens.data import open_dataset
    from medlens.data.audit import inspect_dataset

    if not OASIS.exists():
        pytest.skip(f"real data not available: {OASIS}")
    with open(OASIS / "oasis_cross-sectional.csv", newline="") as source, open(tmp_path / "m.csv", "w") as out:
        writer = csv.writer(out)
        writer.writerow(["patient_id", "image:axial", "image:coronal", "image:sagittal", "label"])
        for row in csv.DictReader(source):
            subject = row["ID"]
            if (OASIS / "axial" / f"{subject}_a.jpg").exists():
                writer.writerow([subject, f"axial/{subject}_a.jpg", f"coronal/{subject}_c.jpg",
                                 f"sagittal/{subject}_s.jpg", "dementia" if float(row["CDR"] or 0) > 0 else "none"])

    card = inspect_dataset(open_dataset(tmp_path / "m.csv", image_root=OASIS, allow_outside_root=True))

    views = card["views"]
    assert card["dataset"]["num_readable"] == 196 and views["cases_read"] == 196
    assert views["co_registered"] is False and views["grids"]["shapes_differ"] == 196
    per_view = views["per_view"]
    shapes = {name: tuple(int(v["shape"][f"axis{a}"]["median"]) for a in (0, 1)) for name, v in per_view.items()}
    assert shapes == {"axial": (176, 208), "coronal": (176, 176), "sagittal": (208, 176)}
    assert all(v["missing"] == 0 and v["channels"] == 1 and 50 < v["intensity"]["mean"] < 100
               and v["intensity"]["p99"] > 200 for v in per_view.values())
    assert [f["severity"] for f in card["findings"] if f["code"] == "views.grid"] == ["info"]
