"""make_splits / read_splits: reproducible, patient-grouped, stratified splits that keep fixed splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from medlens.data.dataset import Dataset
from medlens.data.splits import make_splits, read_splits, summarize_splits
from medlens.errors import DatasetError
from medlens.types import Case, Split, Task


def classification(patients=60, per_patient=2, positive_every=3, splits=None) -> Dataset:
    """``patients`` patients with ``per_patient`` cases each; every ``positive_every``-th patient is positive."""
    cases = []
    for p in range(patients):
        for s in range(per_patient):
            split = splits(p) if splits else None
            cases.append(Case(case_id=f"p{p:03d}/s{s}.png", images=(Path(f"p{p:03d}_s{s}.png"),),
                              label=int(p % positive_every == 0), patient_id=f"P{p:03d}", split=split))
    return Dataset(Path("/data/demo"), "manifest", Task.BINARY, ("normal", "lesion"), cases)


def parts(doc: dict, fold: int) -> dict[str, list[str]]:
    return {"test": doc["test"], "train": doc["folds"][fold]["train"], "val": doc["folds"][fold]["val"]}


def patient_of(dataset: Dataset) -> dict[str, str]:
    return {c.case_id: c.patient_id for c in dataset.cases}


def assert_patients_in_one_part(dataset: Dataset, doc: dict) -> None:
    patient = patient_of(dataset)
    for k in range(len(doc["folds"])):
        where: dict[str, set] = {}
        for name, ids in parts(doc, k).items():
            for cid in ids:
                where.setdefault(patient[cid], set()).add(name)
        crossing = {p: s for p, s in where.items() if len(s) > 1}
        assert crossing == {}, f"fold {k}: {crossing}"


def test_the_same_seed_gives_the_same_document_and_another_seed_another():
    dataset = classification()

    first, again = make_splits(dataset, seed=7), make_splits(classification(), seed=7)
    other = make_splits(dataset, seed=8)

    assert json.dumps(first) == json.dumps(again)
    assert other["test"] != first["test"] or other["folds"] != first["folds"]
    assert first["seed"] == 7 and first["grouped_by"] == "patient_id" and first["stratified_by"] == "label"
    assert first["sources"] == {"test": "generated", "val": "generated"}


@pytest.mark.parametrize("folds", [1, 5])
def test_no_patient_is_in_two_parts_of_any_fold(folds):
    dataset = classification(per_patient=3)

    doc = make_splits(dataset, folds=folds, seed=3)

    assert len(doc["folds"]) == folds
    assert_patients_in_one_part(dataset, doc)
    for k in range(folds):
        ids = [cid for part in parts(doc, k).values() for cid in part]
        assert sorted(ids) == sorted(c.case_id for c in dataset.cases)  # every case once per fold


def test_fractions_are_roughly_respected():
    doc = make_splits(classification(patients=100), seed=0)

    assert 35 <= len(doc["test"]) <= 45  # 20% of 200 cases
    assert 28 <= len(doc["folds"][0]["val"]) <= 36  # 20% of the remaining 160


def test_each_non_test_case_is_validated_in_exactly_one_of_k_folds():
    dataset = classification()

    doc = make_splits(dataset, folds=4, seed=1)

    rest = sorted(set(c.case_id for c in dataset.cases) - set(doc["test"]))
    val_counts = Counter(cid for fold in doc["folds"] for cid in fold["val"])
    assert sorted(val_counts) == rest and set(val_counts.values()) == {1}
    for fold in doc["folds"]:
        assert set(fold["train"]).isdisjoint(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == rest


def test_stratification_keeps_class_proportions():
    dataset = classification(patients=90, positive_every=4)
    label = {c.case_id: c.label for c in dataset.cases}
    overall = sum(c.label for c in dataset.cases) / len(dataset)

    doc = make_splits(dataset, folds=3, seed=5)

    for ids in [doc["test"]] + [fold[part] for fold in doc["folds"] for part in ("train", "val")]:
        share = sum(label[cid] for cid in ids) / len(ids)
        assert abs(share - overall) <= 0.15, (share, overall)


def test_splits_fixed_by_the_dataset_are_kept():
    fixed = {0: Split.TEST, 1: Split.VAL}
    dataset = classification(splits=lambda p: fixed.get(p % 5, Split.TRAIN))

    doc = make_splits(dataset, seed=0)

    assert doc["sources"] == {"test": "dataset", "val": "dataset"}
    assert doc["test"] == [c.case_id for c in dataset.cases if c.split is Split.TEST]
    assert doc["folds"][0]["val"] == [c.case_id for c in dataset.cases if c.split is Split.VAL]
    assert doc["folds"][0]["train"] == [c.case_id for c in dataset.cases if c.split is Split.TRAIN]


def test_a_fixed_test_split_with_generated_validation_folds():
    dataset = classification(splits=lambda p: Split.TEST if p < 12 else Split.TRAIN)

    doc = make_splits(dataset, folds=3, seed=0)

    assert doc["sources"] == {"test": "dataset", "val": "generated"}
    assert doc["test"] == [c.case_id for c in dataset.cases if c.split is Split.TEST]
    assert_patients_in_one_part(dataset, doc)


def test_duplicate_groups_stay_in_one_part():
    dataset = Dataset(Path("/d"), "class_folders", Task.BINARY, ("a", "b"),
                      [Case(f"{i}.png", (Path(f"{i}.png"),), label=i % 2) for i in range(40)])
    groups = [["0.png", "2.png", "4.png"], ["1.png", "3.png"], ["10.png", "21.png"]]

    for seed in range(5):
        doc = make_splits(dataset, folds=2, seed=seed, duplicates=groups)
        for k in range(2):
            where = {cid: name for name, ids in parts(doc, k).items() for cid in ids}
            for group in groups:
                assert len({where[cid] for cid in group}) == 1, (seed, k, group)


def test_duplicates_linking_two_patients_do_not_split_a_patient():
    cases, groups = [], []
    for i in range(30):
        cases += [Case(f"a{i}_1", (Path("x"),), label=i % 2, patient_id=f"A{i}"),
                  Case(f"a{i}_2", (Path("x"),), label=i % 2, patient_id=f"A{i}"),
                  Case(f"b{i}_1", (Path("x"),), label=i % 2, patient_id=f"B{i}"),
                  Case(f"b{i}_2", (Path("x"),), label=i % 2, patient_id=f"B{i}")]
        groups.append([f"a{i}_1", f"b{i}_1"])  # one image filed under two patients
    dataset = Dataset(Path("/d"), "manifest", Task.BINARY, ("a", "b"), cases)

    doc = make_splits(dataset, seed=0, duplicates=groups)

    assert_patients_in_one_part(dataset, doc)


def test_segmentation_and_multilabel_datasets_can_be_split():
    seg = Dataset(Path("/s"), "decathlon", Task.SEGMENTATION, ("bg", "fg"),
                  [Case(f"c{i}", (Path("x"),), mask=Path("m")) for i in range(10)])
    multi = Dataset(Path("/m"), "manifest", Task.MULTILABEL, ("a", "b", "c"),
                    [Case(f"c{i}", (Path("x"),), label=(i % 2, int(i % 3 == 0), 0)) for i in range(30)])

    seg_doc = make_splits(seg, folds=2, test_fraction=0.2)
    multi_doc = make_splits(multi, folds=3)

    assert seg_doc["stratified_by"] is None and seg_doc["grouped_by"] == "case"
    assert len(seg_doc["test"]) == 2 and sorted(len(f["val"]) for f in seg_doc["folds"]) == [4, 4]
    assert sorted(sum((f["val"] for f in multi_doc["folds"]), multi_doc["test"])) == sorted(f"c{i}" for i in range(30))


def test_no_test_split_when_test_fraction_is_zero():
    doc = make_splits(classification(), test_fraction=0)

    assert doc["test"] == [] and doc["sources"]["test"] == "none"


def test_too_few_patients_is_refused():
    with pytest.raises(DatasetError, match=r"cannot make a cross-validation split: 3 patient\(s\)/case\(s\) "
                                           r"available but 5 groups needed"):
        make_splits(classification(patients=4, per_patient=5), folds=5, test_fraction=0.25)


@pytest.mark.parametrize("options", [{"folds": 0}, {"val_fraction": 1.0}, {"test_fraction": -0.1}])
def test_an_invalid_request_is_refused(options):
    with pytest.raises(DatasetError, match="invalid split request"):
        make_splits(classification(), **options)


def test_a_splits_file_round_trips_and_is_summarised(tmp_path):
    dataset = classification()
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(make_splits(dataset, folds=2)))

    splits = read_splits(path, dataset)

    lines = summarize_splits(dataset, splits)
    assert [line.split(":")[0].strip() for line in lines] == ["test", "fold 0 train", "fold 0 val", "fold 1 train",
                                                             "fold 1 val"]
    assert "normal=" in lines[0] and "lesion=" in lines[0]


def test_a_splits_file_for_another_dataset_is_refused(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(make_splits(classification(patients=30))))
    other = Dataset(Path("/other"), "manifest", Task.BINARY, ("a", "b"),
                    [Case(f"x{i}", (Path("x"),), label=i % 2) for i in range(10)])

    with pytest.raises(DatasetError, match=r"names 60 case\(s\) this dataset does not have .*another dataset"):
        read_splits(path, other)


@pytest.mark.parametrize("content, message", [("{broken", "not a readable splits file"),
                                               ('{"folds": []}', "not a medlens splits file")])
def test_a_file_that_is_not_a_splits_file_is_refused(tmp_path, content, message):
    path = tmp_path / "splits.json"
    path.write_text(content)

    with pytest.raises(DatasetError, match=message):
        read_splits(path)
