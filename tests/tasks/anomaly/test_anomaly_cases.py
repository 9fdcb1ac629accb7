"""The one-class rule on case ids: normal training cases fit, normal validation cases threshold, abnormal cases of
any split never reach fitting or thresholding."""

from __future__ import annotations

import pytest

from medlens.errors import DatasetError
from medlens.tasks import task_named
from medlens.tasks.anomaly.cases import is_abnormal, one_class_cases


@pytest.fixture(scope="module")
def planned(blob_csv):
    from medlens.data import open_dataset
    from medlens.data.audit import inspect_dataset
    from medlens.data.prepared import resolve_splits, split_cases
    from medlens.tasks.anomaly.plan import plan_anomaly

    dataset = open_dataset(blob_csv)
    card = inspect_dataset(dataset)
    config, _ = plan_anomaly(card, probe=False, normal=("normal",))
    cases = split_cases(dataset, resolve_splits(dataset, config, card), 0)
    return config, dataset, cases


def ids(cases) -> set[str]:
    return {c.case_id for c in cases}


def test_roles_by_case_id(planned):
    config, _, cases = planned
    roles = one_class_cases(cases, config)
    normal = {c.case_id for split in cases.values() for c in split if c.label == 0}
    abnormal = {c.case_id for split in cases.values() for c in split if c.label == 1}
    assert abnormal and ids(roles.fit) == ids(cases["train"]) & normal
    assert ids(roles.threshold) == ids(cases["val"]) & normal
    assert ids(roles.held_out) == (ids(cases["train"]) | ids(cases["val"])) & abnormal
    assert not (ids(roles.fit) | ids(roles.threshold)) & abnormal
    assert not (ids(roles.fit) | ids(roles.threshold)) & ids(cases["test"])


def test_prepare_fit_loads_only_normal_cases(planned):
    config, dataset, cases = planned
    fit = task_named("anomaly").prepare_fit(config, dataset, cases, world_size=1, log=lambda m: None)
    data = fit.validation
    normal_train = {c.case_id for c in cases["train"] if c.label == 0}
    assert ids(data.fit.cases) == normal_train and len(data.fit.images) == len(normal_train)
    assert ids(data.threshold.cases) == {c.case_id for c in cases["val"] if c.label == 0}
    assert not is_abnormal(data.fit.labels, config).any() and not is_abnormal(data.threshold.labels, config).any()
    assert len(fit.train_loader.dataset) == len(normal_train)  # the loaders see these arrays, nothing else
    assert len(fit.val_loader.dataset) == len(data.threshold.cases)


def test_no_normal_case_in_a_split_is_refused(planned):
    config, _, cases = planned
    only_blobs = {**cases, "train": [c for c in cases["train"] if c.label == 1]}
    with pytest.raises(DatasetError, match=r"no normal \(normal\) case in the training split"):
        one_class_cases(only_blobs, config)
    no_val = {**cases, "val": [c for c in cases["val"] if c.label == 1]}
    with pytest.raises(DatasetError, match=r"no normal \(normal\) case in the validation split"):
        one_class_cases(no_val, config)
