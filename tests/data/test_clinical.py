"""Clinical columns: the encoder fitted on training cases, its errors, and the audit's leakage check."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from medlens.config import ClinicalSection
from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.audit_clinical import audit_clinical, describe_column, rank_auc, separation_auc
from medlens.data.clinical import (
    ClinicalEncoder,
    absent_vector,
    feature_count,
    parse_categories,
    parse_units,
)
from medlens.errors import ConfigError, DatasetError
from medlens.types import Case

DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets")

SECTION = ClinicalSection(numeric=("Age", "eTIV"), units=("Age=years",), categorical=("Sex=F|M", "SES=1|2|3"))


def case(case_id: str, **clinical) -> Case:
    return Case(case_id, (Path(f"{case_id}.png"),), label=0, clinical={k: str(v) for k, v in clinical.items()})


def training_cases() -> list[Case]:
    return [case("a", Age=60, eTIV=1400, Sex="F", SES=1), case("b", Age=70, eTIV="", Sex="M", SES=2),
            case("c", Age=80, eTIV=1500, Sex="NA", SES="")]


# --- the plan's clinical section ---------------------------------------------------------------------------------

def test_categories_and_units_are_parsed_in_the_plans_order():
    assert parse_categories(SECTION) == {"Sex": ("F", "M"), "SES": ("1", "2", "3")}
    assert parse_units(SECTION) == {"Age": "years"}
    assert feature_count(SECTION) == 2 + 2 + 3 + 4


@pytest.mark.parametrize("entry, message", [
    ("Sex", "expected COLUMN=CATEGORY"), ("Sex=", "expected COLUMN=CATEGORY"), ("=F|M", "expected COLUMN=CATEGORY"),
    ("Sex=F||M", "distinct and non-empty"), ("Sex=F|F", "distinct and non-empty"),
    ("Age=1|2", "also in clinical.numeric")])
def test_a_malformed_categorical_entry_is_refused(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_categories(ClinicalSection(numeric=("Age",), categorical=(entry,)))


def test_units_for_a_column_that_is_not_numeric_are_refused():
    with pytest.raises(ConfigError, match="'Sex' is not in clinical.numeric"):
        parse_units(ClinicalSection(numeric=("Age",), units=("Sex=none",)))


def test_the_absent_vector_follows_from_the_plan_alone():
    expected = [0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 1]  # Age, eTIV: z 0 + flag; Sex: F M flag; SES: 1 2 3 flag
    np.testing.assert_array_equal(absent_vector(SECTION), np.array(expected, dtype=np.float32))
    assert absent_vector(ClinicalSection()).shape == (0,)


# --- the encoder -------------------------------------------------------------------------------------------------

def test_fit_standardises_with_training_statistics_and_flags_missing_values():
    encoder = ClinicalEncoder.fit(SECTION, training_cases())

    assert encoder.feature_names() == ["Age", "Age missing", "eTIV", "eTIV missing", "Sex=F", "Sex=M", "Sex missing",
                                       "SES=1", "SES=2", "SES=3", "SES missing"]
    assert encoder.means == {"Age": 70.0, "eTIV": 1450.0}
    assert encoder.stds["Age"] == pytest.approx(np.std([60, 70, 80])) and encoder.stds["eTIV"] == 50.0
    encoded = encoder.encode(training_cases())
    assert encoded.dtype == np.float32 and encoded.shape == (3, 11)
    z = 10 / np.std([60, 70, 80])
    np.testing.assert_allclose(encoded, [[-z, 0, -1, 0, 1, 0, 0, 1, 0, 0, 0],
                                         [0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0],
                                         [z, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]], rtol=1e-6)


def test_a_record_with_every_value_missing_encodes_as_the_absent_vector():
    encoder = ClinicalEncoder.fit(SECTION, training_cases())

    np.testing.assert_array_equal(encoder.encode_record({}, "request"), absent_vector(SECTION))
    record = {"Age": None, "eTIV": float("nan"), "Sex": "", "SES": "n/a", "MMSE": 30}
    np.testing.assert_array_equal(encoder.encode_record(record, "request"), absent_vector(SECTION))
    assert encoder.missing(record) == ["Age", "eTIV", "Sex", "SES"]


def test_a_prediction_record_takes_numbers_or_text():
    encoder = ClinicalEncoder.fit(SECTION, training_cases())

    as_text = encoder.encode_record({"Age": "75", "eTIV": "1450", "Sex": "m", "SES": "3"}, "request")
    as_numbers = encoder.encode_record({"Age": 75, "eTIV": 1450.0, "Sex": "M", "SES": 3.0}, "request")

    np.testing.assert_array_equal(as_text, as_numbers)
    assert as_numbers[0] == pytest.approx(5 / np.std([60, 70, 80])) and as_numbers[5] == 1 and as_numbers[9] == 1
    assert encoder.missing({"Age": 75, "eTIV": 1450.0, "Sex": "M", "SES": 3.0}) == []


def test_the_encoder_round_trips_through_json():
    encoder = ClinicalEncoder.fit(SECTION, training_cases())

    again = ClinicalEncoder.from_dict(json.loads(json.dumps(encoder.to_dict())))

    assert again == encoder
    np.testing.assert_array_equal(again.encode(training_cases()), encoder.encode(training_cases()))


def test_a_constant_column_is_encoded_as_zero_not_divided_by_zero():
    cases = [case("a", Age=50), case("b", Age=50)]

    encoded = ClinicalEncoder.fit(ClinicalSection(numeric=("Age",)), cases).encode(cases)

    np.testing.assert_array_equal(encoded, [[0, 0], [0, 0]])


def test_a_malformed_encoder_file_is_refused():
    with pytest.raises(ConfigError, match="clinical.json: not a clinical encoder"):
        ClinicalEncoder.from_dict({"numeric": ["Age"], "means": {}, "stds": {}, "categorical": {}})


# --- bad values --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, advice", [("seventy", "write the number alone"), ("72 kg", "write the number alone"),
                                           ("1,5", r"with a dot \(1.5, not 1,5\)"), ("inf", "write the number alone")])
def test_a_value_that_is_not_a_number_names_the_case_the_column_and_the_value(value, advice):
    cases = training_cases() + [case("d", Age=value, eTIV=1, Sex="F", SES=1)]

    with pytest.raises(DatasetError, match=rf"case d: clinical column 'Age' holds '{value}', which is not a number.*"
                                           rf"{advice}"):
        ClinicalEncoder.fit(SECTION, cases)


def test_a_category_unseen_in_training_is_refused_listing_the_known_ones():
    encoder = ClinicalEncoder.fit(SECTION, training_cases())

    with pytest.raises(DatasetError, match=r"request 7: clinical column 'Sex' holds 'X', a category the model was not "
                                           r"trained with; known categories: F, M"):
        encoder.encode_record({"Sex": "X"}, "request 7")
    with pytest.raises(DatasetError, match="case e: clinical column 'SES' holds '4'"):
        encoder.encode([case("e", Age=1, eTIV=1, Sex="F", SES=4)])


def test_a_column_the_plan_names_that_the_manifest_lacks_is_refused():
    cases = [Case("a", (Path("a.png"),), clinical={"Age": "60", "Sex": "F"})]

    with pytest.raises(DatasetError, match=r"case a: the plan's clinical column 'eTIV' is not in the manifest \(its "
                                           r"other columns: Age, Sex\)"):
        ClinicalEncoder.fit(ClinicalSection(numeric=("Age", "eTIV")), cases)


def test_a_column_without_any_training_value_is_refused_by_name():
    cases = [case("a", Age=60, eTIV=""), case("b", Age=61, eTIV="NA")]

    with pytest.raises(DatasetError, match="clinical column 'eTIV' has no value in any of the 2 training case"):
        ClinicalEncoder.fit(ClinicalSection(numeric=("Age", "eTIV")), cases)


# --- the audit: kinds, separation AUC, leakage -------------------------------------------------------------------

def test_rank_auc_counts_ties_as_half():
    positive = np.array([False, False, True, True])

    assert rank_auc(np.array([1.0, 2.0, 3.0, 4.0]), positive) == 1.0
    assert rank_auc(np.array([1.0, 3.0, 2.0, 4.0]), positive) == 0.75
    assert rank_auc(np.array([1.0, 1.0, 1.0, 1.0]), positive) == 0.5


def test_separation_auc_folds_a_reversed_column_and_averages_classes_one_vs_rest():
    labels = np.array([0, 0, 1, 1])

    assert separation_auc(np.array([4.0, 3.0, 2.0, 1.0]), labels, numeric=True) == 1.0
    three = np.array([0, 0, 1, 1, 2, 2])
    # one-vs-rest: class 0 separates fully (1.0), class 1 (middle values) 0.5, class 2 fully: mean 0.833
    assert separation_auc(np.arange(6.0), three, numeric=True) == pytest.approx((1 + 0.5 + 1) / 3)
    categories = np.array(["a", "a", "b", "b"], dtype=object)
    assert separation_auc(categories, labels, numeric=False) == 1.0
    assert separation_auc(np.array([1.0, 2.0]), np.array([1, 1]), numeric=True) is None


def test_column_kinds_numeric_categorical_identifier_empty():
    labels = np.array([0, 1, 0, 1, 0, 1])

    assert describe_column(["1", "2.5", "", "NA", "-3", "1e3"], labels)["kind"] == "numeric"
    assert describe_column(["F", "M", "F", "M", "F", ""], labels)["kind"] == "categorical"
    ids = describe_column([f"OAS1_{i:04d}" for i in range(6)], labels)
    assert ids["kind"] == "identifier" and ids["auc"] is None and not ids["usable"]
    assert describe_column(["", "NA", "", "", "", ""], labels)["kind"] == "empty"
    mixed = describe_column(["1.5", "1,5", "2", "2", "3", ""], labels)  # a decimal comma: not all numbers
    assert mixed["kind"] == "categorical" and mixed["distinct"] == 4 and mixed["missing"] == 1


def test_numbers_on_two_scales_are_reported():
    labels = np.zeros(5, dtype=np.int64)

    entry = describe_column(["0.78", "0.74", "823", "807", "813"], labels)

    assert entry["scales"] == {"low": [0.74, 0.78, 2], "high": [807.0, 823.0, 3]}
    assert "scales" not in describe_column(["60", "75", "96", "1.5"], labels)  # nothing wider than x100 apart


def test_two_scales_a_power_of_ten_apart_get_a_rescale_rule_and_others_do_not():
    from medlens.data.audit_clinical import scale_rule

    labels = np.zeros(5, dtype=np.int64)
    scales = describe_column(["0.78", "0.74", "823", "807", "813"], labels)["scales"]
    assert scale_rule("nWBV", scales) == "nWBV<25.1*1000"  # the 2 rarer values multiplied, the limit in the gap
    assert scale_rule("g", {"low": [2.0, 3.0, 9], "high": [2000.0, 3100.0, 2]}) == "g>77.5*0.001"
    assert scale_rule("x", {"low": [1.0, 2.0, 3], "high": [500.0, 600.0, 3]}) is None  # x360: no lost decimal


def test_a_rescale_rule_applies_in_training_and_at_prediction_and_round_trips():
    section = ClinicalSection(numeric=("nWBV",), rescale=("nWBV<24.3*1000",))
    cases = [case(str(i), nWBV=v) for i, v in enumerate(["0.78", "0.74", "823", "807", "813"])]
    encoder = ClinicalEncoder.fit(section, cases)
    assert encoder.means["nWBV"] == pytest.approx(np.mean([780, 740, 823, 807, 813]))
    assert encoder.encode_record({"nWBV": 0.78}, "x")[0] == pytest.approx(encoder.encode_record({"nWBV": 780}, "x")[0])
    again = ClinicalEncoder.from_dict(json.loads(json.dumps(encoder.to_dict())))
    assert again.rescale == {"nWBV": ("<", 24.3, 1000.0)}
    for entry, message in [("nWBV<24.3", "expected COLUMN<LIMIT"), ("nWBV<0*1000", "positive numbers"),
                           ("Age<3*10", "must be a clinical.numeric column")]:
        with pytest.raises(ConfigError, match=message):
            ClinicalEncoder.fit(ClinicalSection(numeric=("nWBV",), rescale=(entry,)), cases)


def leaky_manifest(tmp_path, make, n: int = 40) -> Path:
    """``n`` PNG cases, label alternating: ``copy`` follows the label, ``noise`` and ``Sex`` not; ``code`` is an id."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        make.png(tmp_path / f"img/{i}.png", make.pixels(i, (6, 6)))
        label = i % 2
        rows.append({"image": f"img/{i}.png", "label": "ab"[label], "copy": f"{label * 10 + rng.normal():.3f}",
                     "noise": f"{rng.normal():.3f}", "Sex": "FM"[int(rng.integers(2))], "code": f"X{i:03d}"})
    return make.csv(tmp_path / "cases.csv", rows)


