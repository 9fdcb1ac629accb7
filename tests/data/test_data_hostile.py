"""Hostile data: one bad file never stops the audit, and manifests and folders are checked before they are trusted.

The audit half writes real broken files (a DICOM slice truncated in its pixels, one whose
InstanceNumber is text, a ``.npy`` whose header declares 100000 x 100000 over 100 bytes, PNGs with a
wrong CRC) and runs ``medlens inspect`` in this process: exit 0, each bad file listed as unreadable
with its reason, every other case read. Whatever a reader raises (``struct.error``, ``MemoryError``,
``RecursionError``...) is that case's finding. The manifest half covers ``label.conflict``,
``row.conflict``, ``duplicates.rows``, ``path.outside_root`` and ``label.invalid``, each with the case
that must still pass.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.dataset import class_name_problem, outside_root_allowed, read_case_image
from medlens.data.splits import make_splits, read_splits
from medlens.errors import BudgetError, DatasetError, ReadError

# ---------------------------------------------------------------------------------------------- broken files


def write_huge_npy(path: Path) -> Path:
    """A ``.npy`` whose header declares a (100000, 100000) float32 array, followed by 100 bytes of data."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }"
    header += " " * (118 - len(header)) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 100)
    return path


def break_png_crc(path: Path, chunk: bytes) -> Path:
    """Flip the CRC of ``chunk`` (``b"IHDR"`` or ``b"IDAT"``) in the PNG at ``path``; returns ``path``."""
    data = bytearray(path.read_bytes())
    at = data.find(chunk)
    length = struct.unpack(">I", data[at - 4:at])[0]
    data[at + 4 + length] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def truncate_pixels(path: Path) -> Path:
    """Cut the last 10 bytes of a DICOM slice (inside its pixel data)."""
    path.write_bytes(path.read_bytes()[:-10])
    return path


def text_instance_number(path: Path, text: bytes = b"MARKER") -> Path:
    """Replace a DICOM slice's InstanceNumber (0020,0013, IS) by ``text``: a value pydicom cannot make an int."""
    data = path.read_bytes()
    at = data.find(b"\x20\x00\x13\x00IS")
    length = int.from_bytes(data[at + 6:at + 8], "little")
    path.write_bytes(data[:at + 6] + len(text).to_bytes(2, "little") + text + data[at + 8 + length:])
    return path


@pytest.fixture
def hostile_folders(tmp_path, make) -> Path:
    """Class folders ``a/`` and ``b/``: 3 good PNGs and 2 good DICOM studies each, plus in ``a/`` a study with a
    truncated slice and a huge ``.npy``, in ``b/`` a study whose first slice has a text InstanceNumber and a PNG
    with a broken IHDR CRC."""
    root = make.class_folders(tmp_path / "data", {"a": 3, "b": 3})
    for c, name in enumerate("ab"):
        for k in range(2):
            make.dicom(root / name / f"study{k}", patient_id=f"P{name}{k}", seed=10 * c + k)
    truncate_pixels(sorted(make.dicom(root / "a" / "cut", patient_id="Pcut", seed=7).iterdir())[1])
    text_instance_number(sorted(make.dicom(root / "b" / "text", patient_id="Ptext", seed=8).iterdir())[0])
    write_huge_npy(root / "a" / "huge.npy")
    make.png(root / "b" / "crc.png", make.pixels(99))
    break_png_crc(root / "b" / "crc.png", b"IHDR")
    return root


BROKEN = {"a/cut", "a/huge.npy", "b/text", "b/crc.png"}


