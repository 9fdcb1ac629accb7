"""The demo dataset: deterministic, complete, safe to write, and actually learnable."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data import open_dataset
from medlens.data.splits import make_splits
from medlens.data.synthetic import MARKER, write_demo_data
from medlens.errors import MedlensError
from medlens.io import read_image
from medlens.types import Task


def pngs(root):
    return sorted(p.relative_to(root).as_posix() for p in (root / "classification").rglob("*.png"))


def test_the_same_seed_writes_byte_identical_images(tmp_path, demo_dir):
    again = write_demo_data(tmp_path / "again", patients=80)
    other = write_demo_data(tmp_path / "other", seed=1, patients=80)

    assert pngs(again) == pngs(demo_dir) and len(pngs(demo_dir)) == 160
    assert all((again / rel).read_bytes() == (demo_dir / rel).read_bytes() for rel in pngs(demo_dir))
    assert (again / "classification.csv").read_text() == (demo_dir / "classification.csv").read_text()
    assert (other / "classification.csv").read_text() != (demo_dir / "classification.csv").read_text()


def test_the_three_parts_are_written_and_open_as_datasets(demo_dir):
    classes = open_dataset(demo_dir / "classification")
    manifest = open_dataset(demo_dir / "classification.csv")
    segmentation = open_dataset(demo_dir / "segmentation")
    ct = read_image(demo_dir / "dicom" / "series_001")

    assert classes.task is Task.BINARY and classes.class_names == ("normal", "lesion") and len(classes) == 160
    assert manifest.class_names == ("normal", "lesion") and len(manifest) == 160
    assert len({c.patient_id for c in manifest.cases}) == 80
    assert segmentation.layout == "decathlon" and len(segmentation) == 12
    assert segmentation.class_names == ("background", "lesion")
    assert ct.array.shape == (1, 64, 64, 20) and ct.spacing_mm == pytest.approx((0.7, 0.7, 2.5))
    assert ct.meta["modality"] == "CT"
    assert (demo_dir / MARKER).is_file()


def test_a_folder_holding_other_files_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")

    with pytest.raises(MedlensError, match="not medlens demo data"):
        write_demo_data(out)
    assert [p.name for p in out.iterdir()] == ["thesis.docx"]


def test_an_earlier_demo_is_replaced(tmp_path):
    out = write_demo_data(tmp_path / "demo", patients=4, volumes=1)
    (out / "classification" / "stale.png").write_bytes(b"old")

    write_demo_data(out, seed=3, patients=5, volumes=1)

    assert (out / MARKER).read_text() == "medlens demo data, seed 3\n"
    assert not (out / "classification" / "stale.png").exists()
    assert len(pngs(out)) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no staging folder left


def test_the_classification_finding_is_learnable(demo_dir):
    from sklearn.linear_model import LogisticRegression

    dataset = open_dataset(demo_dir / "classification.csv")
    splits = make_splits(dataset, test_fraction=0.3, seed=0)
    by_id = {c.case_id: c for c in dataset.cases}

    def xy(ids):
        cases = [by_id[i] for i in ids]
        x = np.stack([dataset.load_image(c).array.ravel() / 255.0 for c in cases])
        return x, np.array([c.label for c in cases])

    train_ids = splits["folds"][0]["train"] + splits["folds"][0]["val"]
    model = LogisticRegression(max_iter=5000).fit(*xy(train_ids))
    x_test, y_test = xy(splits["test"])

    assert len(y_test) >= 40 and 0 < y_test.mean() < 1
    assert model.score(x_test, y_test) >= 0.85


def test_segmentation_masks_lie_on_the_bright_lesions(demo_dir):
    dataset = open_dataset(demo_dir / "segmentation")

    for case in dataset.cases:
        image, mask = dataset.load_image(case), dataset.load_mask(case)
        assert image.same_geometry(mask)
        inside = mask.array[0] == 1
        assert inside.sum() > 0, case.case_id
        volume = image.array[0]
        assert volume[inside].mean() > volume[~inside].mean() + 100, case.case_id


def test_new_studies_lie_outside_the_dataset_with_their_answers(demo_dir):
    import csv

    studies = sorted(p.name for p in (demo_dir / "new_studies").glob("*.png"))
    answers = {r["image"]: r["label"] for r in csv.DictReader(open(demo_dir / "new_studies" / "answers.csv"))}
    assert studies == sorted(answers) and len(studies) == 4
    assert set(answers.values()) == {"lesion", "normal"}
    dataset_bytes = {p.read_bytes() for p in (demo_dir / "classification").rglob("*.png")}
    assert not any((demo_dir / "new_studies" / s).read_bytes() in dataset_bytes for s in studies)
