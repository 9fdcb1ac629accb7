"""The audit's box section and each bad-input rule, on tiny CSV / VOC datasets; then BCCD and Hippocampus."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.types import Split

DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets")
CORNERS = ("x_min", "y_min", "x_max", "y_max")


def box_csv(make, tmp_path: Path, boxes: dict[str, list[tuple]], *, columns=CORNERS) -> Path:
    """One 8 x 8 PNG per image, one CSV row per box ``(*coordinates, label)`` (no boxes: a negative row)."""
    rows = []
    for k, (name, entries) in enumerate(boxes.items()):
        make.png(tmp_path / name, make.pixels(k))
        for entry in entries or [("",) * (len(columns) + 1)]:
            rows.append({"image": name, **dict(zip(columns, entry[:-1])), "label": entry[-1]})
    return make.csv(tmp_path / "boxes.csv", rows)


def findings(card: dict) -> dict[str, dict]:
    return {f["code"]: f for f in card["findings"]}


def test_card_reports_boxes_per_image_per_class_counts_and_size_percentiles(tmp_path, make):
    path = box_csv(make, tmp_path, {"a.png": [(0, 0, 2, 4, "x"), (1, 1, 5, 3, "x"), (0, 0, 1, 1, "y")],
                                    "b.png": [(2, 2, 4, 8, "x")], "c.png": []})

    card = inspect_dataset(open_dataset(path))

    boxes = card["boxes"]
    assert boxes["boxes_per_image"] == {"mean": 4 / 3, "min": 0, "max": 3, "images_without_boxes": 1, "total": 4}
    x = boxes["per_class"]["x"]
    assert (x["boxes"], x["images"]) == (3, 2)
    assert x["size_vox"]["axis0"]["median"] == 2 and x["size_vox"]["axis0"]["max"] == 4  # widths 2, 4, 2
    assert x["size_vox"]["axis1"]["p50"] == 4  # heights 4, 2, 6
    assert x["aspect_ratio"]["axis0/axis1"]["median"] == pytest.approx(0.5)  # 0.5, 2, 1/3
    assert x["size_mm"] == x["size_vox"]  # medlens' PNGs keep their 1 mm spacing
    assert card["counts"]["total"] == {"cases": 3, "boxes": 4, "x": 3, "y": 1}
    assert not [f for f in card["findings"] if f["code"].startswith("boxes.")]


def test_boxes_partly_outside_are_clipped_with_a_warning(tmp_path, make):
    inside = [(k, k, k + 1, k + 1, "x") for k in range(7)]
    path = box_csv(make, tmp_path, {"a.png": inside + [(5, 5, 9, 9, "x")]})  # 7 of its 16 voxels outside

    card = inspect_dataset(open_dataset(path))

    found = findings(card)["boxes.outside"]
    assert found["severity"] == "warning" and not found["blocks_training"] and found["cases"] == ["a.png"]
    assert "clipped" in found["message"] and "above 5% of all boxes" in found["message"]
    assert card["boxes"]["per_class"]["x"]["size_vox"]["axis0"]["max"] == 3  # (5, 9) clipped to (5, 8)


def test_more_than_five_percent_of_boxes_mostly_outside_block_training(tmp_path, make):
    path = box_csv(make, tmp_path, {"a.png": [(k, 0, k + 1, 1, "x") for k in range(8)],
                                    "b.png": [(6, 6, 12, 12, "x")]})  # 1 of 9 boxes (11%) is 8/9 outside

    found = findings(inspect_dataset(open_dataset(path)))["boxes.outside"]

    assert found["blocks_training"] and found["cases"] == ["b.png"]
    assert "more than half outside: 1 of 9 box(es)" in found["message"]


def test_inverted_and_zero_size_boxes_are_dropped_with_a_warning_naming_the_cases(tmp_path, make):
    path = box_csv(make, tmp_path, {"a.png": [(0, 0, 2, 2, "x")], "b.png": [(5, 1, 3, 4, "x"), (2, 2, 2, 5, "x")]})
    dataset = open_dataset(path)

    found = findings(inspect_dataset(dataset))["boxes.degenerate"]

    assert found["severity"] == "warning" and found["cases"] == ["b.png"] and "2 box(es) in 1 image(s)" in \
        found["message"]
    case = dataset.cases[1]
    assert dataset.load_boxes(case, dataset.load_image(case))[0].shape == (0, 4)


def test_duplicate_boxes_of_one_class_are_a_warning(tmp_path, make):
    path = box_csv(make, tmp_path, {"a.png": [(0, 0, 4, 4, "x"), (0, 0, 4, 4, "x"), (0, 0, 4, 4, "y")]})

    found = findings(inspect_dataset(open_dataset(path)))["boxes.duplicate"]

    assert found["severity"] == "warning" and "1 box(es) in 1 image(s)" in found["message"]


def test_no_image_with_a_box_blocks_training(tmp_path, make):
    path = box_csv(make, tmp_path, {"a.png": [], "b.png": []})

    found = findings(inspect_dataset(open_dataset(path)))["boxes.none"]

    assert found["blocks_training"] and found["cases"] == ["a.png", "b.png"]


def test_mm_boxes_on_images_without_geometry_block_training(tmp_path, make):
    from PIL import Image as PILImage

    columns = ("center_x_mm", "center_y_mm", "size_x_mm", "size_y_mm")
    path = box_csv(make, tmp_path, {"a.png": [(2, 2, 2, 2, "x")]}, columns=columns)
    PILImage.fromarray(make.pixels(0)).save(tmp_path / "a.png")  # a plain PNG: no spacing, origin or direction

    found = findings(inspect_dataset(open_dataset(path)))["boxes.no_geometry"]

    assert found["blocks_training"] and "case a.png: boxes are in millimetres" in found["message"]


def test_a_declared_class_without_boxes_is_a_warning(tmp_path, make):
    make.png(tmp_path / "JPEGImages" / "a.png", make.pixels(0, (8, 10)))
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><object><name>rbc</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>3</xmax><ymax>3</ymax></bndbox></object></annotation>")
    (tmp_path / "classes.txt").write_text("rbc\nwbc\n")

    found = findings(inspect_dataset(open_dataset(tmp_path)))["boxes.class_empty"]

    assert found["severity"] == "warning" and "class(es) wbc are declared" in found["message"]


def test_voc_size_disagreeing_with_the_image_names_the_xml(tmp_path, make):
    make.png(tmp_path / "JPEGImages" / "a.png", make.pixels(0, (8, 10)))
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>640</width><height>480</height></size><object><name>x"
        "</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object></annotation>")

    found = findings(inspect_dataset(open_dataset(tmp_path)))["boxes.size_mismatch"]

    assert found["blocks_training"] and "a.xml declares (640, 480), the image is (10, 8)" in found["message"]


def need(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.mark.realdata
def test_bccd_opens_with_its_official_splits_and_three_classes():
    dataset = open_dataset(need("detection2d/bccd"))

    assert (dataset.layout, dataset.class_names, len(dataset.cases)) == ("voc", ("Platelets", "RBC", "WBC"), 364)
    splits = Counter(c.split for c in dataset.cases)
    assert splits == {Split.TRAIN: 205, Split.VAL: 87, Split.TEST: 72}
    per_class = Counter(label for c in dataset.cases for label in c.boxes.labels)
    assert per_class == {1: 4155, 2: 372, 0: 361}  # as MANIFEST.md counts them
    case = dataset.cases[0]  # BloodImage_00000: its WBC is <260, 177, 491, 376> in 1-based pixels
    corners, labels = dataset.load_boxes(case, dataset.load_image(case))
    assert labels[0] == 2 and corners[0].tolist() == [259, 176, 491, 376]


@pytest.mark.realdata
def test_hippocampus_boxes_from_masks_gives_two_classes_on_nearly_every_case():
    dataset = open_dataset(need("seg3d/Task04_Hippocampus"), boxes_from_masks=True)

    assert dataset.class_names == ("Anterior", "Posterior") and len(dataset.cases) == 260
    both = 0
    for case in dataset.cases:
        _, labels = dataset.load_boxes(case, dataset.load_image(case))
        both += set(labels.tolist()) == {0, 1}
    assert both >= 0.9 * len(dataset.cases)
