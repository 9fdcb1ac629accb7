"""DICOM studies of several series (T1, T2, FLAIR...): rules pick one series per view, read as one image.

A dataset of studies is a CSV manifest with a ``study`` column (one study folder per row) and one rule per view
(``medlens train studies.csv --series-rule t1=T1 --series-rule flair=FLAIR``): :func:`study_views` turns each
row's study into one ``image:NAME`` cell per rule, so the case is a multi-view case like any other (co-registered
series are stacked as channels, :mod:`medlens.data.views`). The rules are kept in the plan
(``dataset.series_rules``) and ``medlens predict RUN STUDY_FOLDER`` applies them to a new study.

A study folder holds one subfolder per series. A rule ``"NAME=REGEX"`` names a view and the series it is:
``REGEX`` is searched, ignoring case, in ``"<Modality> <SeriesDescription>"`` of the series' first readable
header (e.g. ``"MR T1pre_reg"``), so ``t1=T1pre``, ``flair=FLAIR``, ``ct=^CT`` are all rules. Every rule must
match exactly one series.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from medlens.data.dataset import Finding, lies_outside
from medlens.data.views import stack_views
from medlens.errors import ConfigError, DatasetError
from medlens.io import Image, read_image
from medlens.io.formats import is_clutter

HEADER_TRIES = 5  # files tried per series folder before it is taken for something other than DICOM


@dataclass(frozen=True)
class SeriesRule:
    name: str
    pattern: re.Pattern


@dataclass(frozen=True)
class SeriesInfo:
    folder: Path
    label: str  # "<Modality> <SeriesDescription>"


def parse_series_rules(rules) -> list[SeriesRule]:
    """``"NAME=REGEX"`` texts -> rules, in order.

    Raises:
        ConfigError: a rule without ``=``, an empty name, a name given twice, or a regular expression that
            does not compile.
    """
    parsed: list[SeriesRule] = []
    for text in rules:
        name, sep, regex = str(text).partition("=")
        name = name.strip()
        if not sep or not name or not regex.strip():
            raise ConfigError(f"series rule {text!r} is not NAME=REGEX; write e.g. t1=T1pre or flair=FLAIR "
                              "(REGEX is searched in '<Modality> <SeriesDescription>')")
        if any(rule.name == name for rule in parsed):
            raise ConfigError(f"series rules: the view {name!r} has two rules; give each view one rule")
        try:
            pattern = re.compile(regex.strip(), re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"series rule {text!r}: {regex.strip()!r} is not a regular expression "
                              f"({exc}); escape special characters such as + ( [ with a backslash") from None
        parsed.append(SeriesRule(name, pattern))
    if not parsed:
        raise ConfigError("no series rule given; a DICOM study needs one NAME=REGEX rule per view")
    return parsed


def list_series(study_folder: str | os.PathLike) -> list[SeriesInfo]:
    """The study's series: each subfolder with a DICOM header, labelled ``"<Modality> <SeriesDescription>"``.

    Raises:
        FileNotFoundError: no folder at ``study_folder``.
        DatasetError: no subfolder holds a DICOM file.
    """
    study = Path(study_folder)
    if not study.is_dir():
        raise FileNotFoundError(f"no such study folder: {study}")
    series = [SeriesInfo(folder, label) for folder in sorted(p for p in study.iterdir() if p.is_dir())
              if (label := _series_label(folder)) is not None]
    if not series:
        raise DatasetError(f"{study}: no subfolder holds a DICOM series; a study folder holds one folder per series")
    return series


def _series_label(folder: Path) -> str | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in folder.iterdir() if p.is_file() and not is_clutter(p.name))
    for path in files[:HEADER_TRIES]:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality", "SeriesDescription"])
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        return f"{header.get('Modality', '') or ''} {header.get('SeriesDescription', '') or ''}".strip()
    return None


def rule_matches(series: list[SeriesInfo], rules) -> list[tuple[SeriesRule, list[SeriesInfo]]]:
    """Each rule (in order) with the series whose label it matches (one is what :func:`pick_series` needs).

    Raises:
        ConfigError: a malformed rule (see :func:`parse_series_rules`).
    """
    return [(rule, [s for s in series if rule.pattern.search(s.label)]) for rule in parse_series_rules(rules)]


def picked_or_problems(series: list[SeriesInfo], rules) -> tuple[dict[str, Path], list[str]]:
    """``({view: series folder}, [])`` when each rule matches one series, else ``({...}, problems)`` with one
    ``"rule NAME matches no series"`` / ``"rule NAME matches 2 series"`` per rule that does not (no description or
    folder name: the callers add what they may show)."""
    picked, problems = {}, []
    for rule, matches in rule_matches(series, rules):
        if len(matches) == 1:
            picked[rule.name] = matches[0].folder
        else:
            problems.append(f"rule {rule.name} matches {len(matches) or 'no'} series")
    return picked, problems


def pick_series(study_folder: str | os.PathLike, rules) -> dict[str, Path]:
    """The series folder of each rule's view, in rule order.

    Args:
        study_folder: a folder of series folders.
        rules: ``"NAME=REGEX"`` texts.

    Returns:
        ``{name: series folder}``.

    Raises:
        ConfigError: a malformed rule (see :func:`parse_series_rules`).
        DatasetError: a rule that matches no series, or more than one (the message names the study, the rule
            and the series seen).
    """
    series = list_series(study_folder)
    seen = "; ".join(f"{s.folder.name}: {s.label!r}" for s in series)
    picked: dict[str, Path] = {}
    for rule, matches in rule_matches(series, rules):
        if not matches:
            raise DatasetError(f"{study_folder}: series rule {rule.name}={rule.pattern.pattern} matches no series "
                               f"(seen {seen}); rewrite the rule to match one of them")
        if len(matches) > 1:
            both = ", ".join(f"{s.folder.name}: {s.label!r}" for s in matches)
            raise DatasetError(f"{study_folder}: series rule {rule.name}={rule.pattern.pattern} matches "
                               f"{len(matches)} series ({both}); make it match one, e.g. with more of the "
                               "description or ^ and $")
        picked[rule.name] = matches[0].folder
    return picked


def study_from_files(folder: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A study folder (one subfolder per series, as :func:`pick_series` reads) from the DICOM image files anywhere
    under ``folder`` (a zipped study as it was uploaded, in any tree): each is moved into ``out/<series>/`` by its
    SeriesInstanceUID. Files that are not DICOM images stay where they are.

    Returns:
        ``out``.
    """
    import hashlib

    from medlens.io.dicom import scan_folder

    out = Path(out)
    for uid, headers in scan_folder(Path(folder))[0].items():
        series = out / hashlib.sha256(uid.encode()).hexdigest()[:12]
        series.mkdir(parents=True, exist_ok=True)
        for k, header in enumerate(headers):
            Path(header.path).rename(series / f"{k:05d}.dcm")
    return out