def test_inspect_lists_each_broken_file_and_reads_the_rest(hostile_folders, cli, tmp_path):
    result = cli("inspect", hostile_folders, "--out", tmp_path / "card.json")
    assert result.rc == 0, result.err
    card = json.loads((tmp_path / "card.json").read_text())
    assert {u["case"] for u in card["unreadable"]} == BROKEN
    assert card["dataset"]["num_readable"] == card["dataset"]["num_cases"] - len(BROKEN) == 10
    reasons = {u["case"]: u["error"] for u in card["unreadable"]}
    for case, reason in reasons.items():
        assert str(hostile_folders / case) in reason  # each reason names its file
    unreadable = next(f for f in card["findings"] if f["code"] == "image.unreadable")
    assert unreadable["blocks_training"] and set(unreadable["cases"]) == BROKEN
    for case in BROKEN:  # the terminal summary lists every unreadable file, not only the first
        assert f"    {case}: " in result.out
    assert "Traceback" not in result.err
    assert "MARKER" not in result.out and "MARKER" not in json.dumps(card)  # header text is never quoted


@pytest.mark.parametrize("command", ["plan", "train"])
def test_plan_and_train_refuse_the_broken_files_by_name(hostile_folders, cli, tmp_path, command):
    """Unreadable files block training (the audit's rule): a message naming them and exit 2, no traceback."""
    result = cli(command, hostile_folders, "--out", tmp_path / "out")
    assert result.rc == 2
    assert "[image.unreadable] 4 case(s) could not be read" in result.err
    assert "Traceback" not in result.err and not (tmp_path / "out").exists()


def test_a_manifest_listing_broken_files(hostile_folders, make, cli, tmp_path):
    listed = sorted(BROKEN) + ["a/img_0.png", "a/study0", "b/img_0.png", "b/study1"]
    path = make.csv(hostile_folders / "m.csv", [{"image": rel, "label": rel[0]} for rel in listed])
    result = cli("inspect", path, "--out", tmp_path / "card.json")
    assert result.rc == 0, result.err
    card = json.loads((tmp_path / "card.json").read_text())
    assert {u["case"] for u in card["unreadable"]} == BROKEN and card["dataset"]["num_readable"] == 4


def test_a_png_with_a_wrong_idat_crc_is_unreadable(tmp_path, make):
    """PIL decodes an IDAT with a wrong CRC silently; medlens' PNG reader refuses it (io/raster.py)."""
    root = make.class_folders(tmp_path / "data", {"a": 2, "b": 2})
    break_png_crc(root / "b" / "img_1.png", b"IDAT")
    card = inspect_dataset(open_dataset(root, strict=False))
    assert [u["case"] for u in card["unreadable"]] == ["b/img_1.png"]


@pytest.mark.parametrize("error", [struct.error("unpack requires a buffer of 4 bytes"), RecursionError("too deep"),
                                   OverflowError("int too large"), MemoryError(), KeyError("Rows"),
                                   BudgetError("decoding the JPEG would make 144,000,000 voxels"),
                                   ReadError("x.dcm: truncated")])
def test_any_exception_reading_one_case_is_its_finding(tmp_path, make, error):
    dataset = open_dataset(make.class_folders(tmp_path / "data", {"a": 2, "b": 2}))
    bad = dataset.cases[1]

    def loader(case):
        if case is bad:
            raise error
        return read_case_image(case)

    dataset.loader = loader
    card = inspect_dataset(dataset)
    assert card["dataset"]["num_readable"] == 3
    [entry] = card["unreadable"]
    assert entry["case"] == bad.case_id and str(bad.image) in entry["error"]
    if not isinstance(error, (ReadError, BudgetError)):
        assert type(error).__name__ in entry["error"]
    finding = next(f for f in card["findings"] if f["code"] == "image.unreadable")
    assert finding["blocks_training"] and finding["cases"] == [bad.case_id]


def test_quoted_header_text_in_a_foreign_error_is_elided(tmp_path, make):
    dataset = open_dataset(make.class_folders(tmp_path / "data", {"a": 1, "b": 1}))

    def loader(case):
        raise ValueError("invalid literal for int() with base 10: 'DOE^JANE'")

    dataset.loader = loader
    card = inspect_dataset(dataset)
    assert "DOE" not in json.dumps(card)
    assert "ValueError: invalid literal for int() with base 10: '...'" in card["unreadable"][0]["error"]


