"""open_dataset: class folders, CSV manifests, segmentation layouts, and the layouts it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medlens.data import open_dataset
from medlens.errors import DatasetError
from medlens.io.dicom import patient_key
from medlens.types import Split, Task


def codes(dataset) -> list[str]:
    return [f.code for f in dataset.findings]


# --- class folders -------------------------------------------------------------------------------

@pytest.mark.parametrize("negative, positive", [("normal", "lesion"), ("negative", "positive"), ("benign", "malignant"),
                                                ("healthy", "tumour")])
def test_two_class_folders_are_binary_with_the_normal_like_class_first(tmp_path, make, negative, positive):
    make.class_folders(tmp_path, {positive: 3, negative: 2})

    ds = open_dataset(tmp_path)

    assert ds.task is Task.BINARY
    assert ds.layout == "class_folders"
    assert ds.class_names == (negative, positive)
    labels = {c.case_id: c.label for c in ds.cases}
    assert labels == {f"{negative}/img_0.png": 0, f"{negative}/img_1.png": 0,
                      f"{positive}/img_0.png": 1, f"{positive}/img_1.png": 1, f"{positive}/img_2.png": 1}
    assert all(c.split is None and c.patient_id is None for c in ds.cases)


def test_three_class_folders_are_multiclass_in_sorted_order(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 2, "covid": 1, "pneumonia": 3})

    ds = open_dataset(tmp_path)

    assert ds.task is Task.MULTICLASS
    assert ds.class_names == ("covid", "normal", "pneumonia")
    assert len(ds) == 6
    assert sorted(c.label for c in ds.cases) == [0, 1, 1, 2, 2, 2]
    image = ds.load_image(ds.cases[0])
    assert image.array.shape == (1, 8, 8)


def test_split_level_folders_fix_each_case_split(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 3, "lesion": 2}, split="train", seed=1)
    make.class_folders(tmp_path, {"normal": 1, "lesion": 1}, split="test", seed=2)
    make.class_folders(tmp_path, {"normal": 1, "lesion": 1}, split="val", seed=3)

    ds = open_dataset(tmp_path)

    assert ds.meta["split_level"] is True
    assert ds.class_names == ("normal", "lesion")
    groups = ds.by_split()
    assert {k: len(v) for k, v in groups.items()} == {"train": 5, "test": 2, "val": 2}
    case = next(c for c in ds.cases if c.case_id == "test/lesion/img_0.png")
    assert case.split is Split.TEST and case.label == 1


def test_split_folders_that_lack_a_class_get_a_class_empty_warning(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 2, "lesion": 2}, split="train")
    make.class_folders(tmp_path, {"normal": 1}, split="test", seed=5)

    ds = open_dataset(tmp_path)

    assert ds.class_names == ("normal", "lesion")
    empty = [f for f in ds.findings if f.code == "class.empty"]
    assert len(empty) == 1 and empty[0].severity == "warning" and "lesion" in empty[0].message


def test_dicom_series_folders_are_one_case_each_with_a_pseudonymous_patient(tmp_path, make):
    make.dicom(tmp_path / "normal" / "study_a", patient_id="PAT-001", seed=1)
    make.dicom(tmp_path / "normal" / "study_b", patient_id="PAT-002", seed=2)
    make.dicom(tmp_path / "lesion" / "study_c", patient_id="PAT-001", seed=3)

    ds = open_dataset(tmp_path)

    assert ds.task is Task.BINARY and ds.class_names == ("normal", "lesion")
    by_id = {c.case_id: c for c in ds.cases}
    assert set(by_id) == {"normal/study_a", "normal/study_b", "lesion/study_c"}
    for case in ds.cases:
        assert case.patient_id.startswith("pid-")
        assert "PAT" not in case.patient_id
    assert by_id["normal/study_a"].patient_id == by_id["lesion/study_c"].patient_id == patient_key("PAT-001")
    assert by_id["normal/study_b"].patient_id != by_id["normal/study_a"].patient_id
    assert ds.load_image(by_id["normal/study_a"]).array.shape == (1, 4, 5, 3)


def test_a_single_class_folder_is_refused_pointing_at_anomaly_detection(tmp_path, make):
    make.class_folders(tmp_path, {"normal": 3})

    with pytest.raises(DatasetError, match="at least two.*--task anomaly --normal normal"):
        open_dataset(tmp_path)
    assert codes(open_dataset(tmp_path, strict=False)) == ["class.single"]


def test_one_class_opens_a_single_class_folder_or_label_column_for_anomaly_detection(tmp_path, make):
    from medlens.data.dataset import one_class_allowed

    make.class_folders(tmp_path / "folders", {"normal": 3})
    _manifest_images(tmp_path / "csv", make, 2)
    csv_path = make.csv(tmp_path / "csv" / "m.csv", [{"image": f"img/{i}.png", "label": "normal"} for i in range(2)])

    folders = open_dataset(tmp_path / "folders", one_class=True)
    with one_class_allowed():
        manifest = open_dataset(csv_path)

    for ds, n in ((folders, 3), (manifest, 2)):
        assert ds.class_names == ("normal",) and ds.task is Task.MULTICLASS and ds.findings == []
        assert [c.label for c in ds.cases] == [0] * n
    with pytest.raises(DatasetError, match="column 'label'.*--task anomaly --normal normal"):
        open_dataset(csv_path)


# --- CSV manifests -------------------------------------------------------------------------------

def _manifest_images(root, make, n):
    for i in range(n):
        make.png(root / "img" / f"{i}.png", make.pixels(100 + i))


def test_manifest_reads_relative_paths_patients_and_splits(tmp_path, make):
    _manifest_images(tmp_path, make, 4)
    rows = [{"image": "img/0.png", "label": "pneumonia", "patient_id": "A", "split": "train"},
            {"image": "img/1.png", "label": "normal", "patient_id": "A", "split": "training"},
            {"image": "img/2.png", "label": "normal", "patient_id": "B", "split": "val"},
            {"image": "img/3.png", "label": "pneumonia", "patient_id": "C", "split": "test"}]
    csv_path = make.csv(tmp_path / "manifest.csv", rows)

    ds = open_dataset(csv_path)

    assert ds.layout == "manifest" and ds.task is Task.BINARY
    assert ds.class_names == ("normal", "pneumonia")
    assert [c.case_id for c in ds.cases] == ["img/0.png", "img/1.png", "img/2.png", "img/3.png"]
    assert [c.label for c in ds.cases] == [1, 0, 0, 1]
    assert [c.patient_id for c in ds.cases] == ["A", "A", "B", "C"]
    assert [c.split for c in ds.cases] == [Split.TRAIN, Split.TRAIN, Split.VAL, Split.TEST]
    assert ds.cases[0].image == tmp_path / "img" / "0.png"
    assert ds.findings == []


def test_manifest_with_separated_labels_is_multilabel(tmp_path, make):
    _manifest_images(tmp_path, make, 4)
    rows = [{"path": "img/0.png", "labels": "effusion;nodule"}, {"path": "img/1.png", "labels": "nodule"},
            {"path": "img/2.png", "labels": "mass | effusion"}, {"path": "img/3.png", "labels": "mass"}]
    ds = open_dataset(make.csv(tmp_path / "m.csv", rows))

    assert ds.task is Task.MULTILABEL
    assert ds.class_names == ("effusion", "mass", "nodule")
    assert [c.label for c in ds.cases] == [(1, 0, 1), (0, 0, 1), (1, 1, 0), (0, 1, 0)]


def test_manifest_with_missing_files_is_refused_listing_them(tmp_path, make):
    _manifest_images(tmp_path, make, 2)
    rows = [{"image": "img/0.png", "label": "a"}, {"image": "img/gone.png", "label": "b"},
            {"image": "img/1.png", "label": "b"}, {"image": "img/lost.png", "label": "a"}]
    csv_path = make.csv(tmp_path / "m.csv", rows)

    with pytest.raises(DatasetError, match=r"2 row\(s\) point at files that do not exist.*gone\.png.*lost\.png"):
        open_dataset(csv_path)

    ds = open_dataset(csv_path, strict=False)
    assert [c.case_id for c in ds.cases] == ["img/0.png", "img/1.png"]
    (finding,) = ds.findings
    assert finding.code == "file.missing" and finding.severity == "error"
    assert finding.cases == ["line 3: img/gone.png", "line 5: img/lost.png"]


def test_manifest_rows_without_label_give_label_missing(tmp_path, make):
    _manifest_images(tmp_path, make, 3)
    rows = [{"image": "img/0.png", "label": "a"}, {"image": "img/1.png", "label": ""},
            {"image": "img/2.png", "label": "b"}]
    csv_path = make.csv(tmp_path / "m.csv", rows)

    with pytest.raises(DatasetError, match="have no label"):
        open_dataset(csv_path)
    ds = open_dataset(csv_path, strict=False)
    assert codes(ds) == ["label.missing"]
    assert ds.findings[0].cases == ["line 3: img/1.png"]
    assert len(ds) == 2


@pytest.mark.parametrize("name, delimiter, encoding, newline", [("m.csv", ";", "utf-8-sig", "\r\n"),
                                                                ("m.tsv", "\t", "utf-8", "\n"),
                                                                ("m.csv", "\t", "utf-8", "\n")])
def test_manifest_as_spreadsheets_save_it_is_read_alike(tmp_path, make, name, delimiter, encoding, newline):
    """European Excel saves semicolons (with a byte-order mark and CRLF), a sheet ends in empty rows, headers
    come as 'Patient ID', and a path written on Windows has backslashes."""
    (tmp_path / "img" / "sub").mkdir(parents=True)
    for i in range(4):
        make.png(tmp_path / "img" / "sub" / f"{i}.png", make.pixels(100 + i))
    lines = [delimiter.join([" Image ", "Label", "Patient ID"]), "", delimiter.join(["img\\sub\\0.png", "a", "P1"]),
             delimiter.join(["img/sub/1.png", "b", "P1"]), delimiter.join(["img\\sub\\2.png", "a", "P2"]),
             delimiter.join(["", "", ""]), delimiter.join(["img/sub/3.png", "b", "P3"]), delimiter.join(["", "", ""])]
    (tmp_path / name).write_text(newline.join(lines) + newline, encoding=encoding, newline="")

    ds = open_dataset(tmp_path / name)

    assert [c.case_id for c in ds.cases] == ["img\\sub\\0.png", "img/sub/1.png", "img\\sub\\2.png", "img/sub/3.png"]
    assert [c.image for c in ds.cases] == [tmp_path / "img" / "sub" / f"{i}.png" for i in range(4)]
    assert [c.patient_id for c in ds.cases] == ["P1", "P1", "P2", "P3"] and ds.findings == []


def test_a_spreadsheet_workbook_is_refused_saying_how_to_save_it_as_csv(tmp_path):
    (tmp_path / "cases.xlsx").write_bytes(b"PK\x03\x04" + bytes(60))

    with pytest.raises(DatasetError, match=r"spreadsheet workbook.*CSV UTF-8"):
        open_dataset(tmp_path / "cases.xlsx")


def test_manifest_line_numbers_count_the_blank_and_empty_rows_before_them(tmp_path, make):
    _manifest_images(tmp_path, make, 2)
    (tmp_path / "m.csv").write_text("image,label\n\nimg/0.png,a\n,,\nimg/gone.png,b\nimg/1.png,b\n")

    ds = open_dataset(tmp_path / "m.csv", strict=False)

    assert next(f for f in ds.findings if f.code == "file.missing").cases == ["line 5: img/gone.png"]


def test_manifest_paths_resolve_against_image_root(tmp_path, make):
    _manifest_images(tmp_path / "images_elsewhere", make, 2)
    csv_path = make.csv(tmp_path / "meta" / "m.csv", [{"file": "img/0.png", "class": "x"},
                                                      {"file": "img/1.png", "class": "y"}])

    assert codes(open_dataset(csv_path, strict=False)) == ["file.missing"]
    ds = open_dataset(csv_path, image_root=tmp_path / "images_elsewhere")
    assert [c.image for c in ds.cases] == [tmp_path / "images_elsewhere" / "img" / f"{i}.png" for i in range(2)]
    assert ds.meta["image_root"] == str(tmp_path / "images_elsewhere")


def test_manifest_without_an_image_column_names_the_columns_it_found(tmp_path, make):
    csv_path = make.csv(tmp_path / "m.csv", [{"picture": "a.png", "label": "x"}])

    with pytest.raises(DatasetError, match=r"no image column.*found columns \['picture', 'label'\]"):
        open_dataset(csv_path)


def test_manifest_with_an_unknown_split_value_is_refused(tmp_path, make):
    _manifest_images(tmp_path, make, 2)
    csv_path = make.csv(tmp_path / "m.csv", [{"image": "img/0.png", "label": "a", "split": "train"},
                                             {"image": "img/1.png", "label": "b", "split": "holdin"}])

    with pytest.raises(DatasetError, match="unknown split 'holdin'"):
        open_dataset(csv_path)


# --- segmentation ------------------------------------------------------------------------------

def _vol(seed, shape=(6, 5, 4)):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _mask(shape=(6, 5, 4), value=1):
    mask = np.zeros(shape, np.uint8)
    mask[1:3, 1:3, 1:3] = value
    return mask


def test_images_and_labels_folders_pair_by_name(tmp_path, make):
    for name in ("brain_a", "brain_b"):
        make.volume(tmp_path / "images" / f"{name}.nii.gz", _vol(1))
        make.volume(tmp_path / "labels" / f"{name}.nii.gz", _mask())

    ds = open_dataset(tmp_path)

    assert ds.task is Task.SEGMENTATION and ds.layout == "segmentation_pairs"
    assert [(c.case_id, c.mask.name) for c in ds.cases] == [("brain_a", "brain_a.nii.gz"),
                                                            ("brain_b", "brain_b.nii.gz")]
    assert ds.findings == []
    assert ds.load_mask(ds.cases[0]).array.shape == (1, 6, 5, 4)


def test_nnunet_channel_files_are_stacked_as_channels(tmp_path, make):
    make.volume(tmp_path / "imagesTr" / "case_0000.nii.gz", _vol(1))
    make.volume(tmp_path / "imagesTr" / "case_0001.nii.gz", _vol(2) + 10)
    make.volume(tmp_path / "labelsTr" / "case.nii.gz", _mask())

    ds = open_dataset(tmp_path)

    (case,) = ds.cases
    assert case.case_id == "case" and [p.name for p in case.images] == ["case_0000.nii.gz", "case_0001.nii.gz"]
    image = ds.load_image(case)
    assert image.array.shape == (2, 6, 5, 4)
    np.testing.assert_allclose(image.array[1], _vol(2) + 10, rtol=1e-6)


def test_four_digit_numbered_pairs_are_separate_cases(tmp_path, make):
    for i in range(3):
        make.png(tmp_path / "images" / f"scan_{i:04d}.png", make.pixels(i))
        make.png(tmp_path / "labels" / f"scan_{i:04d}.png", np.zeros((8, 8), np.uint8))

    ds = open_dataset(tmp_path)

    assert [c.case_id for c in ds.cases] == ["scan_0000", "scan_0001", "scan_0002"]
    assert all(len(c.images) == 1 for c in ds.cases)


def test_masks_named_like_their_image_with_a_mask_ending_pair_with_it(tmp_path, make):
    """ISIC names ISIC_0000000.jpg's mask ISIC_0000000_segmentation.png; a second mask of one case is reported."""
    for i, ending in enumerate(("_segmentation", "_mask", "-seg", "")):
        make.png(tmp_path / "images" / f"ISIC_{i:07d}.png", make.pixels(i))
        make.png(tmp_path / "masks" / f"ISIC_{i:07d}{ending}.png", np.zeros((8, 8), np.uint8))
    make.png(tmp_path / "masks" / "ISIC_0000003_mask.png", np.zeros((8, 8), np.uint8))

    ds = open_dataset(tmp_path)

    assert [(c.case_id, c.mask.name) for c in ds.cases] == [
        ("ISIC_0000000", "ISIC_0000000_segmentation.png"), ("ISIC_0000001", "ISIC_0000001_mask.png"),
        ("ISIC_0000002", "ISIC_0000002-seg.png"), ("ISIC_0000003", "ISIC_0000003.png")]
    assert [f.cases for f in ds.findings] == [["ISIC_0000003_mask"]]


