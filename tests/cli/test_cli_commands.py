"""The ``medlens`` subcommands, run in-process through ``medlens.cli.main`` (one real subprocess for --help)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medlens.io import Image, identity_direction, write_image


def test_the_console_script_answers_help():
    script = Path(sys.executable).parent / "medlens"
    script = str(script) if script.exists() else shutil.which("medlens")
    assert script, "the medlens console script is not installed"

    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    for command in ("inspect", "split", "info", "demo-data", "fetch"):
        assert command in result.stdout


def test_no_command_prints_help(cli):
    result = cli()

    assert result.rc == 0 and "usage: medlens" in result.out


def test_version(cli, capsys):
    with pytest.raises(SystemExit) as stop:
        cli("--version")

    assert stop.value.code == 0 and capsys.readouterr().out.startswith("medlens 0.")


# --- demo-data -------------------------------------------------------------------------------

def test_demo_data_writes_the_demo_and_refuses_a_foreign_folder(cli, tmp_path):
    result = cli("demo-data", tmp_path / "demo")

    assert result.rc == 0
    assert f"demo data written to {tmp_path / 'demo'}/" in result.out
    assert (tmp_path / "demo" / "classification.csv").is_file()
    assert (tmp_path / "demo" / "segmentation" / "dataset.json").is_file()
    assert len(list((tmp_path / "demo" / "dicom" / "series_001").iterdir())) == 20

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    refused = cli("demo-data", tmp_path / "mine")
    assert refused.rc == 2 and "error:" in refused.err and "not medlens demo data" in refused.err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


# --- inspect ---------------------------------------------------------------------------------

def test_inspect_writes_the_card_and_prints_a_summary(cli, demo_dir, tmp_path):
    card_path = tmp_path / "out" / "card.json"

    result = cli("inspect", demo_dir / "classification.csv", "--out", card_path, "--strict")

    assert result.rc == 0, result.err
    card = json.loads(card_path.read_text())
    assert card["dataset"]["num_cases"] == 160 and card["dataset"]["task_label"] == "binary 2D"
    assert list(card["counts"]["total"]) == ["normal", "lesion"] and sum(card["counts"]["total"].values()) == 160
    assert "layout manifest, task binary 2D, 160 cases (160 readable)" in result.out
    assert "classes: normal, lesion" in result.out
    assert "patients: unassigned=80" in result.out
    assert "findings: 0 (none)" in result.out
    assert f"card written to {card_path}" in result.out


def test_inspect_a_segmentation_folder(cli, demo_dir, tmp_path):
    result = cli("inspect", demo_dir / "segmentation", "--out", tmp_path / "seg.json")

    assert result.rc == 0
    assert "task segmentation 3D, 12 cases (12 readable), modality MRI" in result.out
    assert "spacing (mm): 0.8 x 0.8 x 1.5" in result.out
    assert "mask labels (cases containing each): 0:12  1:12" in result.out


def test_inspect_a_box_manifest_and_boxes_from_masks(cli, demo_dir, tmp_path):
    result = cli("inspect", demo_dir / "detection.csv", "--out", tmp_path / "boxes.json")
    assert result.rc == 0, result.err
    assert "task detection 2D" in result.out and "per image" in result.out
    assert "cell:" in result.out and "spot:" in result.out and "median size" in result.out
    card = json.loads((tmp_path / "boxes.json").read_text())
    assert card["boxes"]["per_class"]["cell"]["boxes"] > 0
    result = cli("inspect", demo_dir / "segmentation", "--boxes-from-masks", "--out", tmp_path / "lesions.json")
    assert result.rc == 0, result.err
    assert "task detection 3D" in result.out and "lesion:" in result.out


def test_inspect_writes_the_card_beside_the_working_directory_by_default(cli, demo_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert cli("inspect", demo_dir / "classification.csv").rc == 0
    assert (tmp_path / "classification.card.json").is_file()


def _leaky_csv(root: Path, png) -> Path:
    rows = [{"image": f"{i}.png", "label": "ab"[i % 2], "patient_id": f"P{i // 2}", "split": "train"} for i in range(6)]
    rows[1]["split"] = "test"  # patient P0 in train and test
    for i, row in enumerate(rows):
        png(root / row["image"], i)
    with open(root / "m.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "m.csv"


def test_inspect_strict_fails_when_the_audit_finds_an_error(cli, tmp_path, png):
    data = _leaky_csv(tmp_path, png)

    relaxed = cli("inspect", data, "--out", tmp_path / "card.json")
    strict = cli("inspect", data, "--out", tmp_path / "card.json", "--strict")

    assert relaxed.rc == 0 and strict.rc == 1
    assert "[error] leakage.patient" in strict.out
    assert json.loads((tmp_path / "card.json").read_text())["findings"][0]["code"] == "leakage.patient"


def test_inspect_with_image_root(cli, tmp_path, png):
    png(tmp_path / "images" / "a.png", 1)
    png(tmp_path / "images" / "b.png", 2)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "m.csv").write_text("filename,diagnosis\na.png,benign\nb.png,malignant\n")

    without = cli("inspect", tmp_path / "meta" / "m.csv", "--out", tmp_path / "c1.json", "--strict")
    with_root = cli("inspect", tmp_path / "meta" / "m.csv", "--image-root", tmp_path / "images",
                    "--out", tmp_path / "c2.json", "--strict")

    assert without.rc == 1 and "file.missing" in without.out
    assert with_root.rc == 0 and "2 cases (2 readable)" in with_root.out


def test_inspect_checks_a_splits_file_and_refuses_one_from_another_dataset(cli, demo_dir, tmp_path, png):
    splits = tmp_path / "demo.splits.json"
    assert cli("split", demo_dir / "classification.csv", "--out", splits).rc == 0

    ok = cli("inspect", demo_dir / "classification.csv", "--splits", splits, "--out", tmp_path / "c.json", "--strict")
    wrong = cli("inspect", _leaky_csv(tmp_path / "other", png), "--splits", splits, "--out", tmp_path / "c2.json")

    assert ok.rc == 0 and "leakage" not in ok.out
    assert wrong.rc == 2 and "error:" in wrong.err and "another dataset" in wrong.err


# --- split -----------------------------------------------------------------------------------

def test_split_writes_a_splits_file(cli, demo_dir, tmp_path):
    out = tmp_path / "splits.json"

    result = cli("split", demo_dir / "classification.csv", "--folds", 3, "--seed", 4, "--out", out)

    assert result.rc == 0, result.err
    splits = json.loads(out.read_text())
    assert len(splits["folds"]) == 3 and splits["seed"] == 4 and splits["grouped_by"] == "patient_id"
    assert "test from generated, validation from generated, grouped by patient_id, seed 4" in result.out
    assert "fold 2 val" in result.out and f"splits written to {out}" in result.out
    again = tmp_path / "again.json"
    cli("split", demo_dir / "classification.csv", "--folds", 3, "--seed", 4, "--out", again)
    assert again.read_text() == out.read_text()


def test_split_keeps_identical_images_of_a_card_together(cli, tmp_path, png):
    data = tmp_path / "data"
    for c, label in enumerate(("normal", "lesion")):
        for i in range(12):
            png(data / label / f"{i}.png", 100 + 20 * c + i)
    png(data / "normal" / "copy_a.png", 7)
    png(data / "lesion" / "copy_b.png", 7)
    card, out = tmp_path / "card.json", tmp_path / "splits.json"
    assert cli("inspect", data, "--out", card).rc == 0
    assert [sorted(g) for g in json.loads(card.read_text())["duplicates"]] == [["lesion/copy_b.png",
                                                                                 "normal/copy_a.png"]]

    assert cli("split", data, "--card", card, "--folds", 2, "--out", out).rc == 0

    splits = json.loads(out.read_text())
    for fold in splits["folds"]:
        where = {cid: part for part in ("train", "val") for cid in fold[part]} | {c: "test" for c in splits["test"]}
        assert where["lesion/copy_b.png"] == where["normal/copy_a.png"]


@pytest.mark.parametrize("content", ["{broken", '{"medlens_splits_version": 1, "test": [], "folds": []}'])
def test_split_refuses_a_file_that_is_not_a_card(cli, demo_dir, tmp_path, content):
    bogus = tmp_path / "card.json"
    bogus.write_text(content)

    result = cli("split", demo_dir / "classification.csv", "--card", bogus, "--out", tmp_path / "s.json")

    assert result.rc == 2 and "not a dataset card" in result.err


def test_split_refuses_a_json_list_as_card(cli, demo_dir, tmp_path):
    bogus = tmp_path / "card.json"
    bogus.write_text("[]")

    result = cli("split", demo_dir / "classification.csv", "--card", bogus, "--out", tmp_path / "s.json")

    assert result.rc == 2 and "not a dataset card" in result.err


def test_split_with_too_few_patients_is_a_user_error(cli, tmp_path, png):
    for label in ("a", "b"):
        png(tmp_path / label / "0.png", ord(label))

    result = cli("split", tmp_path, "--folds", 5, "--out", tmp_path / "s.json")

    assert result.rc == 2 and "cannot make a" in result.err and "Traceback" not in result.err


# --- info ------------------------------------------------------------------------------------

def test_info_on_a_nifti_volume(cli, tmp_path):
    volume = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    path = write_image(Image(volume[None], (0.5, 0.75, 2.0), (1.0, 2.0, 3.0), identity_direction(3)),
                       tmp_path / "ct.nii.gz")

    result = cli("info", path)

    assert result.rc == 0
    assert "format nifti, 3D, array (C, X, Y[, Z]) (1, 4, 5, 3) float32" in result.out
    assert "spacing 0.5 x 0.75 x 2 mm" in result.out
    assert "origin (1.0, 2.0, 3.0) mm" in result.out
    assert "intensity min 0 max 59 mean 29.5" in result.out


def test_info_on_the_demo_dicom_series(cli, demo_dir):
    result = cli("info", demo_dir / "dicom" / "series_001")

    assert result.rc == 0
    assert "format dicom_series, 3D, array (C, X, Y[, Z]) (1, 64, 64, 20)" in result.out
    assert "spacing 0.7 x 0.7 x 2.5 mm" in result.out
    assert "modality CT" in result.out and "num_slices 20" in result.out
    assert "DEMO001" not in result.out


def test_info_on_an_all_nan_image(cli, tmp_path):
    path = write_image(Image(np.full((1, 4, 4, 3), np.nan, np.float32), (1, 1, 1), (0, 0, 0), identity_direction(3)),
                       tmp_path / "nan.mha")

    result = cli("info", path)

    assert result.rc == 0 and "NaN" in result.out


# --- fetch -----------------------------------------------------------------------------------

def _mirror(tmp_path: Path) -> Path:
    path = tmp_path / "mirror" / "breast.npz"
    path.parent.mkdir()
    np.savez(path, train_images=np.zeros((2, 3, 3), np.uint8))
    return path


def test_fetch_medmnist_from_a_file_url(cli, tmp_path, medmnist_md5):
    source = _mirror(tmp_path)
    medmnist_md5("breastmnist", hashlib.md5(source.read_bytes()).hexdigest())

    result = cli("fetch", "medmnist", "breastmnist", "--root", tmp_path / "data", "--url", source.as_uri())

    assert result.rc == 0, result.err
    assert (tmp_path / "data" / "breastmnist.npz").read_bytes() == source.read_bytes()
    assert result.out.strip() == f"{tmp_path / 'data' / 'breastmnist.npz'} (MD5 verified)"


def test_fetch_medmnist_with_a_bad_checksum_is_an_error(cli, tmp_path, medmnist_md5):
    source = _mirror(tmp_path)
    medmnist_md5("breastmnist", "f" * 32)

    result = cli("fetch", "medmnist", "breastmnist", "--size", 64, "--root", tmp_path / "data",
                 "--url", source.as_uri())

    assert result.rc == 2 and "MD5" in result.err and "Traceback" not in result.err
    assert list((tmp_path / "data").iterdir()) == []


def test_fetch_an_unknown_dataset_is_an_error(cli, tmp_path):
    result = cli("fetch", "medmnist", "catmnist", "--root", tmp_path)

    assert result.rc == 2 and "not a MedMNIST dataset" in result.err


# --- user mistakes: status 2, one 'error:' line, no traceback ------------------------------------

def _bad_input(kind: str, tmp_path: Path) -> Path:
    if kind == "missing path":
        return tmp_path / "no" / "such" / "data"
    if kind == "empty folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    path = tmp_path / "broken.csv"
    if kind == "binary csv":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "csv without image column":
        path.write_text("name,label\nx,1\ny,0\n")
    elif kind == "csv with header only":
        path.write_text("image,label\n")
    return path


@pytest.mark.parametrize("command", ["inspect", "split"])
@pytest.mark.parametrize("kind", ["missing path", "empty folder", "binary csv", "csv without image column",
                                  "csv with header only"])
def test_bad_data_is_reported_without_a_traceback(cli, tmp_path, command, kind):
    result = cli(command, _bad_input(kind, tmp_path), "--out", tmp_path / "out.json")

    assert result.rc == 2
    assert result.err.startswith(f"medlens {command}: error: ")
    assert "Traceback" not in result.err + result.out
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("kind", ["missing file", "corrupt file"])
def test_info_on_a_bad_file_is_reported_without_a_traceback(cli, tmp_path, kind):
    path = tmp_path / "scan.nii.gz"
    if kind == "corrupt file":
        path.write_bytes(b"\x1f\x8b" + b"\0" * 50)

    result = cli("info", path)

    assert result.rc == 2 and result.err.startswith("medlens info: error: ") and "Traceback" not in result.err


def test_a_missing_medmnist_name_says_how_to_fetch_it(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLENS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    result = cli("inspect", "dermamnist")

    assert result.rc == 2 and "medlens fetch medmnist dermamnist --size 28" in result.err


def test_a_csv_with_an_unbalanced_quote_is_a_user_error(cli, tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('image,label\n"a.png,normal\n' + "".join(f"img_{i}.png,lesion\n" for i in range(10_000)))

    result = cli("inspect", path, "--out", tmp_path / "c.json")

    assert result.rc == 2 and "error:" in result.err
