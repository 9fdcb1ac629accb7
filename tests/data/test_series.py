"""DICOM studies: series picked by NAME=REGEX rules on "<Modality> <SeriesDescription>", read as one case."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medlens.data.series import list_series, pick_series, read_study
from medlens.errors import ConfigError, DatasetError
from medlens.io import read_image
from medlens.io.dicom_write import write_dicom_series

DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets")
PGBM = DATA / "dicom" / "brain_tumor_progression_PGBM-003"


@pytest.fixture
def study(tmp_path) -> Path:
    """T1 (4x5x3 of 2 mm), T2 (8x10x6 of 1 mm, same box) and a localizer far away (CT)."""
    root = tmp_path / "study"
    t1 = np.arange(60, dtype=float).reshape(4, 5, 3) * 10
    write_dicom_series(t1, root / "3-t1", spacing_mm=(2.0, 2.0, 2.0), modality="MR", uid_seed="t1",
                       rescale_intercept=0.0, series_description="T1 axial")
    write_dicom_series(np.full((8, 10, 6), 100.0), root / "4-t2", spacing_mm=(1.0, 1.0, 1.0),
                       origin_mm=(-0.5, -0.5, -0.5), modality="MR", uid_seed="t2", rescale_intercept=0.0,
                       series_description="T2 axial")
    write_dicom_series(np.zeros((4, 4, 2)), root / "1-loc", origin_mm=(500.0, 0.0, 0.0), modality="CT",
                       uid_seed="loc", series_description="Localizer")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not DICOM")
    return root


def test_list_series_labels_each_dicom_subfolder(study):
    assert [(s.folder.name, s.label) for s in list_series(study)] == [
        ("1-loc", "CT Localizer"), ("3-t1", "MR T1 axial"), ("4-t2", "MR T2 axial")]


def test_pick_series_matches_modality_and_description_ignoring_case(study):
    assert pick_series(study, ["t2=t2", "t1=^mr t1", "loc=^CT"]) == {
        "t2": study / "4-t2", "t1": study / "3-t1", "loc": study / "1-loc"}


@pytest.mark.parametrize(("rules", "match"), [
    (["t1=T1", "flair=FLAIR"], r"study: series rule flair=FLAIR matches no series \(seen 1-loc: 'CT Localizer'"),
    (["mr=MR"], r"rule mr=MR matches 2 series \(3-t1: 'MR T1 axial', 4-t2: 'MR T2 axial'\)"),
])
def test_a_rule_must_match_exactly_one_series(study, rules, match):
    with pytest.raises(DatasetError, match=match):
        pick_series(study, rules)


@pytest.mark.parametrize(("rules", "match"), [
    (["t1"], "is not NAME=REGEX"), (["t1=T1", "t1=T2"], "two rules"), (["t1=T1("], "not a regular expression"),
    ([], "no series rule given"),
])
def test_malformed_rules_are_config_errors(study, rules, match):
    with pytest.raises(ConfigError, match=match):
        pick_series(study, rules)


def test_read_study_stacks_the_series_on_the_first_rules_grid(study):
    image = read_study(study, ["t1=T1", "t2=T2"])

    t1 = read_image(study / "3-t1")
    assert image.array.shape == (2, 4, 5, 3) and image.same_geometry(t1) and image.meta["views"] == ["t1", "t2"]
    np.testing.assert_allclose(image.array[0], t1.array[0])
    np.testing.assert_allclose(image.array[1], 100.0, atol=1e-3)


def test_read_study_refuses_a_series_far_from_the_first(study):
    with pytest.raises(DatasetError, match=r"loc and t1 do not overlap .* mm apart"):
        read_study(study, ["t1=T1", "loc=Localizer"])


@pytest.mark.realdata
def test_the_brain_tumor_progression_study_reads_as_four_co_registered_channels():
    if not PGBM.exists():
        pytest.skip(f"real data not available: {PGBM}")
    assert sorted(s.label for s in list_series(PGBM)) == [
        "MR FLAIR_reg", "MR HippoCrop", "MR T1post", "MR T1pre_reg", "MR T2_reg"]

    image = read_study(PGBM, ["t1pre=T1pre", "t1post=T1post", "flair=FLAIR", "t2=T2_reg"])

    t1pre = read_image(PGBM / "26401-T1prereg-52906")
    assert image.array.shape == (4, 280, 320, 22) and image.same_geometry(t1pre)
    assert image.spacing_mm == pytest.approx((0.6875, 0.6875, 6.5), abs=1e-6)
    np.testing.assert_array_equal(image.array[0], t1pre.array[0])
    np.testing.assert_array_equal(image.array[2], read_image(PGBM / "36468-FLAIRreg-58706").array[0])
    assert all(image.array[c].std() > 10 for c in range(4))  # four real images, not an empty resampling
    two = r"t1=T1 matches 2 series \(11-T1post-18670: 'MR T1post', 26401-.*: 'MR T1pre_reg'\)"
    with pytest.raises(DatasetError, match=two):
        pick_series(PGBM, ["t1=T1", "flair=FLAIR"])
    with pytest.raises(DatasetError, match=r"dwi=DWI matches no series .*'MR HippoCrop'"):
        pick_series(PGBM, ["dwi=DWI"])
