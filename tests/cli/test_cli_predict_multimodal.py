"""``medlens predict`` for a model of several inputs (issue 16): ``--input NAME=FILE``, ``--clinical JSON_OR_FILE``
and a CSV of cases; each printed line and ``--out`` say what a case was missing.

One tiny fused run per module (two 16x16 PNG views, Age and M/F; see tests/deploy/test_deploy_multimodal.py).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cases(fused_cases) -> Path:
    return fused_cases


def view(cases: Path, name: str, i: int) -> Path:
    return cases.parent / name / f"s{i:02d}.png"


def test_input_and_clinical_predict_one_case_and_out_gains_the_missing_columns(cli, fused_run, cases, tmp_path):
    from medlens.deploy import Predictor

    out = tmp_path / "predictions.csv"
    r = cli("predict", fused_run, "--input", f"axial={view(cases, 'axial', 1)}", "--input",
            f"coronal={view(cases, 'coronal', 1)}", "--clinical", '{"Age": 71, "M/F": "F"}', "--out", out)
    assert r.rc == 0, r.out + r.err
    expected = Predictor.from_run(fused_run).predict({"axial": view(cases, "axial", 1),
                                                      "coronal": view(cases, "coronal", 1)},
                                                     clinical={"Age": 71, "M/F": "F"})
    [line] = [x for x in r.out.splitlines() if "missing:" in x]
    assert line.startswith(f"axial={view(cases, 'axial', 1)} coronal=") and line.endswith("missing: nothing")
    assert f"{expected['label']}  normal={expected['probabilities']['normal']:.3f}" in line
    [row] = list(csv.DictReader(out.open()))
    assert row["missing_views"] == "" and row["missing_clinical"] == "" and row["error"] == ""
    assert float(row["p_dementia"]) == pytest.approx(expected["probabilities"]["dementia"])


def test_a_missing_view_and_clinical_values_from_a_file_are_printed(cli, fused_run, cases, tmp_path):
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"Age": None, "M/F": "M"}))
    r = cli("predict", fused_run, "--input", f"coronal={view(cases, 'coronal', 2)}", "--clinical", values)
    assert r.rc == 0, r.out + r.err
    assert r.out.strip().endswith("missing: view axial, Age")


def test_a_csv_of_cases_predicts_one_case_per_row_with_paths_relative_to_it(cli, fused_run, cases, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    rows = [{"subject": "n1", "image:axial": str(view(cases, "axial", 3)), "image:coronal": "", "Age": "70",
             "M/F": "F", "label": ""},
            {"subject": "n2", "image:axial": "", "image:coronal": "../c.png", "Age": "", "M/F": "", "label": ""},
            {"subject": "n3", "image:axial": "", "image:coronal": "", "Age": "70", "M/F": "F", "label": ""},
            {"subject": "n4", "image:axial": str(view(cases, "axial", 4)), "image:coronal": "", "Age": "old",
             "M/F": "F", "label": ""}]
    (tmp_path / "c.png").write_bytes(view(cases, "coronal", 3).read_bytes())
    with open(folder / "new.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "predictions.json"
    r = cli("predict", fused_run, folder / "new.csv", "--out", out)
    assert r.rc == 1, r.out + r.err  # rows 3 and 4 cannot be predicted
    lines = r.out.splitlines()
    assert lines[0].startswith("new.csv line 2: ") and lines[0].endswith("missing: view coronal")
    assert lines[1].startswith("new.csv line 3: ") and lines[1].endswith("missing: view axial, Age, M/F")
    assert lines[2] == "new.csv line 4: error: no view given; this model takes axial, coronal (pass at least one)"
    assert lines[3].startswith("new.csv line 5: error: case: clinical values: clinical column 'Age' holds 'old'")
    doc = json.loads(out.read_text())
    assert doc[1]["missing"] == {"views": ["axial"], "clinical": ["Age", "M/F"]}
    assert doc[1]["inputs"] == {"views": ["coronal"], "clinical": {}}


def test_inputs_that_do_not_fit_say_what_the_model_takes(cli, fused_run, cases):
    r = cli("predict", fused_run, "--input", f"sagittal={view(cases, 'axial', 1)}")
    assert r.rc == 1 and "error: unknown view 'sagittal'; this model takes the views axial, coronal" in r.out
    r = cli("predict", fused_run, view(cases, "axial", 1))
    assert r.rc == 1 and "this model takes 2 views (axial, coronal), got one input" in r.out
    r = cli("predict", fused_run, "--input", f"axial={view(cases, 'axial', 1)}", "--clinical", '{"Age": 71')
    assert r.rc != 0 and "--clinical: not valid JSON" in r.err
    r = cli("predict", fused_run, "--input", "axial")
    assert r.rc != 0 and "--input 'axial': expected NAME=FILE" in r.err
    r = cli("predict", fused_run, "--input", f"axial={view(cases, 'axial', 1)}", "--clinical", '{"M/F": "X"}')
    assert r.rc == 1 and "a category the model was not trained with" in r.out
    r = cli("predict", fused_run)
    assert r.rc != 0 and "nothing to predict" in r.err
