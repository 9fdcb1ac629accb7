"""A CSV of DICOM studies (issue 16): a ``study`` column, series picked by ``--series-rule NAME=REGEX``, each
case one multi-view case whose co-registered series train as channels; the rules travel in the plan to
``predict STUDY``.

Studies are written with medlens' own DICOM writer: a T1 and a FLAIR series on one 8x8x4 grid (FLAIR brighter in
"tumour" studies; thin, so the plan enlarges it to the networks' smallest input), a localizer elsewhere.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from medlens.config import read_plan
from medlens.data import open_dataset
from medlens.data.dataset import series_rules_given
from medlens.data.views import read_channels
from medlens.errors import ConfigError, DatasetError
from medlens.io.dicom_write import write_dicom_series

DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets")
PGBM = DATA / "dicom" / "brain_tumor_progression_PGBM-003"
RULES = ["t1=T1", "flair=FLAIR"]


def write_study(folder: Path, seed: int, tumour: bool, *, flair: str = "FLAIR axial") -> Path:
    rng = np.random.default_rng(seed)
    t1 = 200 + 20 * rng.standard_normal((8, 8, 4))
    fl = 300 + 20 * rng.standard_normal((8, 8, 4)) + (400.0 if tumour else 0.0)
    for number, name, volume, description in ((2, "2-t1", t1, "T1 axial"), (5, "5-flair", fl, flair)):
        write_dicom_series(np.clip(volume, 0, None), folder / name, spacing_mm=(2.0, 2.0, 3.0), modality="MR",
                           uid_seed=f"{seed}-{name}", rescale_intercept=0.0, series_description=description,
                           patient_id=f"P{seed:02d}", study_seed=str(seed), series_number=number)
    write_dicom_series(np.zeros((4, 4, 2)), folder / "1-loc", origin_mm=(500.0, 0.0, 0.0), modality="MR",
                       uid_seed=f"{seed}-loc", rescale_intercept=0.0, series_description="Localizer",
                       patient_id=f"P{seed:02d}", study_seed=str(seed))
    return folder


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """``studies.csv`` (study, label, patient) of 12 studies under ``studies/``, 6 per class."""
    root = tmp_path_factory.mktemp("studies")
    rows = []
    for i in range(12):
        tumour = i % 2 == 1
        write_study(root / "studies" / f"s{i:02d}", i, tumour)
        rows.append({"study": f"studies/s{i:02d}", "label": "tumour" if tumour else "none", "patient": f"P{i:02d}"})
    write_csv(root / "studies.csv", rows)
    return root / "studies.csv"


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_each_study_is_one_case_whose_views_are_the_series_the_rules_pick(studies):
    dataset = open_dataset(studies, series_rules=RULES)

    assert dataset.meta["views"] == ["t1", "flair"] and len(dataset.cases) == 12
    case = dataset.cases[1]
    assert case.case_id == "P01" and case.views == ("t1", "flair") and case.label == dataset.class_names.index("tumour")
    assert [Path(p).name for p in case.images] == ["2-t1", "5-flair"]
    image = read_channels(dataset, case, ("t1", "flair"))
    assert image.array.shape == (2, 8, 8, 4)
    assert image.array[1].mean() > image.array[0].mean() + 300  # FLAIR is the second channel, bright in a tumour


def test_rules_put_in_force_reach_a_dataset_opened_layers_down(studies):
    with series_rules_given(RULES):
        assert open_dataset(studies).meta["views"] == ["t1", "flair"]


def test_a_study_column_without_rules_says_which_series_the_first_study_has(studies):
    with pytest.raises(ConfigError, match=r"--series-rule NAME=REGEX .*s00: 1-loc: 'MR Localizer'; 2-t1: 'MR T1 "
                                          r"axial'; 5-flair: 'MR FLAIR axial'"):
        open_dataset(studies)


def test_the_hint_without_rules_never_lists_a_study_outside_the_root(studies, tmp_path):
    rows = list(csv.DictReader(studies.open()))
    rows[0]["study"] = str(write_study(tmp_path / "elsewhere", 60, False, flair="FLAIR outside"))
    manifest = write_csv(studies.parent / "hint.csv", rows)

    with pytest.raises(ConfigError, match="The series of .*s01: ") as refused:
        open_dataset(manifest)
    assert "FLAIR outside" not in str(refused.value)


def test_rules_for_a_csv_without_a_study_column_or_for_a_folder_are_refused(tmp_path):
    plain = write_csv(tmp_path / "plain.csv", [{"image": "a.png", "label": "x"}, {"image": "b.png", "label": "y"}])
    with pytest.raises(ConfigError, match="no study column"):
        open_dataset(plain, series_rules=RULES)
    with pytest.raises(ConfigError, match="is not a CSV"):
        open_dataset(tmp_path, series_rules=RULES)


def test_a_study_whose_rule_matches_no_series_or_two_is_named_with_its_line(studies, tmp_path):
    root = studies.parent
    write_study(tmp_path / "odd" / "no_flair", 40, False, flair="T2 axial")
    write_study(tmp_path / "odd" / "two_t1", 41, True, flair="T1 FLAIR")
    rows = list(csv.DictReader(studies.open()))
    rows[3]["study"] = os.path.relpath(tmp_path / "odd" / "no_flair", root)
    rows[4]["study"] = os.path.relpath(tmp_path / "odd" / "two_t1", root)
    manifest = write_csv(root / "odd.csv", rows)

    lenient = open_dataset(manifest, series_rules=RULES, strict=False, allow_outside_root=True)
    [finding] = [f for f in lenient.findings if f.code == "series.unmatched"]
    assert len(lenient.cases) == 10 and finding.blocks_training
    assert "line 5: series rule flair=FLAIR matches no series" in finding.message
    assert "line 6: series rule t1=T1 matches 2 series (2-t1: 'MR T1 axial', 5-flair: 'MR T1 FLAIR')" in finding.message
    with pytest.raises(DatasetError, match="series.unmatched|matches no series"):
        open_dataset(manifest, series_rules=RULES, allow_outside_root=True)


def test_a_study_outside_the_root_is_refused_before_it_is_read_and_a_missing_one_is_named(studies, tmp_path):
    root = studies.parent
    rows = list(csv.DictReader(studies.open()))
    rows[0]["study"] = str(write_study(tmp_path / "elsewhere", 50, False))
    rows[1]["study"] = "studies/gone"
    dataset = open_dataset(write_csv(root / "outside.csv", rows), series_rules=RULES, strict=False)

    codes = {f.code: f.message for f in dataset.findings}
    assert "path.outside_root" in codes and str(tmp_path / "elsewhere") in codes["path.outside_root"]
    assert "file.missing" in codes and "studies/gone" in codes["file.missing"]
    assert len(dataset.cases) == 10


def test_study_and_image_columns_together_are_refused(tmp_path):
    manifest = write_csv(tmp_path / "both.csv", [{"study": "s", "image": "a.png", "label": "x"}])
    with pytest.raises(DatasetError, match="both a study column"):
        open_dataset(manifest, series_rules=RULES)


def test_train_keeps_the_rules_in_the_plan_and_predict_applies_them_to_a_new_study(cli, studies, tmp_path):
    run = tmp_path / "run"
    r = cli("train", studies, "--series-rule", "t1=T1", "--series-rule", "flair=FLAIR", "--out", run,
            "--set", "train.max_epochs=1", "--set", "evaluate.n_bootstrap=20", "--no-progress")
    assert r.rc == 0, r.out + r.err
    config, reasons = read_plan(run / "plan.yaml")
    assert config.dataset.series_rules == ("t1=T1", "flair=FLAIR")
    assert "--series-rule" in reasons["dataset.series_rules"]
    assert config.data.fusion == "channels" and config.data.channels == 2 and config.data.input_size == (8, 8, 8)

    assert cli("evaluate", run, "--bootstrap", "20").rc == 0  # reopens the studies through the plan's rules
    new = write_study(tmp_path / "new_study", 77, True)
    out = tmp_path / "predictions.csv"
    r = cli("predict", run, new, "--out", out)
    assert r.rc == 0, r.out + r.err
    [row] = list(csv.DictReader(out.open()))
    assert row["path"] == str(new) and row["error"] == "" and row["predicted"] in ("none", "tumour")
    assert row["missing_views"] == ""

    # a CSV of studies (paths relative to it): each row one case; a study the rules cannot read fails alone
    write_study(tmp_path / "cases" / "good", 78, False)
    write_study(tmp_path / "cases" / "no_flair", 79, True, flair="T2 axial")
    listed = write_csv(tmp_path / "cases.csv", [{"Study_Folder": "cases/good", "label": "none"},
                                                {"Study_Folder": "cases/no_flair", "label": "tumour"}])
    r = cli("predict", run, listed, "--out", out)
    assert r.rc != 0  # one case failed, and the command says so
    good, bad = list(csv.DictReader(out.open()))
    assert good["path"] == "cases.csv line 2" and good["error"] == "" and good["predicted"] in ("none", "tumour")
    assert bad["path"] == "cases.csv line 3" and bad["predicted"] == ""
    assert "flair=FLAIR matches no series" in bad["error"] and "T2 axial" in bad["error"]


@pytest.mark.realdata
def test_the_brain_tumor_progression_study_is_one_case_of_four_channels(tmp_path):
    if not PGBM.exists():
        pytest.skip(f"real data not available: {PGBM}")
    manifest = write_csv(tmp_path / "pgbm.csv", [{"study": PGBM.name}])
    from medlens.data.dataset import unlabelled_allowed

    with unlabelled_allowed():
        dataset = open_dataset(manifest, image_root=PGBM.parent,
                               series_rules=["t1pre=T1pre", "t1post=T1post", "flair=FLAIR", "t2=T2_reg"])
    [case] = dataset.cases
    assert case.case_id == PGBM.name and case.views == ("t1pre", "t1post", "flair", "t2")
    image = read_channels(dataset, case, case.views)
    assert image.array.shape == (4, 280, 320, 22)
    assert all(image.array[c].std() > 10 for c in range(4))


def test_a_study_for_a_model_without_series_rules_is_refused_with_what_to_do():
    from medlens.config import Config
    from medlens.tasks.classification.predict import CaseSource

    case = CaseSource(None, {}, "cases.csv line 2", study="studies/s00")
    with pytest.raises(ConfigError, match=r"cases.csv line 2: a study folder .* trained without series rules"):
        case.views(Config())
    assert CaseSource("a.png", {}, "a.png").views(Config()) == "a.png"
