"""What the corpus tests share: how an answer is judged, where a failure sits, and the table they print.

A failing corpus test does not stop at the first bad case: it collects every :class:`Problem` and
prints them as one table, grouped by the module at fault (the innermost ``medlens`` frame of a
traceback or of the stack dumped when a case ran too long), so each can be routed to its owner.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from adversarial.samples import MARKERS

LIMIT_S = 5.0  # the slowest acceptable answer to one case
LIMIT_MB = 1024.0  # the most memory one case may add (peak resident size over the starting one)
_FRAME = re.compile(r'File "(?:[^"]*/)?(medlens/[^"]+\.py)", line (\d+)(?:, in (\w+))?')
_FAULTHANDLER_FRAME = re.compile(r'File "(?:[^"]*/)?(medlens/[^"]+\.py)", line (\d+) in (\w+)')


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one answer.

    Attributes:
        target: ``info``, ``predict``, ``inspect``, ``service`` (``+heatmap`` / ``+mask`` when the option was on).
        kind, case, format: the case's class, name and format.
        what: what went wrong, short.
        where: the module at fault (``medlens/io/dicom.py:read_header``) or ``?`` when nothing names it.
    """

    target: str
    kind: str
    case: str
    format: str
    what: str
    where: str = "?"


def fault_site(text: str) -> str:
    """The innermost ``medlens`` frame of the last traceback, else of a faulthandler dump (``?`` when none)."""
    if "Traceback (most recent call last)" in text:
        frames = _FRAME.findall(text.split("Traceback (most recent call last)")[-1])
        if frames:
            module, _line, function = frames[-1]  # a traceback lists the innermost frame last
            return f"{module}:{function}"
    dumped = _FAULTHANDLER_FRAME.findall(text)
    if dumped:
        module, _line, function = dumped[0]  # a dump lists the innermost frame first
        return f"{module}:{function}"
    return "?"


READERS = {"dicom": "medlens/io/dicom.py", "dicom_zip": "medlens/io/dicom.py", "nifti": "medlens/io/itk.py",
           "nifti_gz": "medlens/io/itk.py", "mha": "medlens/io/itk.py", "nrrd": "medlens/io/itk.py",
           "png": "medlens/io/raster.py", "jpeg": "medlens/io/raster.py", "npy": "medlens/io/arrays.py",
           "npz": "medlens/io/arrays.py", "other": "medlens/io/formats.py"}


def likely_site(case, target: str) -> str:
    """Where a failure without a traceback most likely sits (ends with ``?``: a guess from the case)."""
    if case.kind == "spacing" and case.dims == 3:
        return "resampling to the plan's spacing (medlens/transforms)?"
    if case.kind == "spacing" and "heatmap" in target:
        return "medlens/explain/overlay.py?"
    if target.startswith("service") and case.kind in ("zip", "upload") and case.format == "dicom_zip":
        return "medlens/deploy/uploads.py?"
    return READERS[case.format] + "?"


def last_exception(text: str) -> str:
    """The last line of a traceback (``ValueError: ...``), cut short, markers hidden."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return hide_markers(lines[-1].strip()[:140]) if lines else ""


def markers_in(text: str) -> list[str]:
    return [m for m in MARKERS if m in text]


def hide_markers(text: str) -> str:
    for marker in MARKERS:
        text = text.replace(marker, "<marker>")
    return text


def table(problems: list[Problem], title: str) -> str:
    """The problems grouped by module at fault, then by class: what the integrator routes."""
    by_site: dict[str, list[Problem]] = defaultdict(list)
    for problem in problems:
        by_site[problem.where].append(problem)
    lines = [f"{title}: {len(problems)} problem(s) in {len({(p.target, p.case) for p in problems})} answer(s)"]
    for site in sorted(by_site, key=lambda s: (-len(by_site[s]), s)):
        lines.append(f"\n== {site} ({len(by_site[site])})")
        lines.append(f"   {'target':<16} {'class':<10} {'case':<40} {'format':<9} what")
        for p in sorted(by_site[site], key=lambda p: (p.kind, p.case, p.target)):
            lines.append(f"   {p.target:<16} {p.kind:<10} {p.case[:40]:<40} {p.format:<9} {p.what}")
    return "\n".join(lines)


def summary_by_class(problems: list[Problem], cases: list) -> str:
    """``class: failing cases / cases`` for every class."""
    failing = defaultdict(set)
    for p in problems:
        failing[p.kind].add(p.case)
    total = defaultdict(int)
    for case in cases:
        total[case.kind] += 1
    return "  ".join(f"{kind} {len(failing[kind])}/{n}" for kind, n in total.items())