def test_the_audit_warns_of_a_label_copy_column_and_not_of_a_random_one(tmp_path, make):
    card = inspect_dataset(open_dataset(leaky_manifest(tmp_path, make)))

    clinical = card["clinical"]
    assert list(clinical) == ["copy", "noise", "Sex", "code"]
    assert clinical["copy"]["kind"] == "numeric" and clinical["copy"]["auc"] == 1.0 and clinical["copy"]["leakage"]
    assert clinical["noise"]["auc"] < 0.75 and not clinical["noise"]["leakage"] and clinical["noise"]["usable"]
    assert clinical["Sex"]["kind"] == "categorical" and clinical["Sex"]["categories"].keys() == {"F", "M"}
    assert clinical["Sex"]["auc"] < 0.75
    assert clinical["code"]["kind"] == "identifier" and not clinical["code"]["usable"]
    [leak] = [f for f in card["findings"] if f["code"] == "clinical.leakage"]
    assert leak["severity"] == "warning" and "'copy' alone separates the classes with AUC 1.00" in leak["message"]
    assert "MMSE for dementia" in leak["message"] and "leaves 'copy' out" in leak["message"]


def test_the_audit_writes_no_clinical_part_without_clinical_columns(tmp_path, make):
    for i in range(4):
        make.png(tmp_path / f"{i}.png", make.pixels(i))
    path = make.csv(tmp_path / "m.csv", [{"image": f"{i}.png", "label": "ab"[i % 2]} for i in range(4)])

    card = inspect_dataset(open_dataset(path))

    assert "clinical" not in card and not [f for f in card["findings"] if f["code"].startswith("clinical")]


