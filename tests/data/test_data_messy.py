"""Messy class folders train (issue 19): files named after another format, alpha channels, unreadable files,
and duplicates that must stay in one split of the splits ``train`` and ``medlens split`` make.

Tiny PNG/JPEG files written through ``tmp_path``; nothing is trained except in the one ``slow`` test.
"""

from __future__ import annotations

import json
import shutil
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medlens.cli.train import skip_unreadable_requested
from medlens.config import Config, DataSection
from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.audit_reads import skipped_rows
from medlens.data.dataset import unreadable_skipped
from medlens.data.prepared import resolve_splits, split_cases
from medlens.data.splits import make_splits, read_splits
from medlens.data.tensors import preprocess_cases
from medlens.engine.train import check_card
from medlens.errors import DatasetError
from medlens.io import read_image


def noise(seed: int, shape=(10, 12)) -> np.ndarray:
    """Distinct uint8 pixels ``(H, W)`` per seed."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def class_folders(root: Path, per_class: int = 12) -> Path:
    """``root/{normal,lesion}/<i>.png``, grey noise, distinct per file."""
    for c, name in enumerate(("normal", "lesion")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            PILImage.fromarray(noise(100 * c + i)).save(root / name / f"{i}.png")
    return root


def findings(card: dict) -> dict[str, dict]:
    return {f["code"]: f for f in card["findings"]}


# --- content over name -----------------------------------------------------------------------------


def test_png_named_jpg_is_read_by_its_content_with_the_same_pixels(tmp_path):
    pixels = noise(1)
    PILImage.fromarray(pixels).save(tmp_path / "scan.png")
    shutil.copy(tmp_path / "scan.png", tmp_path / "scan.jpg")

    as_png, as_jpg = read_image(tmp_path / "scan.png"), read_image(tmp_path / "scan.jpg")

    np.testing.assert_array_equal(as_jpg.array, as_png.array)
    np.testing.assert_array_equal(as_jpg.array[0], pixels.T)  # lossless: a JPEG decoder would not give these
    assert "read_warnings" not in as_png.meta
    assert as_jpg.meta["read_warnings"] == [{
        "code": "image.misnamed",
        "message": "holds a png image but is named .jpg (jpeg); read as png, rename it to .png"}]


def test_misnamed_files_are_a_warning_naming_each_file_and_do_not_stop_training(tmp_path):
    root = class_folders(tmp_path / "data")
    for i in (0, 1):
        (root / "lesion" / f"{i}.png").rename(root / "lesion" / f"{i}.jpg")  # PNG content, .jpg name
    jpeg = root / "normal" / "0.png"
    PILImage.fromarray(noise(0)).save(jpeg, format="JPEG")  # JPEG content, .png name
    logged: list[str] = []

    card = inspect_dataset(open_dataset(root))
    check_card(card, log=logged.append)  # would raise on a finding that blocks training

    finding = findings(card)["image.misnamed"]
    assert finding["severity"] == "warning" and not finding["blocks_training"]
    assert sorted(finding["cases"]) == ["lesion/0.jpg", "lesion/1.jpg", "normal/0.png"]
    assert "lesion/0.jpg: holds a png image but is named .jpg (jpeg)" in finding["message"]
    assert "normal/0.png: holds a jpeg image but is named .png (png)" in finding["message"]
    assert any(line.startswith("warning [image.misnamed]: 3 file(s)") for line in logged)
    assert card["dataset"]["num_readable"] == 24 and not card["unreadable"]


def test_files_that_are_no_image_by_name_are_a_warning_naming_them(tmp_path):
    root = class_folders(tmp_path / "data")
    (root / "normal" / "readme.txt").write_text("scanned 2021\n")
    (root / "lesion" / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(40))
    (root / "lesion" / ".DS_Store").write_bytes(b"\0" * 8)

    dataset = open_dataset(root)

    finding = next(f for f in dataset.findings if f.code == "file.ignored")
    assert finding.severity == "warning" and not finding.blocks_training
    assert finding.cases == ["normal/readme.txt", "lesion/photo.heic"] and "normal/readme.txt" in finding.message
    assert len(dataset.cases) == 24


def test_what_the_system_writes_beside_the_images_is_skipped_without_a_word(tmp_path):
    """A zip made on a Mac carries __MACOSX/ with a ._ copy of every file; Windows writes Thumbs.db."""
    root = class_folders(tmp_path / "data")
    for junk in ("__MACOSX/normal/._0.png", "__MACOSX/lesion/._1.png", "normal/Thumbs.db", "lesion/desktop.ini",
                 "lesion/.DS_Store", "normal/@eaDir/0.png@SynoEAStream", ".ipynb_checkpoints/x.png"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"\0\0\0\x01Bud1" + bytes(64))
    logged: list[str] = []

    dataset = open_dataset(root)
    card = inspect_dataset(dataset)
    check_card(card, log=logged.append)

    assert set(dataset.class_names) == {"lesion", "normal"} and len(dataset.cases) == 24
    assert not card["unreadable"] and not logged


def test_images_in_sub_folders_of_a_class_folder_are_cases_of_that_class_with_a_note(tmp_path):
    root = class_folders(tmp_path / "data", per_class=4)
    for patient in ("p1", "p2/visit1"):
        (root / "lesion" / patient).mkdir(parents=True)
        PILImage.fromarray(noise(50)).save(root / "lesion" / patient / "a.png")
    (root / "lesion" / "p1" / "notes.txt").write_text("follow-up\n")

    dataset = open_dataset(root)

    by_id = {c.case_id: c for c in dataset.cases}
    assert {"lesion/p1/a.png", "lesion/p2/visit1/a.png"} <= set(by_id) and len(by_id) == 10
    assert by_id["lesion/p2/visit1/a.png"].label == dataset.class_names.index("lesion")
    assert all(c.patient_id is None for c in dataset.cases)
    note = next(f for f in dataset.findings if f.code == "class.subfolders")
    assert note.severity == "info" and note.cases == ["lesion/p1/a.png", "lesion/p2/visit1/a.png"]
    assert "patient column" in note.message
    assert next(f for f in dataset.findings if f.code == "file.ignored").cases == ["lesion/p1/notes.txt"]


# --- alpha -----------------------------------------------------------------------------------------


def rgba(alpha: int | None) -> np.ndarray:
    """``(10, 12, 4)`` RGB noise with a constant alpha, or with the left half transparent (``None``)."""
    array = np.dstack([noise(7), noise(8), noise(9), np.full((10, 12), 255, np.uint8)])
    if alpha is None:
        array[:, :6, 3] = 0
    else:
        array[..., 3] = alpha
    return array


def test_opaque_and_translucent_rgba_are_read_with_a_warning_and_the_documented_flattening(tmp_path):
    root = class_folders(tmp_path / "data")
    PILImage.fromarray(rgba(255)).save(root / "normal" / "opaque.png")
    PILImage.fromarray(rgba(None)).save(root / "lesion" / "translucent.png")
    logged: list[str] = []

    dataset = open_dataset(root)
    card = inspect_dataset(dataset)
    check_card(card, log=logged.append)

    finding = findings(card)["image.alpha"]
    assert sorted(finding["cases"]) == ["lesion/translucent.png", "normal/opaque.png"]
    assert "normal/opaque.png: alpha channel dropped (every pixel is opaque)" in finding["message"]
    assert "lesion/translucent.png: translucent alpha channel (50.0% of pixels not opaque) flattened onto black" \
        in finding["message"]
    assert any(line.startswith("warning [image.alpha]: 2 image(s)") for line in logged)
    by_id = {c.case_id: c for c in dataset.cases}
    opaque = dataset.load_image(by_id["normal/opaque.png"]).array  # (C, X, Y)
    translucent = dataset.load_image(by_id["lesion/translucent.png"]).array
    np.testing.assert_array_equal(opaque, rgba(255)[..., :3].transpose(2, 1, 0))
    assert not translucent[:, :6, :].any()  # transparent columns x < 6 are black
    np.testing.assert_array_equal(translucent[:, 6:, :], rgba(None)[:, 6:, :3].transpose(2, 1, 0))


def test_a_folder_of_every_colour_mode_and_size_is_brought_to_the_plans_channels(tmp_path):
    root = tmp_path / "data"
    for name in ("normal", "lesion"):
        (root / name).mkdir(parents=True)
        PILImage.fromarray(noise(1, (9, 14))).save(root / name / "grey.png")
        PILImage.fromarray(noise(2).astype(np.uint16) * 250).save(root / name / "grey16.png")
        PILImage.fromarray(np.dstack([noise(3), noise(4), noise(5)])).save(root / name / "rgb.jpg", quality=95)
        PILImage.fromarray(noise(6, (20, 11))).convert("P").save(root / name / "palette.gif")
        PILImage.fromarray(rgba(None)).save(root / name / "rgba.jpg", format="PNG")  # a translucent PNG named .jpg
        PILImage.fromarray(np.dstack([noise(7), noise(8)]), mode="LA").save(root / name / "grey_alpha.png")
    dataset = open_dataset(root)
    card = inspect_dataset(dataset)
    check_card(card, log=lambda line: None)

    for channels in (1, 3):
        arrays = preprocess_cases(dataset, dataset.cases, DataSection(input_size=(16, 16), channels=channels))

        assert arrays.shape == (12, channels, 16, 16) and np.isfinite(arrays).all()
    assert card["images"]["channels"] == {"1": 8, "3": 4}
    assert set(findings(card)) >= {"image.misnamed", "image.alpha"}


# --- unreadable files ------------------------------------------------------------------------------


def truncated_among_good(tmp_path: Path) -> Path:
    root = class_folders(tmp_path / "data")
    good = (root / "lesion" / "3.png").read_bytes()
    (root / "lesion" / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "normal" / "notes.png").write_text("not an image at all\n" * 20)
    return root


def test_unreadable_files_are_refused_by_default_naming_them_and_the_way_round(tmp_path):
    root = truncated_among_good(tmp_path)

    card = inspect_dataset(open_dataset(root))

    with pytest.raises(DatasetError, match="image.unreadable") as refused:
        check_card(card)
    message = str(refused.value)
    assert "2 case(s) could not be read" in message
    assert str(root / "normal" / "notes.png") in message and "lesion/cut.png" in message
    assert "--skip-unreadable (plan key dataset.skip_unreadable: true)" in message
    assert "skipped" not in card


def test_skip_unreadable_lists_them_in_the_card_and_leaves_them_out_of_every_split(tmp_path):
    root = truncated_among_good(tmp_path)
    dataset = open_dataset(root)
    logged: list[str] = []

    with unreadable_skipped():  # what `--skip-unreadable` puts in force around plan / train
        card = inspect_dataset(dataset)
    check_card(card, log=logged.append)
    splits = resolve_splits(dataset, Config(), card)

    assert [(s["path"], s["reason"].split(":")[0]) for s in card["skipped"]] == [
        ("normal/notes.png", "normal/notes.png"), ("lesion/cut.png", "lesion/cut.png")]
    assert str(tmp_path) not in json.dumps(card["skipped"])  # paths relative to the dataset
    assert skipped_rows(card)[1][0] == "lesion/cut.png"
    assert card["counts"]["total"] == {"normal": 12, "lesion": 12}  # counts are of the cases kept
    assert any(line.startswith("warning [image.skipped]: 2 unreadable case(s) left out") for line in logged)
    placed = set(splits["test"]).union(*(set(f["train"]) | set(f["val"]) for f in splits["folds"]))
    assert splits["skipped"] == ["lesion/cut.png", "normal/notes.png"]
    assert len(placed) == 24 and not placed & set(splits["skipped"])
    reread = read_splits_roundtrip(tmp_path, splits, dataset)  # resume / evaluate reopen all 26 files
    assert split_cases(dataset, reread, 0).keys() == {"train", "val", "test"}


def read_splits_roundtrip(tmp_path: Path, splits: dict, dataset) -> dict:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(splits))
    return read_splits(path, dataset)


def test_skip_unreadable_comes_from_the_flag_the_set_option_or_the_plan_file(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("dataset:\n  skip_unreadable: true\n")
    args = lambda **kw: Namespace(**{"skip_unreadable": False, "overrides": [], "plan": None, **kw})  # noqa: E731

    assert skip_unreadable_requested(args()) == (False, [])
    assert skip_unreadable_requested(args(skip_unreadable=True)) == (True, ["dataset.skip_unreadable=true"])
    assert skip_unreadable_requested(args(overrides=["dataset.skip_unreadable=yes"]))[0] is True
    assert skip_unreadable_requested(args(plan=plan))[0] is True
    assert skip_unreadable_requested(args(plan=plan, overrides=["dataset.skip_unreadable=false"]))[0] is False


def test_cli_inspect_and_plan_with_and_without_skip_unreadable(tmp_path, cli):
    root = truncated_among_good(tmp_path)

    refused = cli("plan", root, "--out", tmp_path / "plan.yaml")
    inspected = cli("inspect", root, "--out", tmp_path / "card.json", "--skip-unreadable")

    assert refused.rc == 2 and "lesion/cut.png" in refused.err and "--skip-unreadable" in refused.err
    assert not (tmp_path / "plan.yaml").exists()
    assert inspected.rc == 0 and "unreadable (2, left out of training):" in inspected.out
    card = json.loads((tmp_path / "card.json").read_text())
    assert [s["case"] for s in card["skipped"]] == ["normal/notes.png", "lesion/cut.png"]
    assert not findings(card)["image.skipped"]["blocks_training"] and "image.unreadable" not in findings(card)


@pytest.mark.slow
def test_train_with_skip_unreadable_trains_without_them_and_records_them(tmp_path, cli):
    root = truncated_among_good(tmp_path)

    result = cli("train", root, "--skip-unreadable", "--time-budget", "5s", "--no-progress", "--out", tmp_path / "run")

    assert result.rc == 0, result.err
    run = tmp_path / "run"
    assert "skip_unreadable: true" in (run / "plan.yaml").read_text()
    assert [s["path"] for s in json.loads((run / "card.json").read_text())["skipped"]] == [
        "normal/notes.png", "lesion/cut.png"]
    assert json.loads((run / "splits.json").read_text())["skipped"] == ["lesion/cut.png", "normal/notes.png"]
    assert "lesion/cut.png" in (run / "report.md").read_text()


# --- duplicates stay in one split ------------------------------------------------------------------


def with_planted_duplicates(tmp_path: Path) -> tuple[Path, list[set[str]]]:
    """40 + 40 distinct images, then 10 groups of 2-3 byte-identical copies within a class."""
    root = class_folders(tmp_path / "data", per_class=40)
    groups = []
    for g in range(10):
        name = ("normal", "lesion")[g % 2]
        source = root / name / f"{g}.png"
        copies = [root / name / f"copy_{g}_{k}.png" for k in range(1 + g % 2)]
        for copy in copies:
            shutil.copy(source, copy)
        groups.append({f"{name}/{p.name}" for p in [source, *copies]})
    return root, groups


def straddling(groups: list[set[str]], splits: dict) -> list[set[str]]:
    """The groups whose cases sit in more than one split, in any fold."""
    crossing = []
    for fold in splits["folds"]:
        where = {**{i: "test" for i in splits["test"]}, **{i: "train" for i in fold["train"]},
                 **{i: "val" for i in fold["val"]}}
        crossing += [g for g in groups if len({where[i] for i in g}) > 1]
    return crossing


def test_splits_train_makes_keep_every_planted_duplicate_group_in_one_split(tmp_path):
    root, groups = with_planted_duplicates(tmp_path)
    dataset = open_dataset(root)
    card = inspect_dataset(dataset)
    assert sorted(map(sorted, groups)) == sorted(map(sorted, card["duplicates"]))  # the audit finds them all

    for seed in range(3):
        splits = resolve_splits(dataset, seeded(seed), card)

        assert straddling(groups, splits) == []
    # without the audit's groups the same seeds scatter some of them (what `train` did before)
    assert any(straddling(groups, make_splits(dataset, seed=seed)) for seed in range(3))


def seeded(seed: int) -> Config:
    """The default plan with ``train.seed = seed`` (what ``resolve_splits`` makes splits with)."""
    config = Config()
    return replace(config, train=replace(config.train, seed=seed))


def test_medlens_split_keeps_duplicates_together_in_every_fold(tmp_path, cli):
    root, groups = with_planted_duplicates(tmp_path)

    one = cli("split", root, "--out", tmp_path / "one.json")
    folds = cli("split", root, "--folds", "4", "--out", tmp_path / "k.json")

    assert one.rc == 0 and folds.rc == 0, one.err + folds.err
    assert "10 group(s) of identical images kept together" in one.out
    k = json.loads((tmp_path / "k.json").read_text())
    assert len(k["folds"]) == 4
    assert straddling(groups, json.loads((tmp_path / "one.json").read_text())) == []
    assert straddling(groups, k) == []
    assert straddling(groups, make_splits(open_dataset(root), folds=4, seed=0))  # scattered without the audit


def test_numeric_class_names_sort_by_value_grades_included():
    from medlens.data.dataset import order_class_names

    assert order_class_names(["2", "0.5", "1", "0"]) == ["0", "0.5", "1", "2"]  # CDR grades
    assert order_class_names(["b", "10", "2", "a"]) == ["2", "10", "a", "b"]
    assert order_class_names(["nan", "1"]) == ["1", "nan"]


def test_a_class_spelled_in_another_case_in_one_split_folder_is_the_same_class_with_a_warning(tmp_path):
    for split, names in (("train", ("NORMAL", "PNEUMONIA")), ("val", ("NORMAL", "PNEUMONIA")),
                         ("test", ("normal", "Pneumonia"))):
        for c, name in enumerate(names):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                PILImage.fromarray(noise(100 * c + i)).save(tmp_path / split / name / f"{i}.png")

    dataset = open_dataset(tmp_path)

    assert dataset.class_names == ("NORMAL", "PNEUMONIA") and len(dataset.cases) == 18
    assert [c.label for c in dataset.cases if c.case_id.startswith("test/")] == [0, 0, 0, 1, 1, 1]
    finding = next(f for f in dataset.findings if f.code == "class.spelling")
    assert sorted(finding.cases) == ["test/Pneumonia read as 'PNEUMONIA'", "test/normal read as 'NORMAL'"]


def test_two_class_folders_side_by_side_differing_only_in_case_are_refused(tmp_path):
    for name in ("normal", "Normal", "lesion"):
        (tmp_path / name).mkdir()
        PILImage.fromarray(noise(1)).save(tmp_path / name / "0.png")

    with pytest.raises(DatasetError, match="'Normal' and 'normal' differ only in case"):
        open_dataset(tmp_path)


# --- masks as people save them -----------------------------------------------------------------------


def disc(shape=(40, 48)) -> np.ndarray:
    """``(H, W)`` uint8 mask: 255 inside a disc, 0 outside."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    return np.where((y - 20) ** 2 + (x - 22) ** 2 < 100, 255, 0).astype(np.uint8)


