"""The ``dicom_labels`` layout: a folder of DICOM studies with SEG / RTSTRUCT objects is a segmentation dataset."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlens.data import open_dataset
from medlens.errors import DatasetError
from medlens.io import read_image
from medlens.io.dicom import patient_key, series_datasets
from medlens.io.rtstruct import write_rtstruct
from tests.io.dicom_label_data import ellipsoid, write_seg, write_series

SHAPE = (24, 20, 8)
REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or REPO.parent / "shared" / "datasets") / "dicom"


def organs(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(liver, tumour) bool (X, Y, Z); the tumour sits inside the liver."""
    liver = ellipsoid(SHAPE, (10 + shift, 10, 4), (6, 5, 3))
    return liver, ellipsoid(SHAPE, (11 + shift, 10, 4), (2.5, 2.5, 1.5))


STUDIES = [("a", "PA", "seg", False), ("b", "PB", "rt", True), ("c", "PA", "seg", False), ("d", "PC", "rt", False),
           ("e", "PD", "seg", False), ("f", "PE", "rt", False), ("g", "PF", "seg", False), ("h", "PG", "rt", False)]
CASES = [f"study_{s}/seg.dcm" if kind == "seg" else f"study_{s}/structures/rt.dcm" for s, _, kind, _ in STUDIES]


def write_studies(root: Path) -> Path:
    """Eight studies of seven patients (enough for a test and a validation split): SEGs by highdicom, RTSTRUCTs by
    medlens, one oblique series, and a SEG whose series is absent. Structure orders differ between files; the
    names are Liver and Tumour throughout (in different cases)."""
    for k, (study, patient, kind, oblique) in enumerate(STUDIES):
        series = root / f"study_{study}" / "series_1"
        write_series(series, SHAPE, oblique=oblique, patient_id=patient, seed=f"study {study}")
        liver, tumour = organs(shift=k % 3)
        if kind == "seg":
            write_seg(series, [liver, tumour], ["Liver", "Tumour"], root / f"study_{study}" / "seg.dcm")
        else:  # an RTSTRUCT with the names the other way round: values must still agree across studies
            labels = np.where(liver & ~tumour, 2, np.where(tumour, 1, 0)).astype(np.int16)[None]
            image = read_image(series)
            write_rtstruct(image.with_array(labels), ["tumour", "LIVER"], series_datasets(series),
                           root / f"study_{study}" / "structures" / "rt.dcm")
    orphan = root / "study_z"
    write_series(orphan / "gone", SHAPE, patient_id="PZ", seed="study z")
    write_seg(orphan / "gone", list(organs()), ["Liver", "Tumour"], orphan / "seg.dcm")
    shutil.rmtree(orphan / "gone")
    return root


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    return write_studies(tmp_path_factory.mktemp("studies") / "data")


def test_a_folder_of_studies_opens_as_dicom_labels_with_one_case_per_label_object(studies):
    dataset = open_dataset(studies, strict=False)

    assert dataset.layout == "dicom_labels" and dataset.task.value == "segmentation"
    assert dataset.class_names == ("background", "Liver", "Tumour") and dataset.meta["label_values"] == [0, 1, 2]
    assert [c.case_id for c in dataset.cases] == CASES
    assert [c.image.name for c in dataset.cases] == ["series_1"] * len(STUDIES)
    assert [c.patient_id for c in dataset.cases] == [patient_key(patient) for _, patient, _, _ in STUDIES]


def test_label_values_agree_across_studies_whatever_the_file_order(studies):
    dataset = open_dataset(studies, strict=False)
    for k, case in enumerate(dataset.cases):
        image, mask = dataset.load_image(case), dataset.load_mask(case)
        liver, tumour = organs(shift=k % 3)
        assert mask.same_geometry(image) and image.meta["series_uid"] == case.extra["series_uid"]
        np.testing.assert_array_equal(mask.array[0], np.where(tumour, 2, np.where(liver, 1, 0)), err_msg=case.case_id)


def test_a_label_object_whose_series_is_missing_is_a_finding_not_a_failure(studies):
    dataset = open_dataset(studies, strict=False)
    missing = [f for f in dataset.findings if f.code == "labels.series_missing"]
    assert len(missing) == 1 and missing[0].cases == ["study_z/seg.dcm"] and missing[0].severity == "warning"
    assert "Copy the referenced series into the study folder" in missing[0].message
    open_dataset(studies)  # strict: a warning does not stop it


def test_a_folder_whose_only_label_object_lacks_its_series_is_refused(tmp_path):
    write_series(tmp_path / "study" / "gone", SHAPE, seed="alone")
    write_seg(tmp_path / "study" / "gone", list(organs()), ["Liver", "Tumour"], tmp_path / "study" / "seg.dcm")
    shutil.rmtree(tmp_path / "study" / "gone")
    write_series(tmp_path / "study" / "other", SHAPE, seed="unrelated")
    with pytest.raises(DatasetError, match="1 DICOM label object.*none usable.*not under"):
        open_dataset(tmp_path / "study")


def test_contours_on_absent_slices_are_an_audit_finding(tmp_path):
    from medlens.data.audit import inspect_dataset

    root = write_studies(tmp_path / "data")
    for path in sorted((root / "study_b" / "series_1").iterdir())[:3]:  # end slices, one with contours
        path.unlink()
    dataset = open_dataset(root, strict=False)
    card = inspect_dataset(dataset)
    problems = [f for f in card["findings"] if f["code"] == "mask.unreadable"]
    assert len(problems) == 1 and problems[0]["cases"] == ["study_b/structures/rt.dcm"]
    assert "slice(s) the series folder lacks" in problems[0]["message"] and problems[0]["blocks_training"]


@pytest.mark.realdata
def test_the_dcmqi_study_folder_is_one_seg_case_not_flat_nrrd_pairs():
    root = DATA / "dcmqi_liver_ct_seg"
    if not root.exists():
        pytest.skip(f"{root} is missing from the datasets folder")
    dataset = open_dataset(root)
    assert dataset.layout == "dicom_labels" and dataset.class_names == ("background", "Liver")
    assert [(c.case_id, c.image.name) for c in dataset.cases] == [("liver.dcm", "ct")]
    assert dataset.load_mask(dataset.cases[0]).array.sum() == 107098


@pytest.mark.e2e
def test_inspect_and_train_on_a_folder_of_dicom_studies(studies, tmp_path, cli, one_torch_thread):
    """About 7-13 s on 2 busy cores: a 20 s budget, 4 steps of a slim U-Net (the data path is what is tested)."""
    result = cli("inspect", studies, "--out", tmp_path / "card.json")
    assert result.rc == 0, result.err
    assert "layout dicom_labels" in result.out and "classes: background, Liver, Tumour" in result.out

    run = tmp_path / "run"
    result = cli("train", studies, "--out", run, "--time-budget", "20s", "--no-progress", "--set",
                 "segment.iterations_per_epoch=4", "--set", "train.max_epochs=1", "--set", "model.filters=[8,16,32,64]")
    assert result.rc == 0, result.err + result.out
    plan = (run / "plan.yaml").read_text()
    assert "layout: dicom_labels" in plan and "class_names: [background, Liver, Tumour]" in plan
    assert (run / "weights.pt").exists()
