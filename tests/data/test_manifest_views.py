"""CSV manifests with several images per case (``image:NAME`` columns) and clinical columns."""

from __future__ import annotations

import pytest

from medlens.data import open_dataset
from medlens.errors import DatasetError
from medlens.types import Task


def codes(dataset) -> list[str]:
    return [f.code for f in dataset.findings]


def three_view_manifest(tmp_path, make, *, patient=True):
    """Four subjects with axial / coronal / sagittal PNGs; s3 lacks its coronal view."""
    rows = []
    for i in range(4):
        row = {"subject": f"s{i}"} if patient else {}
        for v, view in enumerate(("axial", "coronal", "sagittal")):
            rel = f"{view}/s{i}.png"
            if (i, view) == (3, "coronal"):
                rel = ""
            else:
                make.png(tmp_path / rel, make.pixels(10 * i + v))
            row[f"image:{view}"] = rel
        row.update({"Age": str(60 + i), "Sex": "FM"[i % 2], "label": ["normal", "dementia"][i % 2]})
        rows.append(row)
    return make.csv(tmp_path / "cases.csv", rows)


def test_image_name_columns_make_cases_with_named_views_in_column_order(tmp_path, make):
    ds = open_dataset(three_view_manifest(tmp_path, make))

    assert ds.task is Task.BINARY and ds.class_names == ("normal", "dementia")
    assert ds.meta["views"] == ["axial", "coronal", "sagittal"]
    assert ds.meta["clinical_columns"] == ["Age", "Sex"]
    by_id = {c.case_id: c for c in ds.cases}
    assert list(by_id) == ["s0", "s1", "s2", "s3"]  # the subject column is unique per row: it names the cases
    assert by_id["s1"].views == ("axial", "coronal", "sagittal")
    assert by_id["s1"].images == tuple(tmp_path / f"{v}/s1.png" for v in ("axial", "coronal", "sagittal"))
    assert by_id["s3"].views == ("axial", "sagittal")
    assert by_id["s3"].images == (tmp_path / "axial/s3.png", tmp_path / "sagittal/s3.png")
    assert by_id["s2"].clinical == {"Age": "62", "Sex": "F"} and by_id["s2"].label == 0


def test_an_empty_view_cell_is_a_warning_naming_the_line_and_the_view(tmp_path, make):
    ds = open_dataset(three_view_manifest(tmp_path, make), strict=False)

    [finding] = [f for f in ds.findings if f.code == "view.missing"]
    assert finding.severity == "warning" and not finding.blocks_training
    assert "line 5: coronal" in finding.message and finding.cases == ["s3"]


def test_without_a_patient_column_the_first_present_view_names_the_case(tmp_path, make):
    ds = open_dataset(three_view_manifest(tmp_path, make, patient=False), strict=False)

    assert [c.case_id for c in ds.cases] == ["axial/s0.png", "axial/s1.png", "axial/s2.png", "axial/s3.png"]


def test_a_patient_with_two_rows_does_not_name_the_cases(tmp_path, make):
    path = three_view_manifest(tmp_path, make)
    text = path.read_text().replace("s1,", "s0,", 1)  # subject s0 twice: ids fall back to the first view's path
    path.write_text(text)

    ds = open_dataset(path, strict=False)

    assert [c.case_id for c in ds.cases][:2] == ["axial/s0.png", "axial/s1.png"]
    assert [c.patient_id for c in ds.cases][:2] == ["s0", "s0"]


def test_a_view_file_that_does_not_exist_is_file_missing(tmp_path, make):
    path = three_view_manifest(tmp_path, make)
    (tmp_path / "sagittal/s2.png").unlink()

    ds = open_dataset(path, strict=False)

    [finding] = [f for f in ds.findings if f.code == "file.missing"]
    assert "sagittal=sagittal/s2.png" in finding.message and finding.blocks_training
    assert [c.case_id for c in ds.cases] == ["s0", "s1", "s3"]