@pytest.mark.parametrize("spacing", [(float("nan"), 1.0), (float("inf"), 1.0), (0.0, 0.0), (-1.0, 1.0)])
def test_a_spacing_that_is_not_a_positive_number_is_refused(tmp_path, make, spacing):
    """A header whose spacing is NaN, infinite, zero or negative blocks training and stays out of the summary."""
    from medlens.io import Image, identity_direction

    dataset = open_dataset(make.class_folders(tmp_path / "data", {"a": 2, "b": 2}))
    odd = dataset.cases[0]

    def loader(case):
        spacing_mm = spacing if case is odd else (0.5, 0.5)
        return Image(make.pixels(1).T[None], spacing_mm, (0.0, 0.0), identity_direction(2), spacing_known=True)

    dataset.loader = loader
    card = inspect_dataset(dataset)
    finding = next(f for f in card["findings"] if f["code"] == "image.spacing")
    assert finding["blocks_training"] and finding["cases"] == [odd.case_id]
    assert card["images"]["spacing_mm"]["axis0"] == {"min": 0.5, "p10": 0.5, "median": 0.5, "max": 0.5}


def test_intensity_statistics_in_chunks_match_numpy(monkeypatch):
    """The audit converts a large image to float64 a chunk at a time; the merged mean and std are numpy's."""
    from medlens.data import audit

    values = np.random.default_rng(0).normal(1000.0, 3.0, 100_003).astype(np.float32)
    monkeypatch.setattr(audit, "STATS_CHUNK", 1000)
    mean, std = audit._mean_std(values)
    assert mean == pytest.approx(values.astype(np.float64).mean(), rel=1e-12)
    assert std == pytest.approx(values.astype(np.float64).std(), rel=1e-9)


def test_segmentation_pairs_with_a_broken_image_and_a_broken_mask(tmp_path, make, cli):
    root = tmp_path / "seg"
    for i in range(3):
        image = (np.arange(64).reshape(8, 8) + i).astype(np.uint8)
        make.png(root / "images" / f"c{i}.png", image)
        make.png(root / "labels" / f"c{i}.png", (image > 40).astype(np.uint8))
    write_huge_npy(root / "images" / "big.npy")
    make.png(root / "labels" / "big.png", np.zeros((8, 8), np.uint8))
    break_png_crc(root / "labels" / "c2.png", b"IHDR")
    result = cli("inspect", root, "--out", tmp_path / "card.json")
    assert result.rc == 0, result.err
    card = json.loads((tmp_path / "card.json").read_text())
    assert [u["case"] for u in card["unreadable"]] == ["big"]
    mask = next(f for f in card["findings"] if f["code"] == "mask.unreadable")
    assert mask["cases"] == ["c2"] and mask["blocks_training"] and str(root / "labels" / "c2.png") in mask["message"]


def test_loose_dicom_files_with_a_malformed_one(tmp_path, make):
    """Listing class folders reads DICOM headers (loose slices of one series are refused); a malformed header
    there is the audit's finding, not a stop."""
    root = make.class_folders(tmp_path / "data", {"a": 2, "b": 2})
    study = make.dicom(tmp_path / "study", patient_id="P1", seed=3)
    for i, path in enumerate(sorted(study.iterdir())[:2]):
        os.replace(path, root / "a" / f"loose{i}.dcm")
    text_instance_number(root / "a" / "loose0.dcm")
    card = inspect_dataset(open_dataset(root, strict=False))
    assert [u["case"] for u in card["unreadable"]] == ["a/loose0.dcm"]


