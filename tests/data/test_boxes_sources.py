"""Box readers: Pascal VOC, COCO JSON, CSV box manifests (2D, 3D, mm), MONAI detection JSON, boxes from masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medlens.data import open_dataset
from medlens.errors import DatasetError
from medlens.types import Split, Task

VOC_XML = """<annotation><filename>{name}.png</filename><size><width>{w}</width><height>{h}</height><depth>1</depth>
</size>{objects}</annotation>"""
VOC_OBJECT = "<object><name>{label}</name><bndbox><xmin>{0}</xmin><ymin>{1}</ymin><xmax>{2}</xmax><ymax>{3}</ymax>" \
             "</bndbox></object>"


def write_voc(make, root: Path, images: dict[str, list[tuple[str, tuple]]], *, size=(10, 8), splits=None) -> Path:
    """``root/Annotations/<id>.xml`` + ``root/JPEGImages/<id>.png`` (8 rows x 10 columns); returns ``root``."""
    for k, (name, objects) in enumerate(images.items()):
        make.png(root / "JPEGImages" / f"{name}.png", make.pixels(k, (8, 10)))
        body = "".join(VOC_OBJECT.format(*box, label=label) for label, box in objects)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{name}.xml").write_text(VOC_XML.format(name=name, w=size[0], h=size[1],
                                                                          objects=body))
    for split, ids in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_voc_boxes_are_converted_from_one_based_inclusive_pixels(tmp_path, make):
    write_voc(make, tmp_path / "outer" / "VOC", {"a": [("wbc", (1, 2, 5, 6)), ("rbc", (3, 3, 10, 8))], "b": []},
              splits={"train": ["a"], "test": ["b"]})

    dataset = open_dataset(tmp_path / "outer")  # the one subfolder holds the VOC layout

    assert (dataset.layout, dataset.task, dataset.class_names, dataset.spatial_dims) == \
        ("voc", Task.DETECTION, ("rbc", "wbc"), 2)
    a, b = dataset.cases
    assert a.boxes.values == ((0.0, 1.0, 5.0, 6.0), (2.0, 2.0, 10.0, 8.0)) and a.boxes.labels == (1, 0)
    assert (a.split, b.split, len(b.boxes)) == (Split.TRAIN, Split.TEST, 0)
    image = dataset.load_image(a)
    corners, labels = dataset.load_boxes(a, image)
    assert image.spatial_shape == (10, 8)
    np.testing.assert_array_equal(corners, [[0, 1, 5, 6], [2, 2, 10, 8]])


def test_voc_trainval_leaves_cases_free_when_there_is_no_train_or_val_list(tmp_path, make):
    write_voc(make, tmp_path, {"a": [("x", (1, 1, 3, 3))], "b": [("x", (1, 1, 3, 3))]},
              splits={"trainval": ["a"], "test": ["b"]})

    dataset = open_dataset(tmp_path)

    assert [c.split for c in dataset.cases] == [None, Split.TEST]
    assert dataset.meta["official_splits"] == {"test": 1, "trainval": 1}


def test_voc_xml_with_a_doctype_is_refused_unread(tmp_path, make):
    write_voc(make, tmp_path, {"a": [("x", (1, 1, 3, 3))]})
    xml = tmp_path / "Annotations" / "a.xml"
    xml.write_text('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]>' + xml.read_text())

    with pytest.raises(DatasetError, match="a.xml: the XML declares a DOCTYPE or ENTITY"):
        open_dataset(tmp_path)


def test_voc_names_outside_a_declared_classes_txt_are_errors(tmp_path, make):
    write_voc(make, tmp_path, {"a": [("rbc", (1, 1, 3, 3)), ("platelet", (2, 2, 4, 4))]})
    (tmp_path / "classes.txt").write_text("wbc\nrbc\n")

    with pytest.raises(DatasetError, match=r"outside the declared classes \(classes.txt\): 'platelet'"):
        open_dataset(tmp_path)
    dataset = open_dataset(tmp_path, strict=False)
    assert dataset.class_names == ("wbc", "rbc") and dataset.cases[0].boxes.labels == (1,)


def write_coco(make, tmp_path: Path, annotations: list[dict], categories=None) -> Path:
    for k in range(3):
        make.png(tmp_path / "imgs" / f"{k}.png", make.pixels(k, (8, 10)))
    spec = {"images": [{"id": 10 + k, "file_name": f"imgs/{k}.png", "width": 10, "height": 8} for k in range(3)],
            "annotations": annotations,
            "categories": categories or [{"id": 7, "name": "nodule"}, {"id": 3, "name": "mass"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(spec))
    return path


def test_coco_bbox_becomes_corners_crowd_regions_are_left_out_and_unannotated_images_are_negatives(tmp_path, make):
    path = write_coco(make, tmp_path, [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 2, 3, 4]},
                                 {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 2, 2], "iscrowd": 1},
                                 {"id": 3, "image_id": 11, "category_id": 3, "bbox": [4.5, 1, 2, 2.5]}])

    dataset = open_dataset(path)

    assert (dataset.layout, dataset.class_names) == ("coco", ("mass", "nodule"))  # category id order
    first, second, third = dataset.cases
    assert first.boxes.values == ((1.0, 2.0, 4.0, 6.0),) and first.boxes.labels == (1,)
    assert second.boxes.values == ((4.5, 1.0, 6.5, 3.5),) and second.boxes.labels == (0,)
    assert len(third.boxes) == 0 and dataset.meta["crowd_boxes_dropped"] == 1


def test_coco_category_ids_not_in_categories_are_errors(tmp_path, make):
    path = write_coco(make, tmp_path, [{"id": 1, "image_id": 12, "category_id": 99, "bbox": [1, 2, 3, 4]}])

    with pytest.raises(DatasetError, match=r"outside the declared classes \('categories'\): 'category_id 99'.*2.png"):
        open_dataset(path)


def test_csv_2d_boxes_with_a_negative_row_and_a_split_column(tmp_path, make):
    for name in ("a", "b"):
        make.png(tmp_path / f"{name}.png", make.pixels(0, (8, 10)))
    path = make.csv(tmp_path / "boxes.csv", [
        {"image": "a.png", "x_min": 1, "y_min": 2, "x_max": 4, "y_max": 6, "label": "nodule", "split": "train"},
        {"image": "a.png", "x_min": 0, "y_min": 0, "x_max": 2, "y_max": 2, "label": "mass", "split": "train"},
        {"image": "b.png", "x_min": "", "y_min": "", "x_max": "", "y_max": "", "label": "", "split": "test"}])

    dataset = open_dataset(path)

    assert (dataset.layout, dataset.class_names, dataset.spatial_dims) == ("box_manifest", ("mass", "nodule"), 2)
    a, b = dataset.cases
    assert a.boxes.values == ((1.0, 2.0, 4.0, 6.0), (0.0, 0.0, 2.0, 2.0)) and a.boxes.labels == (1, 0)
    assert (a.split, b.split, len(b.boxes)) == (Split.TRAIN, Split.TEST, 0)


def test_csv_3d_voxel_corners_and_world_mm_diameters(tmp_path, make):
    make.volume(tmp_path / "ct.nii.gz", np.zeros((6, 6, 6), np.int16), spacing=(2.0, 2.0, 2.0), origin=(-5, -5, -5))
    make.volume(tmp_path / "neg.nii.gz", np.ones((6, 6, 6), np.int16))
    voxel = make.csv(tmp_path / "voxel.csv", [
        {"image": "ct.nii.gz", "x_min": 1, "y_min": 1, "z_min": 2, "x_max": 3, "y_max": 4, "z_max": 5, "label": "n"},
        {"image": "neg.nii.gz", "x_min": "", "y_min": "", "z_min": "", "x_max": "", "y_max": "", "z_max": "",
         "label": ""}])
    world = make.csv(tmp_path / "world.csv", [{"image": "ct.nii.gz", "coordX": -1, "coordY": 1, "coordZ": 0,
                                                "diameter_mm": 4, "label": "nodule"}])

    by_voxel, by_world = open_dataset(voxel), open_dataset(world)

    assert by_voxel.spatial_dims == 3 and by_voxel.cases[0].boxes.values == ((1.0, 1.0, 2.0, 3.0, 4.0, 5.0),)
    assert len(by_voxel.cases[1].boxes) == 0
    case = by_world.cases[0]
    assert (case.boxes.form, case.boxes.unit) == ("center_size", "mm")
    # c = (w - origin) / spacing + 0.5: x in [-3, 1] -> [1.5, 3.5], y in [-1, 3] -> [2.5, 4.5], z in [-2, 2] -> [2, 4]
    corners, _ = by_world.load_boxes(case, by_world.load_image(case))
    np.testing.assert_allclose(corners, [[1.5, 2.5, 2.0, 3.5, 4.5, 4.0]])


def test_a_class_manifest_csv_still_opens_as_classification(tmp_path, make):
    for name in ("a", "b"):
        make.png(tmp_path / f"{name}.png", make.pixels(ord(name), (8, 8)))
    path = make.csv(tmp_path / "labels.csv", [{"image": "a.png", "label": "x"}, {"image": "b.png", "label": "y"}])

    assert open_dataset(path).layout == "manifest"


def test_monai_detection_json_sections_give_splits_and_box_mode_sets_the_form(tmp_path, make):
    for name in ("a", "b", "c"):
        make.volume(tmp_path / f"{name}.nii.gz", np.zeros((6, 6, 6), np.int16))
    spec = {"box_unit": "voxel", "box_mode": "xyzxyz", "labels": ["nodule"],
            "training": [{"image": "a.nii.gz", "box": [[0, 0, 0, 2, 2, 2]], "label": [0]}],
            "validation": [{"image": "b.nii.gz", "box": [], "label": []}],
            "test": [{"image": "c.nii.gz", "box": [[1, 1, 1, 3, 3, 3]], "label": [0]}]}
    (tmp_path / "data.json").write_text(json.dumps(spec))

    dataset = open_dataset(tmp_path / "data.json")

    assert (dataset.layout, dataset.class_names, dataset.spatial_dims) == ("box_json", ("nodule",), 3)
    assert [c.split for c in dataset.cases] == [Split.TRAIN, Split.VAL, Split.TEST]
    assert dataset.cases[0].boxes.form == "corners" and len(dataset.cases[1].boxes) == 0


def test_monai_detection_json_without_box_unit_says_to_add_it(tmp_path, make):
    (tmp_path / "data.json").write_text(json.dumps({"training": [{"image": "a.nii.gz", "box": [], "label": []}]}))

    with pytest.raises(DatasetError, match="add \"box_unit\": \"mm\" when the boxes are in world millimetres"):
        open_dataset(tmp_path / "data.json")


def test_annotated_paths_outside_the_folder_are_refused(tmp_path, make):
    make.png(tmp_path / "elsewhere.png", make.pixels(0))
    path = make.csv(tmp_path / "inner" / "boxes.csv", [{"image": "../elsewhere.png", "x_min": 0, "y_min": 0,
                                                         "x_max": 2, "y_max": 2, "label": "x"}])

    with pytest.raises(DatasetError, match="lie outside"):
        open_dataset(path)
    assert len(open_dataset(path, allow_outside_root=True).cases) == 1


def test_boxes_from_masks_on_image_mask_pairs(tmp_path, make):
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[0:2, 0:2, 0:2] = 1
    mask[4:6, 4:6, 4:6] = 1
    mask[0:1, 4:6, 0:3] = 2
    make.volume(tmp_path / "images" / "c1.nii.gz", np.zeros((6, 6, 6), np.int16))
    make.volume(tmp_path / "labels" / "c1.nii.gz", mask)

    dataset = open_dataset(tmp_path, boxes_from_masks=True)

    assert (dataset.task, dataset.layout, dataset.class_names) == (Task.DETECTION, "segmentation_pairs", ("1", "2"))
    assert dataset.meta["boxes_from_masks"] is True
    case = dataset.cases[0]
    corners, labels = dataset.load_boxes(case, dataset.load_image(case))
    assert labels.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(corners, [[0, 0, 0, 2, 2, 2], [4, 4, 4, 6, 6, 6], [0, 4, 0, 1, 6, 3]])


def test_boxes_from_masks_needs_a_segmentation_dataset(tmp_path, make):
    write_voc(make, tmp_path, {"a": [("x", (1, 1, 3, 3))]})

    with pytest.raises(DatasetError, match="boxes from masks need a segmentation dataset"):
        open_dataset(tmp_path, boxes_from_masks=True)


def test_csv_rows_with_non_numeric_coordinates_or_no_label_are_errors_naming_the_lines(tmp_path, make):
    make.png(tmp_path / "a.png", make.pixels(0))
    path = make.csv(tmp_path / "boxes.csv", [
        {"image": "a.png", "x_min": 1, "y_min": 1, "x_max": "four", "y_max": 3, "label": "x"},
        {"image": "a.png", "x_min": 1, "y_min": 1, "x_max": 3, "y_max": 3, "label": "nan"}])

    with pytest.raises(DatasetError, match=r"(?s)not all numbers \(first: line 2 \(a.png\)\).*usable label.*line 3"):
        open_dataset(path)


def test_coco_bbox_that_is_not_four_numbers_is_refused(tmp_path, make):
    path = write_coco(make, tmp_path, [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 2, 3]}])

    with pytest.raises(DatasetError, match=r"annotation 0 has bbox \[1, 2, 3\]; COCO boxes are \[x, y, width"):
        open_dataset(path)


def test_detection_json_labels_outside_the_declared_names_are_refused(tmp_path, make):
    make.volume(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.int16))
    spec = {"box_unit": "mm", "labels": ["nodule"],
            "training": [{"image": "a.nii.gz", "box": [[1, 1, 1, 2, 2, 2]], "label": [1]}]}
    (tmp_path / "data.json").write_text(json.dumps(spec))

    with pytest.raises(DatasetError, match=r"box label\(s\) \[1\] are outside the 1 declared class\(es\) \(nodule\)"):
        open_dataset(tmp_path / "data.json")
