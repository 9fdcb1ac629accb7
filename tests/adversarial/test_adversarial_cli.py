"""The adversarial corpus against the CLI: ``medlens info``, ``medlens predict`` and ``medlens inspect``.

Every case is run in a forked child (:mod:`adversarial.forked`). An answer is clean when it exits 2
with one line ``medlens COMMAND: error: ...`` on stderr (``predict`` may instead exit 1 with a
``FILE: error: ...`` line per input), or 0 for a file that is valid; when it prints no traceback and
no marker string; when it takes at most 5 s and at most 1 GB over the starting memory. The test
collects every problem and fails with one table, grouped by the module at fault.

The fast test (in ``make test``) runs the first case of each class for each model size; the whole corpus
is marked ``slow``.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from adversarial.corpus import Case, fast_subset
from adversarial.forked import ForkServer, Ran
from adversarial.judge import (
    LIMIT_MB,
    LIMIT_S,
    Problem,
    fault_site,
    hide_markers,
    last_exception,
    likely_site,
    markers_in,
    summary_by_class,
    table,
)

KILL_AFTER_S = LIMIT_S + 3  # a case still running then is killed (its stack was dumped at LIMIT_S)
HEAVY_KILL_AFTER_S = 30.0  # a valid case whose work fits the CLI's budget (Case.cli_limits False) gets longer
ALLOWED_RC = {("info", "error"): {2}, ("info", "ok"): {0}, ("info", "either"): {0, 2},
              ("predict", "error"): {1, 2}, ("predict", "ok"): {0}, ("predict", "either"): {0, 1, 2}}
INSPECT_FORMATS = ("png", "jpeg", "dicom", "npy")  # what a class-folder dataset of 2D images may hold


def test_a_sample_of_each_corpus_class_gets_clean_cli_answers(corpus, cls_run, seg_run, demo_dir, tmp_path):
    sample = fast_subset(corpus, per_class=1, where=lambda case: case.cli_limits and case.applies_to("info"))
    problems = cli_problems(sample, cls_run.root, seg_run.root, tmp_path)
    problems += inspect_problems(sample, demo_dir, tmp_path, batch=len(sample))
    assert not problems, report(problems, sample, "medlens CLI, corpus sample")


@pytest.mark.slow
def test_every_corpus_case_gets_clean_cli_answers(corpus, cls_run, seg_run, demo_dir, tmp_path):
    problems = cli_problems(corpus, cls_run.root, seg_run.root, tmp_path)
    problems += inspect_problems(corpus, demo_dir, tmp_path, batch=25)
    assert not problems, report(problems, corpus, "medlens CLI, whole corpus")


def report(problems: list[Problem], cases: list[Case], title: str) -> str:
    text = table(problems, title) + "\n\nfailing cases per class: " + summary_by_class(problems, cases)
    print(text)
    return text


# ---- info and predict ------------------------------------------------------------------------------------------

def cli_problems(cases: list[Case], cls_root: Path, seg_root: Path, tmp_path: Path) -> list[Problem]:
    with ForkServer() as server:
        return [p for case in cases for p in _case_problems(server, case, cls_root, seg_root, tmp_path)]


def _case_problems(server: ForkServer, case: Case, cls_root: Path, seg_root: Path, tmp_path: Path) -> list[Problem]:
    """``medlens info`` and ``medlens predict`` (2D: the classifier, 3D: the segmenter) on one case."""
    problems = []
    folder = tmp_path / "cases" / case.name
    path = case.write(folder / "input")
    for target in ("info", "predict"):
        if not case.applies_to(target):
            continue
        work = folder / target
        if target == "info":
            argv = ["info", str(path)]
        else:
            run = cls_root if case.dims == 2 else seg_root
            argv = ["predict", str(run), str(path)] + (["--out", str(work / "masks")] if case.dims == 3 else [])
        kill_s = KILL_AFTER_S if case.cli_limits else HEAVY_KILL_AFTER_S
        problems += judge_cli(case, target, server.run(argv, work, LIMIT_S, kill_s), folder)
    shutil.rmtree(folder, ignore_errors=True)
    return problems


def judge_cli(case: Case, target: str, ran: Ran, folder: Path) -> list[Problem]:
    """Every way ``ran`` falls short of a clean answer to ``case`` (whose input and outputs are under ``folder``).

    Paths under ``folder`` are the user's own names (a series folder may be called like the marker) and are
    blanked before the marker check. A case with ``cli_limits`` False may take longer and use more memory; one
    still running after ``HEAVY_KILL_AFTER_S`` is not judged.
    """
    if not case.cli_limits and ran.timed_out:
        return []
    expect = case.expectation(target)
    site = fault_site(ran.err + "\n" + ran.stack)
    guess = site if site != "?" else likely_site(case, target)
    found = []

    def problem(what: str, where: str = guess) -> None:
        found.append(Problem(target, case.kind, case.name, case.format, what, where))

    if ran.timed_out:
        problem(f"still running after {KILL_AFTER_S:.0f} s (killed)", site)
    elif ran.wall_s > LIMIT_S and case.cli_limits:
        problem(f"took {ran.wall_s:.1f} s")
    if ran.grew_mb > LIMIT_MB and case.cli_limits:
        problem(f"peak memory +{ran.grew_mb:.0f} MB")
    if "Traceback (most recent call last)" in ran.err:
        problem(f"traceback: {last_exception(ran.err)}", site)
    elif not ran.timed_out:
        shown = replace(ran, out=_blank_paths(ran.out, folder), err=_blank_paths(ran.err, folder))
        found += [Problem(target, case.kind, case.name, case.format, hide_markers(what), guess)
                  for what in _status_problems(target, expect, shown)]
    text = _blank_paths(ran.out + ran.err, folder)
    if markers_in(text):
        problem(f"marker {markers_in(text)[0]} in the output")
    return found


def _status_problems(target: str, expect: str, ran: Ran) -> list[str]:
    """The exit status and the message lines against what ``expect`` allows."""
    problems = []
    if ran.rc not in ALLOWED_RC[(target, expect)]:
        said = _first_line(ran.err) or _first_line(ran.out)
        problems.append(f"exit {ran.rc}, expected {expect}" + (f" ({said[:90]})" if said and ran.rc else ""))
    stderr = [line for line in ran.err.splitlines() if line.strip()]
    if ran.rc == 2:
        if not stderr or not stderr[-1].startswith(f"medlens {target}: error: "):
            problems.append(f"exit 2 without a 'medlens {target}: error:' line")
        elif len(stderr) > 1:
            problems.append(f"{len(stderr)} stderr lines, expected one: {stderr[0][:90]}")
    elif stderr:
        problems.append(f"stderr besides the answer: {stderr[0][:90]}")
    if target == "predict" and ran.rc == 1 and ": error: " not in ran.out:
        problems.append("exit 1 without a 'FILE: error:' line")
    return problems


def _blank_paths(text: str, folder: Path) -> str:
    """``text`` with every path under ``folder`` (up to a space, a colon or a quote) replaced by ``<path>``."""
    return re.sub(re.escape(str(folder)) + r"[^\s:'\"]*", "<path>", text)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ---- inspect: the audit lists a bad file and goes on ------------------------------------------------------------

def inspect_problems(cases: list[Case], demo_dir: Path, tmp_path: Path, batch: int) -> list[Problem]:
    """``medlens inspect`` on class folders of valid demo images mixed with corpus files, ``batch`` at a time."""
    chosen = [c for c in cases if c.dims == 2 and c.format in INSPECT_FORMATS and c.applies_to("info")]
    problems = []
    with ForkServer() as server:
        for start in range(0, len(chosen), batch):
            problems += _inspect_batch(server, chosen[start:start + batch], demo_dir, tmp_path / f"inspect_{start}")
    return problems


def _inspect_batch(server: ForkServer, group: list[Case], demo_dir: Path, root: Path) -> list[Problem]:
    root = _dataset_with(group, demo_dir, root)
    limit = LIMIT_S + 0.25 * len(group)
    ran = server.run(["inspect", str(root / "data"), "--out", str(root / "card.json")], root / "work", limit,
                     limit + 3)
    return judge_inspect(group, ran, root)


def _dataset_with(group: list[Case], demo_dir: Path, root: Path) -> Path:
    for label in ("normal", "lesion"):
        for source in sorted((demo_dir / "classification" / label).glob("*.png"))[:4]:
            (root / "data" / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / "data" / label / source.name)
    for i, case in enumerate(group):
        folder = root / "data" / ("normal", "lesion")[i % 2]
        (folder / f"{case.name}{Path(case.file_name).suffix}").write_bytes(case.data)
    return root


def judge_inspect(group: list[Case], ran: Ran, root: Path) -> list[Problem]:
    """The audit finishes (exit 0), in time, and lists every case that must be refused as unreadable."""
    names = ", ".join(c.name for c in group[:3]) + (" ..." if len(group) > 3 else "")
    site = fault_site(ran.err + "\n" + ran.stack)
    found = []

    def problem(what: str, case: Case | None = None, where: str = site) -> None:
        found.append(Problem("inspect", case.kind if case else "batch", case.name if case else names,
                             case.format if case else "-", what, where if where != "?" else
                             "medlens/data/audit.py?"))

    limit = LIMIT_S + 0.25 * len(group)
    if ran.timed_out or ran.wall_s > limit:
        problem(f"took {ran.wall_s:.1f} s for {len(group)} corpus files (limit {limit:.1f} s)")
    if ran.grew_mb > LIMIT_MB:
        problem(f"peak memory +{ran.grew_mb:.0f} MB")
    if "Traceback (most recent call last)" in ran.err:
        problem(f"traceback: {last_exception(ran.err)}")
    elif ran.rc != 0 and not ran.timed_out:
        problem(f"exit {ran.rc}: {_first_line(ran.err)[:100]}")
    text = _blank_paths(ran.out + ran.err, root)
    if markers_in(text):
        problem(f"marker {markers_in(text)[0]} in the output")
    card_path = root / "card.json"
    if ran.rc == 0 and card_path.exists():
        unreadable = {Path(u["path"]).name for u in json.loads(card_path.read_text()).get("unreadable", [])}
        for case in group:
            if case.expectation("inspect") == "error" and f"{case.name}{Path(case.file_name).suffix}" not in unreadable:
                problem("not listed as unreadable", case, likely_site(case, "inspect"))
    return found