def test_medmnist_archives_truncated_or_declaring_a_huge_array(tmp_path, make, cli):
    """A MedMNIST file is one archive: a damaged one is a message and exit 2 (nothing read past the budget)."""
    import zipfile

    good = make.npz(tmp_path / "good" / "pneumoniamnist.npz", {"train": 2, "val": 1, "test": 1})
    cut = tmp_path / "cut" / "pneumoniamnist.npz"
    cut.parent.mkdir()
    cut.write_bytes(good.read_bytes()[:300])
    huge = tmp_path / "huge" / "pneumoniamnist.npz"
    huge.parent.mkdir()
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(huge, "w") as target:
        for name in source.namelist():
            data = write_huge_npy(tmp_path / "x.npy").read_bytes() if name == "train_images.npy" else source.read(name)
            target.writestr(name, data)
    truncated = cli("inspect", cut, "--out", tmp_path / "c1.json")
    assert truncated.rc == 2 and "not a readable .npz archive" in truncated.err
    declared = cli("inspect", huge, "--out", tmp_path / "c2.json")
    assert declared.rc == 2
    assert "reading train_images.npy of pneumoniamnist.npz would make 10,000,000,000" in declared.err


def test_loose_slices_of_one_dicom_series_are_refused(tmp_path, make):
    root = make.class_folders(tmp_path / "data", {"a": 2, "b": 2})
    for path in sorted(make.dicom(tmp_path / "study", patient_id="P1", seed=3).iterdir()):
        os.replace(path, root / "a" / path.name)
    with pytest.raises(DatasetError, match="holds slices of one DICOM series"):
        open_dataset(root, strict=False)


def test_loose_copies_of_one_dicom_slice_are_cases_not_a_series(tmp_path, make):
    """Copies of one slice (same series, same position) are not a loose series: listed, one of them damaged."""
    import shutil

    root = make.class_folders(tmp_path / "data", {"a": 2, "b": 2})
    first = sorted(make.dicom(tmp_path / "study", patient_id="P1", seed=3).iterdir())[0]
    for name in ("copy0.dcm", "copy1.dcm", "copy2.dcm"):
        shutil.copy(first, root / "a" / name)
    truncate_pixels(root / "a" / "copy2.dcm")
    card = inspect_dataset(open_dataset(root, strict=False))
    assert [u["case"] for u in card["unreadable"]] == ["a/copy2.dcm"]
    assert ["a/copy0.dcm", "a/copy1.dcm"] in card["duplicates"]


# ---------------------------------------------------------------------------------------------- manifests


@pytest.fixture
def images(tmp_path, make) -> Path:
    """``root/img/0.png .. 5.png`` (distinct pixels) and ``root/img/sub/``; returns ``root``."""
    root = tmp_path / "root"
    for i in range(6):
        make.png(root / "img" / f"{i}.png", make.pixels(i))
    (root / "img" / "sub").mkdir()
    return root


def rows_ab(n: int = 6) -> list[dict]:
    return [{"image": f"img/{i}.png", "label": "a" if i % 2 else "b"} for i in range(n)]


def codes(dataset) -> dict:
    return {f.code: f for f in dataset.findings}


def test_a_clean_manifest_has_no_findings(images, make):
    rows = rows_ab()
    rows[1]["image"] = "img/sub/../1.png"  # inside the root once resolved
    rows[2]["image"] = str(images / "img" / "2.png")  # absolute, but under the root
    dataset = open_dataset(make.csv(images / "m.csv", rows))
    assert dataset.findings == [] and len(dataset.cases) == 6


def test_one_file_with_two_labels_is_a_label_conflict(images, make):
    path = make.csv(images / "m.csv", [*rows_ab(), {"image": "./img/0.png", "label": "a"}])
    dataset = open_dataset(path, strict=False)
    conflict = codes(dataset)["label.conflict"]
    assert conflict.blocks_training and conflict.cases == ["img/0.png"]
    assert "line 8 (./img/0.png) repeats line 2 with another label ('b' vs 'a')" in conflict.message
    assert [c.case_id for c in dataset.cases] == [f"img/{i}.png" for i in range(6)]
    with pytest.raises(DatasetError, match="list a file again with a different label"):
        open_dataset(path)


