"""Clinical columns as spreadsheets save them: decimal commas, dashes for "not known", categories spelt two ways,
a stray word among numbers, and the same sheet given to ``predict`` as a list of cases."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.audit_clinical import describe_column, separation_auc
from medlens.data.clinical import ClinicalEncoder
from medlens.errors import DatasetError
from medlens.tasks.classification.plan_inputs import plan_clinical
from medlens.types import Case


def sheet(tmp_path: Path, make, rows: list[list[str]], header: list[str], *, delimiter: str = ";") -> Path:
    """A manifest of PNG cases written by hand (``delimiter`` between cells, cells quoted where they hold it)."""
    for i in range(len(rows)):
        make.png(tmp_path / f"img/{i}.png", make.pixels(i, (6, 6)))
    quote = lambda cell: f'"{cell}"' if delimiter in cell else cell  # noqa: E731
    lines = [delimiter.join(header)] + [delimiter.join([f"img/{i}.png", *map(quote, row)]) for i, row in
                                        enumerate(rows)]
    path = tmp_path / "cases.csv"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8-sig")
    return path


def findings(card: dict, code: str) -> list[dict]:
    return [f for f in card["findings"] if f["code"] == code]


def test_a_semicolon_sheet_reads_decimal_commas_as_points_and_says_so(tmp_path, make):
    rows = [["ab"[i % 2], f"0,{700 + 7 * i}", f"{60 + i}", "-" if i == 3 else "?" if i == 5 else f"{1 + i % 4}"]
            for i in range(12)]
    path = sheet(tmp_path, make, rows, ["image", "label", "nWBV", "Age", "SES"])

    dataset = open_dataset(path)
    card = inspect_dataset(dataset)

    assert dataset.cases[1].clinical["nWBV"] == "0.707" and dataset.cases[1].clinical["Age"] == "61"
    assert card["clinical"]["nWBV"]["kind"] == "numeric" and card["clinical"]["nWBV"]["numeric"]["max"] == 0.777
    assert card["clinical"]["SES"]["kind"] == "numeric" and card["clinical"]["SES"]["missing"] == 2  # '-' and '?'
    [note] = findings(card, "table.decimal_comma")
    assert note["severity"] == "info" and "column(s) nWBV are read as 0.715" in note["message"]


def test_decimal_commas_in_a_comma_separated_sheet_are_a_warning_and_left_out_of_the_plan(tmp_path, make):
    rows = [["ab"[i % 2], f"0,{700 + 7 * i}", f"{60 + i}"] for i in range(12)]
    path = sheet(tmp_path, make, rows, ["image", "label", "nWBV", "Age"], delimiter=",")

    card = inspect_dataset(open_dataset(path))

    entry = card["clinical"]["nWBV"]
    assert entry["kind"] == "categorical" and entry["decimal_comma"] and not entry["usable"] and not entry["leakage"]
    [warning] = findings(card, "clinical.decimal_comma")
    assert "'0,7" in warning["message"] and "save the sheet with semicolons" in warning["message"]
    reasons: dict = {}
    section = plan_clinical(card, reasons)
    assert section.numeric == ("Age",) and "nWBV (numbers written with a decimal comma" in reasons["clinical.numeric"]


def test_categories_spelt_in_another_case_are_one_and_the_encoder_reads_every_spelling(tmp_path, make):
    sexes = ["F", "f", "M", "F ", "m", "F", "M", "female"]
    path = sheet(tmp_path, make, [["ab"[i % 2], s] for i, s in enumerate(sexes)], ["image", "label", "Sex"],
                 delimiter=",")

    card = inspect_dataset(open_dataset(path))

    entry = card["clinical"]["Sex"]
    assert entry["categories"] == {"F": 4, "M": 3, "female": 1} and entry["spellings"] == {"F": ["f"], "M": ["m"]}
    [note] = findings(card, "clinical.spelling")
    assert "F (also written 'f'); M (also written 'm')" in note["message"]
    section = plan_clinical(card, {})
    assert section.categorical == ("Sex=F|M|female",)
    cases = [Case(str(i), (Path("x.png"),), label=0, clinical={"Sex": s}) for i, s in enumerate(sexes)]
    encoder = ClinicalEncoder.fit(section, cases)
    assert encoder.encode_record({"Sex": " m "}, "x").tolist() == encoder.encode_record({"Sex": "M"}, "x").tolist()


def test_a_stray_word_among_numbers_is_named_with_its_case():
    cells = [str(v) for v in range(20, 39)] + ["<5"]
    entry = describe_column(cells, np.arange(20) % 2, [f"p{i}" for i in range(20)])

    assert entry["kind"] == "categorical" and entry["not_numbers"] == [["p19", "<5"]]
    assert "not_numbers" not in describe_column(["a", "b", "1", "2"], np.arange(4) % 2)  # mostly words: categories


def test_many_small_categories_are_not_taken_for_leakage_and_a_label_copy_still_is():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    pairs = np.array([f"v{i // 2}" for i in range(120)], dtype=object)  # 60 categories of 2: fit anything in-sample
    assert separation_auc(pairs, labels, numeric=False) < 0.7
    constant = np.array(["x"] * 120, dtype=object)
    assert separation_auc(constant, labels, numeric=False) == 0.5
    copy = np.array(["AD" if y else "CN" for y in labels], dtype=object)
    assert separation_auc(copy, labels, numeric=False) == pytest.approx(1.0)


def test_predict_reads_a_semicolon_case_list_as_training_read_the_manifest(tmp_path, make):
    from medlens.tasks.classification.outputs import is_case_list, read_case_list

    rows = [["ab"[i % 2], f"0,{700 + i}", "F"] for i in range(3)]
    path = sheet(tmp_path, make, rows, ["image", "label", "nWBV", "Sex"])
    with open(path, "a", encoding="utf-8") as f:
        f.write(";;;\r\n")  # a sheet's trailing empty row
    predictor = SimpleNamespace(clinical=SimpleNamespace(columns=["nWBV", "Sex"]))

    assert is_case_list(path)
    cases = read_case_list(path, predictor)

    assert [c.clinical for c in cases] == [{"nWBV": f"0.{700 + i}", "Sex": "F"} for i in range(3)]
    assert cases[0].source == str(tmp_path / "img/0.png") and cases[2].name == "cases.csv line 4"


def test_rows_reaching_outside_through_a_link_name_the_link(tmp_path, make):
    outside = tmp_path / "elsewhere"
    make.png(outside / "a.png", make.pixels(0))
    make.png(outside / "b.png", make.pixels(1))
    root = tmp_path / "project"
    root.mkdir()
    (root / "scans").symlink_to(outside, target_is_directory=True)
    path = make.csv(root / "m.csv", [{"image": "scans/a.png", "label": "x"}, {"image": "scans/b.png", "label": "y"}])

    with pytest.raises(DatasetError, match="point outside") as refused:
        open_dataset(path)

    assert f"through the symbolic link(s) {root / 'scans'} -> {outside};" in str(refused.value)


def test_a_windows_1252_sheet_is_read_and_said_so(tmp_path, make):
    make.png(tmp_path / "img/Müller.png", make.pixels(0))
    make.png(tmp_path / "img/b.png", make.pixels(1))
    path = tmp_path / "cases.csv"
    path.write_bytes("image;label;Größe\r\nimg/Müller.png;gesund;1,72\r\nimg/b.png;krank;1,80\r\n".encode("cp1252"))

    dataset = open_dataset(path)

    assert [c.clinical["Größe"] for c in dataset.cases] == ["1.72", "1.80"] and dataset.cases[0].images[0].is_file()
    assert {f.code for f in dataset.findings} >= {"table.encoding", "table.decimal_comma"}
    path.write_bytes(b"image,label\n\x00\x9d\xff,a\n")
    with pytest.raises(DatasetError, match=r"line 2 is neither UTF-8 nor Windows-1252 text"):
        open_dataset(path)