def pairs(root: Path, mask_of, suffix: str, n: int = 3) -> Path:
    """``root/images/<i>.png`` + ``root/masks/<i><suffix>`` written by ``mask_of(path)``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        PILImage.fromarray(noise(i, (40, 48))).save(root / "images" / f"{i}.png")
        mask_of(root / "masks" / f"{i}{suffix}")
    return root


def test_a_black_and_white_jpeg_mask_is_thresholded_to_the_values_its_png_twin_holds(tmp_path):
    """Kvasir-SEG ships its masks as RGB JPEGs: every grey level from 0 to 255 along the edges."""
    root = pairs(tmp_path / "data", lambda p: PILImage.fromarray(disc()).convert("RGB").save(p, quality=75), ".jpg")

    dataset = open_dataset(root)
    card = inspect_dataset(dataset)
    mask = dataset.load_mask(dataset.cases[0])

    assert mask.channels == 1 and set(np.unique(mask.array).tolist()) == {0, 255}
    assert np.mean(mask.array[0] == disc().T) > 0.99
    assert card["masks"]["cases_with_label"] == {"0": 3, "255": 3}
    assert {"mask.grey_rgb", "mask.lossy"} <= set(findings(card)) and not card["unreadable"]
    assert "thresholded at 128 to 0 / 255" in findings(card)["mask.lossy"]["message"]


def test_a_grey_png_mask_stored_as_rgb_is_read_as_one_channel_unchanged(tmp_path):
    root = pairs(tmp_path / "data", lambda p: PILImage.fromarray(disc() // 255).convert("RGB").save(p), ".png")

    dataset = open_dataset(root)
    mask = dataset.load_mask(dataset.cases[0])

    np.testing.assert_array_equal(mask.array, (disc() // 255).T[None])
    assert [note["code"] for note in mask.meta["read_warnings"]] == ["mask.grey_rgb"]


def test_a_jpeg_mask_of_several_classes_is_refused_naming_png(tmp_path):
    def three_classes(path):
        mask = disc() // 255 * 80
        mask[:, 30:] = 160
        PILImage.fromarray(mask).save(path, quality=75)

    root = pairs(tmp_path / "data", three_classes, ".jpg")

    card = inspect_dataset(open_dataset(root))

    finding = next(f for f in card["findings"] if f["code"] == "mask.unreadable")
    assert "JPEG compression changes the class values" in finding["message"] and "PNG" in finding["message"]


def test_a_colour_coded_mask_stays_refused_as_several_channels(tmp_path):
    def colours(path):
        rgb = np.zeros((40, 48, 3), np.uint8)
        rgb[disc() > 0] = (255, 0, 0)
        rgb[:5] = (0, 255, 0)
        PILImage.fromarray(rgb).save(path)

    card = inspect_dataset(open_dataset(pairs(tmp_path / "data", colours, ".png")))

    assert "mask.channels" in {f["code"] for f in card["findings"]}


# --- near duplicates ---------------------------------------------------------------------------------


def smooth(seed: int, shape=(96, 80)) -> np.ndarray:
    """``(H, W)`` uint8: a smooth random picture (upsampled 8 x 8 noise) with fine noise, distinct per seed."""
    rng = np.random.default_rng(seed)
    coarse = PILImage.fromarray(rng.uniform(40, 215, (8, 8)).astype(np.float32), mode="F").resize(shape[::-1],
                                                                                                 PILImage.BICUBIC)
    return np.clip(np.asarray(coarse) + rng.normal(0, 6, shape), 0, 255).astype(np.uint8)


def with_planted_near_copies(tmp_path: Path) -> tuple[Path, list[set[str]]]:
    """24 smooth pictures per class and, of 6 of them, a copy re-saved as JPEG at another size, one brighter."""
    root = tmp_path / "data"
    groups = []
    for c, name in enumerate(("normal", "lesion")):
        (root / name).mkdir(parents=True)
        for i in range(24):
            PILImage.fromarray(smooth(100 * c + i)).save(root / name / f"{i}.png")
        for i in range(3):
            copy = PILImage.fromarray(np.clip(smooth(100 * c + i) * 1.1 + 5, 0, 255).astype(np.uint8))
            copy.resize((60, 72), PILImage.BILINEAR).save(root / name / f"copy_{i}.jpg", quality=70)
            groups.append({f"{name}/{i}.png", f"{name}/copy_{i}.jpg"})
    return root, groups


def test_near_identical_copies_are_found_and_kept_in_one_split(tmp_path):
    root, groups = with_planted_near_copies(tmp_path)
    dataset = open_dataset(root)

    card = inspect_dataset(dataset)

    assert card["duplicates"] == []  # no two files hold the same pixels
    assert sorted(map(sorted, card["near_duplicates"])) == sorted(map(sorted, groups))
    finding = findings(card)["duplicates.near"]
    assert finding["severity"] == "warning" and "6 group(s) of near-identical images (12 cases" in finding["message"]
    for seed in range(3):
        assert straddling(groups, resolve_splits(dataset, seeded(seed), card)) == []
    assert any(straddling(groups, make_splits(dataset, seed=seed)) for seed in range(3))


def test_near_copies_across_a_datasets_own_splits_and_labels_are_warned(tmp_path):
    root = tmp_path / "data"
    for split, name, seed in (("train", "normal", 1), ("test", "normal", 1), ("train", "lesion", 2),
                              ("test", "normal", 2), ("train", "lesion", 3), ("test", "lesion", 4)):
        (root / split / name).mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(smooth(seed)).save(root / split / name / f"{seed}.jpg", quality=60 + 10 * (split == "test"))

    card = inspect_dataset(open_dataset(root))

    assert sorted(findings(card)["leakage.near_duplicates"]["cases"]) == [
        "test/normal/1.jpg", "test/normal/2.jpg", "train/lesion/2.jpg", "train/normal/1.jpg"]
    assert sorted(findings(card)["label.near_conflict"]["cases"]) == ["test/normal/2.jpg", "train/lesion/2.jpg"]


def test_images_all_alike_are_not_taken_for_copies(tmp_path):
    """A set whose pictures all look alike at thumbnail scale (one phantom, say; the demo's radiographs) is no set
    of copies: one group of all of them would leave nothing to split."""
    root = tmp_path / "data"
    base = smooth(7).astype(float)
    for c, name in enumerate(("normal", "lesion")):
        (root / name).mkdir(parents=True)
        for i in range(15):
            noisy = base + np.random.default_rng(100 * c + i).normal(0, 2, base.shape)
            PILImage.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")

    card = inspect_dataset(open_dataset(root))

    assert card["near_duplicates"] == [] and "all alike at thumbnail scale" in card["near_duplicate_search"]
    assert not any(code.startswith(("duplicates", "label.near")) for code in findings(card))


def test_a_large_group_among_varied_images_is_warned_about_not_kept_together(tmp_path):
    root, _ = with_planted_near_copies(tmp_path)
    for i in range(12):  # twelve near copies of one picture among 54 varied ones
        PILImage.fromarray(np.clip(smooth(5) + i, 0, 255).astype(np.uint8)).save(root / "normal" / f"again_{i}.png")

    card = inspect_dataset(open_dataset(root))

    finding = findings(card)["duplicates.near_skipped"]
    assert finding["severity"] == "warning" and len(finding["cases"]) == 13  # the twelve and normal/5.png
    assert len(card["near_duplicates"]) == 6 and card["near_duplicate_search"].startswith("66 2D images")


# --- patients in file names -------------------------------------------------------------------------


def test_file_names_that_seem_to_carry_patients_are_a_warning_and_nothing_is_inferred(tmp_path):
    """Kermany's chest X-rays are named person1_bacteria_1.jpeg, person1_virus_6.jpeg: one patient, two files."""
    root = tmp_path / "data"
    for c, name in enumerate(("NORMAL", "PNEUMONIA")):
        (root / name).mkdir(parents=True)
        for p in range(4):
            for k in range(2):
                PILImage.fromarray(noise(100 * c + 10 * p + k)).save(root / name / f"person{10 * c + p}_img_{k}.png")

    dataset = open_dataset(root)

    finding = next(f for f in dataset.findings if f.code == "class.filename_patients")
    assert finding.severity == "warning" and len(finding.cases) == 16 and "patient column" in finding.message
    assert all(c.patient_id is None for c in dataset.cases)


@pytest.mark.parametrize("names", [[f"img_{i}.png" for i in range(8)], [f"{i:03d}.png" for i in range(8)],
                                   [f"scan{i}_a.png" for i in range(8)]])
def test_names_without_a_shared_numbered_token_say_nothing(tmp_path, names):
    for c, name in enumerate(("normal", "lesion")):
        (tmp_path / name).mkdir()
        for i, file in enumerate(names):
            PILImage.fromarray(noise(100 * c + i)).save(tmp_path / name / file)

    assert "class.filename_patients" not in {f.code for f in open_dataset(tmp_path).findings}
