"""Reproducible patient-level splits: an untouched test split plus train/val folds.

Stratified by label and grouped by patient (no patient in two splits) through scikit-learn's
``StratifiedGroupKFold``. Splits a dataset fixes itself (official MedMNIST splits, ``test/``
folders, a CSV ``split`` column) are kept. The result is a JSON file that training reads::

    {"medlens_splits_version": 1, "seed": 0, "grouped_by": "patient_id", "test": [case ids],
     "folds": [{"train": [...], "val": [...]}, ...], "sources": {"test": "dataset", "val": "generated"}}

Cases left out because no reader opens them (``--skip-unreadable``) are listed under ``"skipped"``; they
are in no split, and a dataset that still holds them matches the file.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

import numpy as np

from medlens.data.dataset import Dataset
from medlens.errors import DatasetError
from medlens.types import Case, Split


def make_splits(dataset: Dataset, *, folds: int = 1, val_fraction: float = 0.2, test_fraction: float = 0.2,
                seed: int = 0, duplicates: list[list[str]] | None = None, skipped: Collection[str] = ()) -> dict:
    """Split ``dataset`` into a locked test set and ``folds`` train/val folds.

    Args:
        folds: 1 for a single train/val split, k > 1 for k-fold cross-validation.
        val_fraction: validation share of the non-test cases when ``folds == 1``.
        test_fraction: test share when the dataset fixes no test split.
        seed: the same seed and dataset give the same splits.
        duplicates: groups of case ids holding identical images (the card's ``duplicates``);
            each group is kept in one split, like the cases of one patient.
        skipped: case ids to leave out of every split (unreadable files, the card's ``skipped``).

    Returns:
        The splits document (see module docstring).

    Raises:
        DatasetError: too few cases or patients for the requested split.
    """
    if folds < 1 or not 0 < val_fraction < 1 or not 0 <= test_fraction < 1:
        raise DatasetError(f"invalid split request: folds={folds}, val_fraction={val_fraction}, "
                           f"test_fraction={test_fraction}; use folds >= 1 and fractions in (0, 1)")
    dataset = _unique_cases(dataset)
    if skipped:
        dataset = replace(dataset, cases=[c for c in dataset.cases if c.case_id not in set(skipped)])
    if duplicates:
        dataset = _merge_duplicate_groups(dataset, duplicates)
    fixed_test = [c for c in dataset.cases if c.split is Split.TEST]
    if fixed_test:
        test, rest, test_source = fixed_test, [c for c in dataset.cases if c.split is not Split.TEST], "dataset"
    elif test_fraction > 0:
        rest, test = _holdout(dataset, dataset.cases, test_fraction, seed, "test")
        test_source = "generated"
    else:
        test, rest, test_source = [], list(dataset.cases), "none"
    fixed_val = [c for c in rest if c.split is Split.VAL]
    if folds == 1 and fixed_val:
        train = [c for c in rest if c.split is not Split.VAL]
        fold_list, val_source = [(train, fixed_val)], "dataset"
    elif folds == 1:
        fold_list, val_source = [_holdout(dataset, rest, val_fraction, seed + 1, "validation")], "generated"
    else:
        fold_list, val_source = _kfold(dataset, rest, folds, seed + 1), "generated"
    document = {
        "medlens_splits_version": 1,
        "dataset": str(dataset.root),
        "cases_hash": cases_hash(dataset),
        "seed": seed,
        "grouped_by": "patient_id" if any(c.patient_id for c in dataset.cases) else "case",
        "stratified_by": None if dataset.task.label_form in ("mask", "none") else "label",
        "sources": {"test": test_source, "val": val_source},
        "test": [c.case_id for c in test],
        "folds": [{"train": [c.case_id for c in tr], "val": [c.case_id for c in va]} for tr, va in fold_list],
    }
    return leave_out(document, skipped) if skipped else document


def leave_out(splits: dict, skipped: Collection[str]) -> dict:
    """``splits`` without the cases ``skipped``, which it lists under ``"skipped"`` (so they are in no split).

    For a splits file made before some files became unreadable, or by ``medlens split`` without
    ``--skip-unreadable``; its ``cases_hash`` is then the one of the cases kept.
    """
    gone = set(skipped) | set(splits.get("skipped", []))
    kept = lambda ids: [i for i in ids if i not in gone]  # noqa: E731
    listed = set(splits["test"]).union(*(set(f["train"]) | set(f["val"]) for f in splits["folds"]))
    document = {**splits, "test": kept(splits["test"]),
                "folds": [{**f, "train": kept(f["train"]), "val": kept(f["val"])} for f in splits["folds"]],
                "skipped": sorted(gone)}
    if splits.get("cases_hash"):
        document["cases_hash"] = _hash_ids((listed | set(splits.get("skipped", []))) - gone)
    return document


def _unique_cases(dataset: Dataset) -> Dataset:
    """``dataset`` with each case id once (the first), so no splits file names a case twice.

    The sources list every file once (a manifest reports its repeated rows as findings); this
    keeps a dataset built some other way from putting one case in two splits.
    """
    first: dict[str, Case] = {}
    for case in dataset.cases:
        first.setdefault(case.case_id, case)
    return dataset if len(first) == len(dataset.cases) else replace(dataset, cases=list(first.values()))


def _merge_duplicate_groups(dataset: Dataset, duplicates: list[list[str]]) -> Dataset:
    """A view of ``dataset`` where identical images and all cases of their patients share one group.

    Groups are merged transitively (union-find): if one image is filed under two patients, all
    cases of both patients end up in the same split.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def node(case: Case) -> str:
        return f"patient:{case.patient_id}" if case.patient_id else f"case:{case.case_id}"

    by_id = {c.case_id: c for c in dataset.cases}
    for group in duplicates:
        members = [node(by_id[i]) for i in group if i in by_id]
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    cases = [replace(c, patient_id=find(node(c)).split(":", 1)[1] if node(c) in parent else c.patient_id)
             for c in dataset.cases]
    return replace(dataset, cases=cases)


def cases_hash(dataset: Dataset) -> str:
    """Identifies the case list a splits file was made for."""
    return _hash_ids(c.case_id for c in dataset.cases)


def _hash_ids(case_ids) -> str:
    return hashlib.sha256("\n".join(sorted(case_ids)).encode()).hexdigest()[:16]


def _strata(dataset: Dataset, cases: list[Case]) -> np.ndarray:
    if dataset.task.label_form == "mask" or any(c.label is None for c in cases):
        return np.zeros(len(cases), dtype=int)
    if dataset.task.label_form == "flags":
        # stratify on the rarest positive label of each case (0 = no finding)
        prevalence = np.sum([c.label for c in cases], axis=0)
        return np.array([1 + min((i for i, v in enumerate(c.label) if v), key=lambda i: prevalence[i], default=-1)
                         for c in cases])
    return np.array([c.label for c in cases])


def _groups(cases: list[Case]) -> np.ndarray:
    return np.array([c.patient_id or f"case:{c.case_id}" for c in cases])


def _splitter(n_splits: int, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold

    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _holdout(dataset: Dataset, cases: list[Case], fraction: float, seed: int, what: str):
    """(kept, held out), the held-out part being about ``fraction`` of the patients."""
    n_splits = max(2, round(1 / fraction))
    _check_enough(cases, n_splits, what)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" is reported by the audit
        splitter = _splitter(n_splits, seed)
        kept, held = next(splitter.split(np.zeros(len(cases)), _strata(dataset, cases), _groups(cases)))
    return [cases[i] for i in kept], [cases[i] for i in held]


def _kfold(dataset: Dataset, cases: list[Case], folds: int, seed: int):
    _check_enough(cases, folds, "cross-validation")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parts = _splitter(folds, seed).split(np.zeros(len(cases)), _strata(dataset, cases), _groups(cases))
        return [([cases[i] for i in tr], [cases[i] for i in va]) for tr, va in parts]


def _check_enough(cases: list[Case], n_splits: int, what: str) -> None:
    groups = len(set(_groups(cases)))
    if groups < n_splits:
        raise DatasetError(f"cannot make a {what} split: {groups} patient(s)/case(s) available but {n_splits} groups "
                           "needed; add data, or lower --folds / raise the fraction")


def read_splits(path: str | Path, dataset: Dataset | None = None) -> dict:
    """Load a splits file, checking it belongs to ``dataset`` when given.

    Raises:
        DatasetError: unreadable file, case ids the dataset does not have, or cases added since.
    """
    path = Path(path)
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable splits file ({exc}); make one with `medlens split DATA`") from None
    if not isinstance(splits, dict) or "folds" not in splits or "test" not in splits:
        raise DatasetError(f"{path}: not a medlens splits file (needs 'test' and 'folds'); make one with "
                           "`medlens split`")
    if dataset is not None:
        _check_same_cases(path, splits, dataset)
    return splits


def _check_same_cases(path: Path, splits: dict, dataset: Dataset) -> None:
    known = {c.case_id for c in dataset.cases} - set(splits.get("skipped", []))
    listed = set(splits["test"]).union(*(set(f["train"]) | set(f["val"]) for f in splits["folds"]))
    for k, fold in enumerate(splits["folds"]):
        twice = [i for i, n in Counter([*splits["test"], *fold["train"], *fold["val"]]).items() if n > 1]
        if twice:
            raise DatasetError(f"{path}: fold {k} lists {len(twice)} case(s) more than once (e.g. {twice[0]}), in "
                               "one split or in two; each case belongs to one split: run `medlens split` again")
    unknown = sorted(listed - known)
    if unknown:
        raise DatasetError(f"{path} names {len(unknown)} case(s) this dataset does not have (e.g. {unknown[0]}); "
                           "it was made for another dataset: run `medlens split` again")
    if splits.get("cases_hash") and splits["cases_hash"] != _hash_ids(known):
        raise DatasetError(f"{path} was made for another version of this dataset ({len(known - listed)} case(s) are "
                           "in no split); run `medlens split` again so every case has a place")


def summarize_splits(dataset: Dataset, splits: dict) -> list[str]:
    """One line per split part: cases, patients, class counts."""
    by_id = {c.case_id: c for c in dataset.cases}
    parts = [("test", splits["test"])]
    for k, fold in enumerate(splits["folds"]):
        parts += [(f"fold {k} train", fold["train"]), (f"fold {k} val", fold["val"])]
    lines = []
    for name, ids in parts:
        cases = [by_id[i] for i in ids]
        patients = len({c.patient_id or c.case_id for c in cases})
        lines.append(f"{name:>14}: {len(cases):6d} cases {patients:6d} patients  {_class_counts(dataset, cases)}")
    return lines


def _class_counts(dataset: Dataset, cases: list[Case]) -> str:
    if dataset.task.label_form != "class" or not cases:
        return ""
    counts = np.bincount([c.label for c in cases], minlength=dataset.num_classes)
    return "  ".join(f"{n}={k}" for n, k in zip(dataset.class_names, counts))
