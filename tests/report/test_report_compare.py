"""``medlens report A B``: runs side by side; runs of different tasks refused."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from types import SimpleNamespace

from medlens.cli import main


def medlens(*argv) -> SimpleNamespace:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return SimpleNamespace(rc=rc, out=out.getvalue(), err=err.getvalue())


def copy_run(source, target, *, auc: float | None = None, evaluated: bool = True):
    """A copy of a run folder (without its checkpoints), its AUC changed or its metrics.json removed."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "report_files"))
    if not evaluated:
        (target / "metrics.json").unlink()
    elif auc is not None:
        doc = json.loads((target / "metrics.json").read_text())
        doc["metrics"]["auc"] = {"value": auc, "ci_low": auc - 0.1, "ci_high": auc + 0.05}
        (target / "metrics.json").write_text(json.dumps(doc))
    return target


def test_two_runs_side_by_side_in_one_self_contained_page(cls_run, tmp_path, pages):
    other = copy_run(cls_run.root, tmp_path / "other", auc=0.1234)
    fresh = copy_run(cls_run.root, tmp_path / "fresh", evaluated=False)
    out = tmp_path / "compare.html"
    result = medlens("report", cls_run.root, other, fresh, "--out", out)
    assert result.rc == 0, result.err
    assert f"comparison written to {out}" in result.out
    page = pages.parse(out.read_text())
    rows = {r[0]: r for r in page.tables["compare"][1:]}
    auc = json.loads((cls_run.root / "metrics.json").read_text())["metrics"]["auc"]
    assert rows[str(cls_run.root)][6] == f"{auc['value']:.4f} [{auc['ci_low']:.4f}, {auc['ci_high']:.4f}]"
    assert rows[str(other)][6] == "0.1234 [0.0234, 0.1734]"
    assert rows[str(fresh)][4] == "not evaluated yet"
    assert len(page.images) == 2  # loss and val_auc, every run overlaid
    assert all(pages.decode_png(src) for src in page.images) and pages.external(out.read_text()) == []


def test_runs_of_different_tasks_are_refused(cls_run, seg_run, tmp_path):
    result = medlens("report", cls_run.root, seg_run.root, "--out", tmp_path / "mixed.html")
    assert result.rc == 2
    assert "cannot compare runs of different tasks" in result.err and "is segmentation" in result.err
    assert "is classification" in result.err and not (tmp_path / "mixed.html").exists()


def test_a_folder_that_is_not_a_run_is_refused(cls_run, tmp_path):
    result = medlens("report", cls_run.root, tmp_path, "--out", tmp_path / "x.html")
    assert result.rc == 2 and "not a medlens run folder" in result.err