def test_one_file_under_two_splits_is_a_row_conflict(images, make):
    rows = [{**row, "split": "train"} for row in rows_ab()] + [{"image": "img/3.png", "label": "a", "split": "test"}]
    finding = codes(open_dataset(make.csv(images / "m.csv", rows), strict=False))["row.conflict"]
    assert finding.blocks_training and finding.cases == ["img/3.png"]


def test_a_repeated_row_is_a_warning_and_splits_list_it_once(images, make, cli, tmp_path):
    rows = [*rows_ab(), {"image": "img/sub/../4.png", "label": "b"}, {"image": "img/4.png", "label": "b"}]
    path = make.csv(images / "m.csv", rows)
    dataset = open_dataset(path)  # a warning does not stop a strict open
    repeat = codes(dataset)["duplicates.rows"]
    assert repeat.severity == "warning" and not repeat.blocks_training and repeat.cases == ["img/4.png"]
    assert len(dataset.cases) == 6
    result = cli("split", path, "--out", tmp_path / "splits.json", "--test-fraction", "0.34", "--val-fraction", "0.5")
    assert result.rc == 0, result.err
    splits = json.loads((tmp_path / "splits.json").read_text())
    listed = splits["test"] + splits["folds"][0]["train"] + splits["folds"][0]["val"]
    assert sorted(listed) == sorted(c.case_id for c in dataset.cases)


def test_make_splits_never_lists_a_case_twice(images, make):
    from dataclasses import replace

    dataset = open_dataset(make.csv(images / "m.csv", rows_ab()))
    doubled = replace(dataset, cases=dataset.cases + dataset.cases[:2])
    splits = make_splits(doubled, test_fraction=0.34, val_fraction=0.5)
    listed = splits["test"] + splits["folds"][0]["train"] + splits["folds"][0]["val"]
    assert len(listed) == len(set(listed)) == 6


