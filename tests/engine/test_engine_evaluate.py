"""``medlens evaluate --split val`` writes its own file: the test split's metrics.json and the report stay."""

from __future__ import annotations

import json
import shutil


def test_evaluating_validation_keeps_the_test_metrics_and_the_report(cli, cls_run, tmp_path):
    run = shutil.copytree(cls_run.root, tmp_path / "run")
    test_doc, report = (run / "metrics.json").read_text(), (run / "report.html").read_text()

    r = cli("evaluate", run, "--split", "val", "--bootstrap", "20")

    assert r.rc == 0, r.out + r.err
    assert (run / "metrics.json").read_text() == test_doc and (run / "report.html").read_text() == report
    val = json.loads((run / "metrics_val.json").read_text())
    assert val != json.loads(test_doc) and "metrics_val.json" in r.out and "keep the test split" in r.out