def test_a_row_without_any_view_is_file_missing(tmp_path, make):
    make.png(tmp_path / "a/x.png", make.pixels(1))
    make.png(tmp_path / "a/y.png", make.pixels(2))
    path = make.csv(tmp_path / "m.csv", [{"image:a": "a/x.png", "image:b": "", "label": "0"},
                                         {"image:a": "a/y.png", "image:b": "", "label": "1"},
                                         {"image:a": "", "image:b": "", "label": "1"}])

    ds = open_dataset(path, strict=False)

    assert "file.missing" in codes(ds) and len(ds) == 2
    assert ds.meta["clinical_columns"] == []


def test_a_plain_image_column_beside_view_columns_is_refused(tmp_path, make):
    path = make.csv(tmp_path / "m.csv", [{"image": "a.png", "image:t1": "b.png", "label": "0"}])

    with pytest.raises(DatasetError, match=r"both an image column \('image'\) and view columns \(image:t1\).*pick one"):
        open_dataset(path)


def test_view_columns_need_distinct_names(tmp_path, make):
    path = make.csv(tmp_path / "m.csv", [{"image:T1": "a.png", "Image:t1": "b.png", "label": "0"}])

    with pytest.raises(DatasetError, match="need a distinct name"):
        open_dataset(path)


def test_segmentation_manifest_with_two_image_columns_stacks_views_as_channels(tmp_path, make):
    rows = []
    for i in range(3):
        for view in ("t1", "flair"):
            make.png(tmp_path / f"{view}/{i}.png", make.pixels(7 * i + len(view)))
        make.png(tmp_path / f"mask/{i}.png", (make.pixels(i) > 128).astype("uint8"))
        rows.append({"image:t1": f"t1/{i}.png", "image:flair": f"flair/{i}.png" if i else "",
                     "mask": f"mask/{i}.png", "site": "AB"[i % 2]})
    path = make.csv(tmp_path / "seg.csv", rows)

    ds = open_dataset(path, strict=False)

    assert ds.task is Task.SEGMENTATION and ds.meta["views"] == ["t1", "flair"]
    assert ds.cases[1].images == (tmp_path / "t1/1.png", tmp_path / "flair/1.png")
    assert ds.cases[1].views == ("t1", "flair") and ds.cases[1].mask == tmp_path / "mask/1.png"
    assert ds.cases[1].clinical == {"site": "B"}
    [finding] = [f for f in ds.findings if f.code == "view.missing"]
    assert finding.blocks_training and "line 2: flair" in finding.message and "channels" in finding.message


def test_single_image_manifests_are_as_before_with_their_extra_columns_as_clinical(tmp_path, make):
    for i in range(4):
        make.png(tmp_path / f"{i}.png", make.pixels(i))
    path = make.csv(tmp_path / "m.csv", [{"path": f"{i}.png", "label": "ab"[i % 2], "patient": f"p{i}",
                                          "Age": f"{50 + i}", "note": ""} for i in range(4)])

    ds = open_dataset(path)

    assert [c.case_id for c in ds.cases] == ["0.png", "1.png", "2.png", "3.png"]
    assert all(c.views == () and len(c.images) == 1 for c in ds.cases)
    assert "views" not in ds.meta and ds.meta["clinical_columns"] == ["Age", "note"]
    assert ds.cases[3].clinical == {"Age": "53", "note": ""}


def test_a_row_repeating_a_first_view_with_other_views_is_a_row_conflict(tmp_path, make):
    for name in ("a/1.png", "b/1.png", "b/2.png", "a/3.png", "b/3.png"):
        make.png(tmp_path / name, make.pixels(len(name) + ord(name[-5])))
    path = make.csv(tmp_path / "m.csv", [{"image:a": "a/1.png", "image:b": "b/1.png", "label": "x"},
                                         {"image:a": "a/1.png", "image:b": "b/2.png", "label": "x"},
                                         {"image:a": "a/3.png", "image:b": "b/3.png", "label": "y"}])

    ds = open_dataset(path, strict=False)

    [finding] = [f for f in ds.findings if f.code == "row.conflict"]
    assert "line 3 (a/1.png) repeats line 2 with another patient id, split or other views" in finding.message
    assert [c.case_id for c in ds.cases] == ["a/1.png", "a/3.png"]