def test_images_without_masks_give_a_mask_missing_warning(tmp_path, make):
    make.volume(tmp_path / "images" / "a.nii.gz", _vol(1))
    make.volume(tmp_path / "images" / "b.nii.gz", _vol(2))
    make.volume(tmp_path / "masks" / "a.nii.gz", _mask())

    ds = open_dataset(tmp_path)

    assert [c.case_id for c in ds.cases] == ["a"]
    (finding,) = ds.findings
    assert (finding.code, finding.severity, finding.cases) == ("mask.missing", "warning", ["b"])


def test_images_and_labels_with_no_matching_name_are_refused(tmp_path, make):
    make.volume(tmp_path / "images" / "a.nii.gz", _vol(1))
    make.volume(tmp_path / "labels" / "z.nii.gz", _mask())

    with pytest.raises(DatasetError, match="no image in images/ has a mask of the same name"):
        open_dataset(tmp_path)


def _decathlon(root, make, names=("hippo_001", "hippo_002"), labels=None, extra_entries=()):
    training = []
    for i, name in enumerate(names):
        make.volume(root / "imagesTr" / f"{name}.nii.gz", _vol(i))
        make.volume(root / "labelsTr" / f"{name}.nii.gz", _mask())
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    spec = {"name": "tiny", "tensorImageSize": "3D", "modality": {"0": "MRI"},
            "labels": labels or {"0": "background", "1": "anterior", "2": "posterior"},
            "numTraining": len(names), "training": training + list(extra_entries)}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_decathlon_folder_reads_dataset_json(tmp_path, make):
    _decathlon(tmp_path, make)

    ds = open_dataset(tmp_path)

    assert ds.layout == "decathlon" and ds.task is Task.SEGMENTATION
    assert ds.class_names == ("background", "anterior", "posterior")
    assert ds.spatial_dims == 3
    assert ds.meta["modality"] == ["MRI"] and ds.meta["num_training"] == 2
    assert [c.case_id for c in ds.cases] == ["hippo_001", "hippo_002"]
    assert ds.cases[0].mask == tmp_path / "labelsTr" / "hippo_001.nii.gz"
    assert open_dataset(tmp_path / "dataset.json").cases == ds.cases