# --- real data ---------------------------------------------------------------------------------------------------

OASIS_INPUTS = ("M/F", "Hand", "Age", "Educ", "SES", "MMSE", "eTIV", "nWBV", "ASF")


def oasis_manifest(tmp_path: Path, root: Path) -> Path:
    """OASIS-1's three views and clinical table as one manifest; label = CDR > 0 (CDR itself left out)."""
    with open(root / "oasis_cross-sectional.csv", newline="") as f:
        table = list(csv.DictReader(f))
    views = ("axial", "coronal", "sagittal")
    rows = [{"subject": r["ID"], **{f"image:{v}": f"{v}/{r['ID']}_{v[0]}.jpg" for v in views},
             "label": "dementia" if float(r["CDR"]) > 0 else "normal", **{c: r[c] for c in OASIS_INPUTS}}
            for r in table]
    path = tmp_path / "oasis.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.realdata
def test_oasis_audit_flags_mmse_and_reads_the_demographics(tmp_path):
    root = DATA / "multimodal" / "oasis1_three_views"
    if not root.exists():
        pytest.skip(f"real data not available: {root}")

    dataset = open_dataset(oasis_manifest(tmp_path, root), image_root=root)
    card: dict = {}
    findings = audit_clinical(dataset, card)

    assert len(dataset) == 196 and dataset.meta["views"] == ["axial", "coronal", "sagittal"]
    assert dataset.cases[0].case_id == "OAS1_0072_MR1" and len(dataset.cases[0].images) == 3
    assert list(card["clinical"]) == list(OASIS_INPUTS)
    mmse = card["clinical"]["MMSE"]
    assert mmse["kind"] == "numeric" and mmse["auc"] == pytest.approx(0.87, abs=0.01) and mmse["leakage"]
    assert [f.code for f in findings if f.code == "clinical.leakage"] == ["clinical.leakage"]
    assert "'MMSE'" in next(f.message for f in findings if f.code == "clinical.leakage")
    for column in ("Age", "Educ", "SES", "eTIV", "nWBV", "ASF"):
        assert card["clinical"][column]["kind"] == "numeric" and card["clinical"][column]["usable"], column
    assert card["clinical"]["M/F"]["categories"] == {"F": 130, "M": 66}
    assert card["clinical"]["SES"]["missing"] == 18
    assert card["clinical"]["Age"]["numeric"]["min"] == 60 and card["clinical"]["Age"]["numeric"]["max"] == 96
    assert not card["clinical"]["Hand"]["usable"]  # every subject right-handed: one value
    # nWBV and ASF hold some rows on another scale (0.78 beside 780): warned, as a lost decimal point
    assert sorted(f.message.split("'")[1] for f in findings if f.code == "clinical.scale") == ["ASF", "nWBV"]
    from medlens.tasks.classification.plan_inputs import plan_clinical

    reasons = {}
    planned = plan_clinical(card, reasons)  # the rarer scale brought onto the other, so z-scores mean something
    assert sorted(rule.split("<")[0] for rule in planned.rescale) == ["ASF", "nWBV"] and "clinical.rescale" in reasons
    values = ClinicalEncoder.fit(planned, dataset.cases)
    assert values.means["nWBV"] > 100 and values.stds["nWBV"] < 100  # one scale: no longer a 0.8-vs-800 mixture
    encoder = ClinicalEncoder.fit(ClinicalSection(numeric=("Age", "Educ", "SES", "eTIV", "nWBV", "ASF"),
                                                  categorical=("M/F=F|M",)), dataset.cases)
    encoded = encoder.encode(dataset.cases)
    assert encoded.shape == (196, 15) and int(encoded[:, 5].sum()) == 18  # SES missing flags
    np.testing.assert_allclose(encoded[:, [0, 2, 4, 6, 8, 10]].mean(axis=0), 0, atol=1e-5)