def read_study(study_folder: str | os.PathLike, rules) -> Image:
    """The study's series picked by ``rules``, resampled onto the first rule's series' grid, stacked as channels.

    Returns:
        Image ``(sum of the series' channels, X, Y, Z)`` on the first rule's grid; ``meta["views"]`` lists the
        rule names in channel order.

    Raises:
        ConfigError / DatasetError: see :func:`pick_series`; DatasetError also for series that do not overlap
            the first one in space (:func:`medlens.data.views.stack_views`).
        ReadError: a series that cannot be read.
    """
    picked = pick_series(study_folder, rules)
    images = [read_image(folder) for folder in picked.values()]
    stacked = stack_views(images, list(picked), where=str(study_folder))
    stacked.meta["views"] = list(picked)
    return stacked


def study_views(csv_path: Path, rows: list[tuple[int, dict]], column: str, image_root: Path, rules,
                allow_outside_root: bool) -> tuple[list[tuple[int, dict]], list[str], list[Finding]]:
    """A CSV's study column as view columns: each row gains one ``image:NAME`` cell per rule, its series folder.

    Args:
        csv_path: the manifest (for messages).
        rows: ``(CSV line, row dict)`` pairs.
        column: the header of the study column; its cells are study folders relative to ``image_root``.
        rules: ``"NAME=REGEX"`` texts (see :func:`parse_series_rules`).
        allow_outside_root: read studies outside ``image_root``; if not, such a row keeps its study path in every
            view cell, so the manifest's path check refuses it (``path.outside_root``) before any file is read.

    Returns:
        ``(rows, headers, findings)``: the rows whose rules each matched one series (a missing study folder is
        kept, for the path check's ``file.missing``), the new headers ``image:NAME`` in rule order, and a
        ``series.unmatched`` finding for the rows left out (a rule matching no series, or several).

    Raises:
        ConfigError: no rules, or a malformed one.
    """
    if not rules:
        raise ConfigError(f"{csv_path}: column {column!r} names DICOM study folders, and no series rule says which "
                          f"series to read; give one --series-rule NAME=REGEX per series (REGEX is searched in "
                          f"'<Modality> <SeriesDescription>')"
                          f"{_first_study_series(rows, column, image_root, allow_outside_root)}")
    headers = [f"image:{rule.name}" for rule in parse_series_rules(rules)]
    kept, unmatched, lines = [], [], []
    for line, raw in rows:
        rel = (raw.get(column) or "").strip()
        folder = image_root / rel
        if not rel or not folder.is_dir() or (not allow_outside_root and lies_outside(folder, image_root)):
            kept.append((line, {**raw, **dict.fromkeys(headers, rel)}))  # the path check names it
            continue
        try:
            picked = pick_series(folder, rules)
        except DatasetError as exc:
            unmatched.append(rel)
            lines.append(f"line {line}: {str(exc).removeprefix(str(folder) + ': ')}")
            continue
        kept.append((line, {**raw, **{h: str(Path(rel) / p.name) for h, p in zip(headers, picked.values())}}))
    findings = [Finding.blocking("series.unmatched", f"{csv_path}: in {len(lines)} stud(ies) a series rule matches "
                                 f"no series or several ({'; '.join(lines[:3])}); rewrite the rules so that each "
                                 "matches one series of every study, or remove these rows", unmatched)
                ] if lines else []
    return kept, headers, findings


def _first_study_series(rows: list[tuple[int, dict]], column: str, image_root: Path, allow_outside_root: bool) -> str:
    """``". The series of FOLDER: ..."``, of the first study that can be listed (none outside ``image_root`` unless
    allowed: a refused path is not read, even for a message); ``""`` when none can."""
    for _, raw in rows:
        folder = image_root / (raw.get(column) or "").strip()
        if not allow_outside_root and lies_outside(folder, image_root):
            continue
        try:
            seen = list_series(folder)
        except (OSError, DatasetError):
            continue
        return f". The series of {folder}: " + "; ".join(f"{s.folder.name}: {s.label!r}" for s in seen)
    return ""