def test_a_splits_file_listing_a_case_twice_is_refused(images, make, tmp_path):
    dataset = open_dataset(make.csv(images / "m.csv", rows_ab()))
    ids = [c.case_id for c in dataset.cases]
    bad = {"test": ids[:2], "folds": [{"train": ids[2:], "val": ids[:1]}]}
    (tmp_path / "s.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"fold 0 lists 1 case\(s\) more than once \(e.g. img/0.png\)"):
        read_splits(tmp_path / "s.json", dataset)


@pytest.fixture
def outside(images, make) -> dict:
    """Three rows leaving the root: ``../``, an absolute path elsewhere, and a link inside pointing out."""
    target = make.png(images.parent / "elsewhere" / "x.png", make.pixels(50))
    os.symlink(target, images / "img" / "link.png")
    return {"../elsewhere/x.png": "a", str(target): "b", "img/link.png": "a"}


def test_paths_leaving_the_root_are_refused(images, make, outside):
    rows = rows_ab() + [{"image": p, "label": label} for p, label in outside.items()]
    dataset = open_dataset(make.csv(images / "m.csv", rows), strict=False)
    finding = codes(dataset)["path.outside_root"]
    assert finding.blocks_training and len(finding.cases) == 3 and "--allow-outside-root" in finding.message
    assert len(dataset.cases) == 6
    followed = open_dataset(make.csv(images / "m.csv", rows), allow_outside_root=True, strict=False)
    assert len(followed.cases) == 7  # the three rows name one file: listed once, the repeats are findings
    assert codes(followed)["label.conflict"].cases == ["../elsewhere/x.png"]
    with outside_root_allowed():
        assert "path.outside_root" not in codes(open_dataset(images / "m.csv", strict=False))


def test_image_root_is_the_root_paths_must_stay_under(images, make, tmp_path):
    csv = make.csv(tmp_path / "elsewhere" / "m.csv", rows_ab())
    assert len(open_dataset(csv, image_root=images).cases) == 6
    escaping = make.csv(tmp_path / "other" / "m.csv", [{"image": f"../../{r['image']}", "label": r["label"]}
                                                       for r in rows_ab()])  # under the CSV's root, not under sub/
    finding = codes(open_dataset(escaping, image_root=images / "img" / "sub", strict=False))["path.outside_root"]
    assert len(finding.cases) == 6


def test_cli_allow_outside_root(images, make, outside, cli, tmp_path):
    rows = rows_ab() + [{"image": "../elsewhere/x.png", "label": "a"}]
    path = make.csv(images / "m.csv", rows)
    refused = cli("split", path, "--out", tmp_path / "s.json")
    assert refused.rc == 2 and "row(s) point outside" in refused.err
    planned = cli("plan", path, "--out", tmp_path / "plan.yaml")
    assert planned.rc == 2 and "row(s) point outside" in planned.err
    result = cli("inspect", path, "--out", tmp_path / "card.json", "--allow-outside-root")
    assert result.rc == 0 and json.loads((tmp_path / "card.json").read_text())["dataset"]["num_readable"] == 7

    # through the engine: with the flag, the file outside is opened and audited (a broken one, so that planning
    # stops right after the audit instead of planning for half a minute)
    break_png_crc(make.png(images.parent / "elsewhere" / "bad.png", make.pixels(51)), b"IHDR")
    path = make.csv(images / "m.csv", rows_ab() + [{"image": "../elsewhere/bad.png", "label": "a"}])
    planned = cli("plan", path, "--out", tmp_path / "plan.yaml", "--allow-outside-root")
    assert planned.rc == 2 and "[image.unreadable] 1 case(s) could not be read" in planned.err
    assert "elsewhere/bad.png" in planned.err and "point outside" not in planned.err


@pytest.mark.parametrize("label", ["", "nan", "NaN", "None", "null", "NA", "N/A", "#N/A",
                                   '=HYPERLINK("http://x","click")', "+1", "-cmd", "@SUM(A1)"])
def test_labels_that_cannot_be_class_names(images, make, label):
    rows = rows_ab()
    rows[0]["label"] = label
    dataset = open_dataset(make.csv(images / "m.csv", rows), strict=False)
    finding = codes(dataset)["label.missing" if not label else "label.invalid"]
    assert finding.blocks_training and finding.cases[0].startswith("line 2: ")
    assert label not in dataset.class_names and len(dataset.cases) == 5


@pytest.mark.parametrize("label", ["-1", "-0.5", "none", "normal", "0"])
def test_labels_that_are_class_names(images, make, label):
    rows = rows_ab()
    rows[0]["label"] = label
    dataset = open_dataset(make.csv(images / "m.csv", rows))
    assert label in dataset.class_names and class_name_problem(label) is None


def test_an_invalid_part_of_a_multilabel_cell(images, make):
    rows = [{"image": f"img/{i}.png", "label": "a;b" if i % 2 else "b"} for i in range(6)]
    rows[2]["label"] = "a;nan"
    dataset = open_dataset(make.csv(images / "m.csv", rows), strict=False)
    assert dataset.class_names == ("a", "b") and codes(dataset)["label.invalid"].cases[0].startswith("line 4: ")


@pytest.mark.parametrize("name", ["nan", "None", "=cmd", "@x"])
def test_class_folders_named_like_missing_values_or_formulas(tmp_path, make, name):
    root = make.class_folders(tmp_path / "data", {"a": 1, name: 1})
    with pytest.raises(DatasetError, match=f"folder '{name}': .*rename the folder"):
        open_dataset(root)


def test_class_folders_named_by_numbers(tmp_path, make):
    assert open_dataset(make.class_folders(tmp_path / "data", {"-1": 1, "0": 1, "1": 1})).class_names == ("-1", "0",
                                                                                                         "1")


def test_segmentation_manifest_one_image_two_masks(tmp_path, make):
    root = tmp_path / "seg"
    for i in range(3):
        make.png(root / f"i{i}.png", make.pixels(i))
        make.png(root / f"m{i}.png", np.zeros((8, 8), np.uint8))
    rows = [{"image": f"i{i}.png", "mask": f"m{i}.png"} for i in range(3)]
    rows += [{"image": "i0.png", "mask": "m1.png"}, {"image": "i1.png", "mask": "../m.png"}]
    dataset = open_dataset(make.csv(root / "m.csv", rows), strict=False)
    found = codes(dataset)
    assert found["label.conflict"].cases == ["i0.png"] and "m0.png vs m1.png" in found["label.conflict"].message
    assert found["path.outside_root"].cases == ["line 6: i1.png, ../m.png"]
    assert len(dataset.cases) == 3


def test_decathlon_paths_leaving_the_folder(tmp_path, make):
    root = tmp_path / "task"
    for i in range(2):
        make.volume(root / "imagesTr" / f"c{i}.nii.gz", np.zeros((4, 4, 4)))
        make.volume(root / "labelsTr" / f"c{i}.nii.gz", np.zeros((4, 4, 4), np.uint8))
    make.volume(tmp_path / "out.nii.gz", np.zeros((4, 4, 4)))
    training = [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"} for i in range(2)]
    training.append({"image": "../out.nii.gz", "label": "./labelsTr/c0.nii.gz"})
    spec = {"labels": {"background": 0, "lesion": 1}, "training": training}  # nnU-Net v2 labels: name -> value
    (root / "dataset.json").write_text(json.dumps(spec))
    dataset = open_dataset(root, strict=False)
    assert codes(dataset)["path.outside_root"].blocks_training and len(dataset.cases) == 2
    assert dataset.class_names == ("background", "lesion")
    assert len(open_dataset(root, allow_outside_root=True).cases) == 3


def test_decathlon_channel_names_with_keys_that_are_not_numbers(tmp_path, make):
    make.volume(tmp_path / "imagesTr" / "c.nii.gz", np.zeros((4, 4, 4)))
    make.volume(tmp_path / "labelsTr" / "c.nii.gz", np.zeros((4, 4, 4), np.uint8))
    spec = {"labels": {"0": "background"}, "modality": {"t1": "MRI", "t2": "MRI"},
            "training": [{"image": "imagesTr/c.nii.gz", "label": "labelsTr/c.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    assert open_dataset(tmp_path).meta["modality"] == ["MRI", "MRI"]


@pytest.mark.parametrize("name", ["nan", "=HYPERLINK(\"x\")", ""])
def test_decathlon_label_names_that_cannot_be_class_names(tmp_path, name):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": name}, "training": [
        {"image": "x.nii.gz", "label": "y.nii.gz"}]}))
    with pytest.raises(DatasetError, match="label 1: .*name each label after the structure it marks"):
        open_dataset(tmp_path)


def test_decathlon_labels_of_no_known_form(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"a": "b"}, "training": [
        {"image": "x.nii.gz", "label": "y.nii.gz"}]}))
    with pytest.raises(DatasetError, match="'labels' must map mask values to names"):
        open_dataset(tmp_path)


def test_a_plan_made_with_allow_outside_root_reopens_its_data(images, make, outside):
    """evaluate, report and spawned training processes reopen the data from the plan, not from the flag."""
    from medlens.config import Config, DatasetSection
    from medlens.data.prepared import open_config_dataset

    path = make.csv(images / "m.csv", rows_ab() + [{"image": "../elsewhere/x.png", "label": "a"}])
    planned = Config(dataset=DatasetSection(source=str(path), class_names=("a", "b"), allow_outside_root=True))
    assert len(open_config_dataset(planned).cases) == 7
    refused = Config(dataset=DatasetSection(source=str(path), class_names=("a", "b")))
    with pytest.raises(DatasetError, match="point outside"):
        open_config_dataset(refused)