def test_decathlon_files_listed_but_absent_are_an_error(tmp_path, make):
    _decathlon(tmp_path, make, extra_entries=[{"image": "./imagesTr/ghost.nii.gz", "label": "./labelsTr/ghost.nii.gz"}])

    with pytest.raises(DatasetError, match=r"lists 2 file\(s\) that do not exist"):
        open_dataset(tmp_path)
    ds = open_dataset(tmp_path, strict=False)
    assert len(ds) == 2
    (finding,) = ds.findings
    assert finding.code == "file.missing"
    assert finding.cases == ["imagesTr/ghost.nii.gz", "labelsTr/ghost.nii.gz"]


def test_decathlon_json_without_training_list_is_refused(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x", "training": []}))

    with pytest.raises(DatasetError, match="expected a 'training' list"):
        open_dataset(tmp_path)


def test_decathlon_json_that_is_not_json_is_refused(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")

    with pytest.raises(DatasetError, match="not valid JSON"):
        open_dataset(tmp_path)


def test_flat_folder_of_image_and_label_files_pairs_them(tmp_path, make):
    make.volume(tmp_path / "brain1_image.nrrd", _vol(1))
    make.volume(tmp_path / "brain1_label.nrrd", _mask())
    make.volume(tmp_path / "phantom.nrrd", _vol(2))
    make.volume(tmp_path / "phantom-label.nrrd", _mask())
    make.volume(tmp_path / "lonely_image.nrrd", _vol(3))

    ds = open_dataset(tmp_path)

    assert ds.task is Task.SEGMENTATION
    assert {c.case_id: (c.image.name, c.mask.name) for c in ds.cases} == {
        "brain1": ("brain1_image.nrrd", "brain1_label.nrrd"), "phantom": ("phantom.nrrd", "phantom-label.nrrd")}
    assert [(f.code, f.cases) for f in ds.findings] == [("mask.missing", ["lonely"])]


# --- refused layouts --------------------------------------------------------------------------

def test_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="is empty"):
        open_dataset(tmp_path)


def test_a_folder_of_loose_files_is_refused(tmp_path, make):
    for i in range(3):
        make.png(tmp_path / f"{i}.png", make.pixels(i))

    with pytest.raises(DatasetError, match=r"holds 3 files but no class folders"):
        open_dataset(tmp_path)


def test_a_single_image_file_is_refused_pointing_at_info(tmp_path, make):
    path = make.png(tmp_path / "x.png", make.pixels(0))

    with pytest.raises(DatasetError, match="medlens info FILE"):
        open_dataset(path)


def test_a_path_that_does_not_exist_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        open_dataset(tmp_path / "nowhere")
