"""The audit on the real public datasets in ../shared/datasets (or $MEDLENS_DATA_DIR): real numbers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.medmnist import medmnist_info

DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets")

pytestmark = pytest.mark.realdata

EXPECTED_MEDMNIST = {"pneumoniamnist": "binary 2D", "breastmnist": "binary 2D", "adrenalmnist3d": "binary 3D"}


def need(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def medmnist_files() -> list[Path]:
    folder = DATA / "medmnist"
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []


@pytest.mark.parametrize("path", medmnist_files() or [pytest.param(None, marks=pytest.mark.skip("no MedMNIST files"))],
                         ids=lambda p: p.name if p else "none")
def test_medmnist_files_have_the_official_split_sizes(path):
    name = path.name.removesuffix(".npz").split("_")[0]

    card = inspect_dataset(open_dataset(path))

    official = medmnist_info()[name]["n_samples"]
    by_split = card["counts"]["by_split"]
    assert {split: sum(counts.values()) for split, counts in by_split.items()} == official
    assert card["unreadable"] == [] and card["dataset"]["num_readable"] == sum(official.values())
    if name in EXPECTED_MEDMNIST:
        assert card["dataset"]["task_label"] == EXPECTED_MEDMNIST[name]


def test_hippocampus_is_260_readable_3d_cases_with_three_labels():
    card = inspect_dataset(open_dataset(need("seg3d/Task04_Hippocampus")))

    assert card["dataset"]["num_cases"] == card["dataset"]["num_readable"] == 260
    assert card["unreadable"] == []
    assert card["dataset"]["task_label"] == "segmentation 3D"
    assert card["masks"]["cases_with_label"] == {"0": 260, "1": 260, "2": 260}
    codes = [f["code"] for f in card["findings"]]
    assert "mask.geometry" not in codes and "mask.labels" not in codes


def test_pyradiomics_testcases_are_four_readable_pairs():
    dataset = open_dataset(need("seg3d/pyradiomics_testcases"))

    card = inspect_dataset(dataset)

    assert sorted(c.case_id for c in dataset.cases) == ["brain1", "brain2", "breast1", "prostate_phantom_subvolume"]
    assert card["dataset"]["num_readable"] == 4 and card["unreadable"] == []
    assert card["dataset"]["task_label"] == "segmentation 3D"
    assert card["masks"]["cases_with_label"]["9"] == 1  # the phantom's labels {0, 1, 7, 8, 9}


def test_busi_class_folders_and_captions_manifest_list_the_same_780_cases():
    root = need("folders/busi_256")
    folders = open_dataset(root)
    manifest = open_dataset(need("folders/busi_256_captions.csv"), image_root=root)

    assert len(folders) == len(manifest) == 780
    assert folders.class_names == manifest.class_names == ("benign", "malignant", "normal")
    counts = {name: sum(c.label == i for c in folders.cases) for i, name in enumerate(folders.class_names)}
    assert counts == {"benign": 437, "malignant": 210, "normal": 133}
    assert sorted((c.case_id, c.label) for c in folders.cases) == sorted((c.case_id, c.label) for c in manifest.cases)
    assert manifest.findings == []
