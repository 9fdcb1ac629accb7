"""Class folders: ``root/<class>/<image>`` with an optional split level ``root/<split>/<class>/``.

The layout Keras' ``image_dataset_from_directory`` users know. An entry of a class folder may
be an image file or a folder holding one DICOM series (one case per series folder); the image files
of its other sub-folders, at any depth, are cases of the class too. What the system writes beside the
images (``__MACOSX/``, ``.DS_Store``, ``Thumbs.db``) is skipped. Without
labels (``medlens pretrain``), a flat folder of image files is a dataset too (:func:`open_image_folder`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from medlens.data.dataset import (
    Dataset,
    Finding,
    class_name_problem,
    order_class_names,
    parse_split,
    single_class_finding,
)
from medlens.errors import DatasetError
from medlens.io.formats import IMAGE_SUFFIXES, is_clutter, suffix_of
from medlens.types import Case, Task

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}


def is_image_file(path: Path) -> bool:
    return path.is_file() and not is_clutter(path.name) and suffix_of(path) in IMAGE_SUFFIXES


def looks_like_class_folders(root: Path) -> bool:
    subdirs = _visible_dirs(root)
    if not subdirs:
        return False
    if {d.name.lower() for d in subdirs} <= SPLIT_NAMES:
        return all(_visible_dirs(d) for d in subdirs)
    return any(is_case for d in subdirs for is_case, _ in _walk(d))  # stops at the first case


def open_class_folders(root: Path, one_class: bool = False) -> Dataset:
    """List the cases of a class-folder dataset.

    Args:
        one_class: a single class folder is a one-class dataset (normal images for anomaly detection);
            otherwise it is listed with a blocking ``class.single`` finding.

    Raises:
        DatasetError: no class folder, or class folders that cannot be class names.
    """
    subdirs = _visible_dirs(root)
    split_level = {d.name.lower() for d in subdirs} <= SPLIT_NAMES
    groups = [(parse_split(d.name, str(d)), d) for d in subdirs] if split_level else [(None, root)]
    folders_of, findings = _class_folders(root, [base for _, base in groups])
    class_names = order_class_names(list(folders_of))
    _refuse_bad_class_names(root, class_names)
    if not class_names:
        raise DatasetError(f"{root}: found no class folder; a classification dataset needs "
                           "root/<class_name>/<images> with at least two classes")
    if len(class_names) == 1 and not one_class:
        findings.append(single_class_finding(root, class_names[0], "the class folders"))
    cases, others = [], []
    for split, base in groups:
        for label, name in enumerate(class_names):
            folder = folders_of[name].get(base, base / name)
            walked = list(_walk(folder)) if folder.is_dir() else []
            entries = [path for is_case, path in walked if is_case]
            others += [path for is_case, path in walked if not is_case]
            if not entries:
                findings.append(Finding("warning", "class.empty", f"{folder}: no images for class {name!r}"))
            for entry in entries:
                cases.append(_case(root, entry, label, split))
    if not cases:
        raise DatasetError(f"{root}: the class folders hold no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    class_folders = [folder for name in class_names for folder in folders_of[name].values()]
    findings += _ignored_files(root, others) + _nested_images(root, class_folders, cases)
    findings += _patients_in_names(cases)
    task = Task.BINARY if len(class_names) == 2 else Task.MULTICLASS  # one class: multiclass of one
    return Dataset(root, "class_folders", task, tuple(class_names), cases, findings=findings,
                   meta={"split_level": split_level})


def _class_folders(root: Path, bases: list[Path]) -> tuple[dict[str, dict[Path, Path]], list[Finding]]:
    """Class name -> {split folder (or root): its class folder}, one class per name whatever its case.

    ``train/NORMAL`` and ``test/normal`` are one class (a case-insensitive file system could not hold both in
    one folder), named by its most frequent spelling; a ``class.spelling`` warning names the others.

    Raises:
        DatasetError: two folders side by side whose names differ only in case.
    """
    spellings: dict[str, list[Path]] = {}
    for base in bases:
        for folder in _visible_dirs(base):
            twin = next((f for f in spellings.get(folder.name.casefold(), []) if f.parent == base), None)
            if twin is not None:
                raise DatasetError(f"{base}: class folders {twin.name!r} and {folder.name!r} differ only in case, so "
                                   "they would be one class on Windows or macOS; merge them, or rename one")
            spellings.setdefault(folder.name.casefold(), []).append(folder)
    folders_of, others = {}, []
    for folders in spellings.values():
        names = [folder.name for folder in folders]
        name = max(names, key=names.count)  # the most frequent spelling; the first on a tie
        folders_of[name] = {folder.parent: folder for folder in folders}
        others += [f"{folder.relative_to(root).as_posix()} read as {name!r}"
                   for folder in folders if folder.name != name]
    if not others:
        return folders_of, []
    return folders_of, [Finding("warning", "class.spelling", f"class folders spell a class differently across the "
                                f"splits ({'; '.join(others[:3])}); rename them to one spelling", others)]


def open_image_folder(root: Path) -> Dataset:
    """List a folder of image files without labels, one case per file (for self-supervised pretraining).

    Raises:
        DatasetError: no image file in the folder, or loose slices of one DICOM series.
    """
    entries = [p for p in sorted(root.iterdir()) if is_image_file(p)]
    if not entries:
        raise DatasetError(f"{root}: no image files (looked for {', '.join(IMAGE_SUFFIXES)}); put the images "
                           "directly in the folder")
    _refuse_loose_series(root, entries)
    cases = [Case(case_id=entry.relative_to(root).as_posix(), images=(entry,)) for entry in entries]
    others = sum(1 for p in root.iterdir() if p.is_file() and not is_clutter(p.name)) - len(entries)
    findings = [Finding("warning", "file.ignored", f"{root}: {others} file(s) that are not images were left out")
                ] if others else []
    return Dataset(root, "image_folder", Task.PRETRAINING, (), cases, findings=findings)


def _ignored_files(root: Path, others: list[Path]) -> list[Finding]:
    """``file.ignored``: the files :func:`_walk` found in the class folders (and their sub-folders that are no
    DICOM series) whose name is no image format medlens reads (``.txt``, ``.heic``...), which are not cases;
    what the system writes (``.DS_Store``, ``Thumbs.db``) was skipped before."""
    ignored = [p.relative_to(root).as_posix() for p in others]
    if not ignored:
        return []
    return [Finding("warning", "file.ignored", f"{len(ignored)} file(s) in the class folders are not images by their "
                    f"name and were left out (e.g. {', '.join(ignored[:3])}); medlens reads "
                    f"{', '.join(IMAGE_SUFFIXES)}: convert or rename them if they are images", ignored)]


def _case(root: Path, entry: Path, label: int, split) -> Case:
    patient = None
    if entry.is_dir():  # a DICOM series folder: the patient comes from its headers
        patient = _dicom_patient(entry)
    return Case(case_id=entry.relative_to(root).as_posix(), images=(entry,), label=label,
                patient_id=patient, split=split)


def _refuse_bad_class_names(root: Path, class_names: list[str]) -> None:
    """A folder called ``nan`` or ``=HYPERLINK(...)`` would become a class of that name.

    Raises:
        DatasetError: naming each such folder and why (see :func:`class_name_problem`).
    """
    problems = [f"folder {name!r}: {problem}" for name in class_names if (problem := class_name_problem(name))]
    if problems:
        raise DatasetError(f"{root}: {len(problems)} class folder name(s) cannot be class names ("
                           f"{'; '.join(problems[:3])}); a class folder's name is the class: rename the folder "
                           "after the class, or move its images into the right class folder")


def _refuse_loose_series(folder: Path, entries: list[Path]) -> None:
    """Slices of one DICOM series lying loose in a class folder would each become a case.

    Two files of one series at different positions (or instance numbers) are slices of it; two at the
    same place are copies of one image, which the audit reports as duplicates (or, when damaged, as
    unreadable), so they are listed, not refused.
    """
    slices = [p for p in entries if p.is_file() and suffix_of(p) in _DICOM_SUFFIXES][:2]
    headers = [_header_or_none(p) for p in slices]
    if len(headers) == 2 and all(headers) and _two_slices_of_one_series(*headers):
        raise DatasetError(f"{folder} holds slices of one DICOM series ({slices[0].name}, {slices[1].name}, ...); "
                           "a case is a whole series: put each series in its own sub-folder, "
                           "root/<class>/<case>/*.dcm (to look at one series use `medlens info FOLDER`)")


def _two_slices_of_one_series(first, second) -> bool:
    same_series = bool(first.series_uid) and first.series_uid == second.series_uid
    return same_series and (first.position, first.instance) != (second.position, second.instance)


def _dicom_patient(folder: Path) -> str | None:
    """The patient of the first readable slice in ``folder`` (the audit reports the unreadable ones)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            header = _header_or_none(path)
            if header is not None:
                return header.patient_key
    return None


def _header_or_none(path: Path):
    """The DICOM header of ``path``, or ``None`` when it is not DICOM or cannot be parsed.

    Listing cases must survive a truncated or malformed slice: reading the case later fails with
    the reason, and the audit lists it as unreadable instead of stopping.
    """
    from medlens.io.dicom import read_header

    try:
        return read_header(path)
    except Exception:  # noqa: BLE001 - whatever a malformed header raises, the audit reports it per case
        return None


def _nested_images(root: Path, folders: list[Path], cases: list[Case]) -> list[Finding]:
    """``class.subfolders``: image files found in sub-folders of the class folders, read as cases of their
    class. A sub-folder may be a patient, a scanner or a batch; medlens cannot tell, so it groups nothing
    by it and says how to."""
    parents = {str(folder.relative_to(root).as_posix()) for folder in folders}
    nested = [case.case_id for case in cases if case.images[0].is_file()
              and case.images[0].parent.relative_to(root).as_posix() not in parents]
    if not nested:
        return []
    return [Finding("info", "class.subfolders", f"{len(nested)} image(s) lie in sub-folders of the class folders "
                    f"(e.g. {', '.join(nested[:3])}) and were read as cases of their class folder; a sub-folder is "
                    "not taken as a patient. If each sub-folder holds one patient's images, write a CSV manifest "
                    "with a patient column (`medlens inspect` lists the cases) so that splits keep them together",
                    nested)]


_LEADING_TOKEN = re.compile(r"^([^_\-\s.()]*\d[^_\-\s.()]*)[_\-\s]")  # "person1" of person1_bacteria_1.jpeg
NAMED_SHARE = 0.25  # of the image files whose leading token repeats, from which names seem to carry patients


def _patients_in_names(cases: list[Case]) -> list[Finding]:
    """``class.filename_patients``: image files whose names start with a token holding a digit that other files of
    their folder share (``person1_bacteria_1.jpeg``, ``person1_virus_6.jpeg``), as when the name carries the
    patient. Tokens are compared within one folder: numbering that restarts in each class folder
    (``normal/0001_x.png``, ``lesion/0001_x.png``) is no patient.

    Class folders give no patients, so such files may sit in training and test alike; a warning says so and how
    to give the patients. Nothing is inferred from the names: a shared token may be a date or a scanner."""
    files = [c for c in cases if c.patient_id is None and c.images[0].suffix]
    tokens = {c.case_id: (c.images[0].parent, match[1]) for c in files
              if (match := _LEADING_TOKEN.match(c.images[0].name))}
    counts: dict[tuple, list[str]] = defaultdict(list)
    for case_id, token in tokens.items():
        counts[token].append(case_id)
    shared = {t: ids for t, ids in counts.items() if len(ids) > 1}
    named = sum(len(ids) for ids in shared.values())
    if len(shared) < 3 or named < NAMED_SHARE * max(len(files), 1):
        return []
    (_, token), ids = max(shared.items(), key=lambda item: len(item[1]))
    return [Finding("warning", "class.filename_patients", f"{named} of {len(files)} image files share a leading name "
                    f"token with others, as when file names carry the patient (e.g. {token!r}: "
                    f"{', '.join(Path(i).name for i in ids[:3])}); class folders give no patients, so one patient's "
                    "images may land in training and test alike. If these are patients, write a CSV with a patient "
                    "column so that splits keep them together", sorted(i for ids in shared.values() for i in ids))]


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not is_clutter(d.name))


def _walk(folder: Path, listing: tuple[list[Path], list[Path]] | None = None) -> Iterator[tuple[bool, Path]]:
    """The contents of a class folder, each folder listed once: ``(True, case)`` per image file and per DICOM
    series sub-folder, ``(False, file)`` per other file (what the system writes skipped); sub-folders that are
    no series are walked in turn, at any depth.

    Raises:
        DatasetError: slices of one DICOM series lie loose in one of these folders.
    """
    files, dirs = listing or _listing(folder)
    _refuse_loose_series(folder, [p for p in files if suffix_of(p) in IMAGE_SUFFIXES])
    yield from ((suffix_of(p) in IMAGE_SUFFIXES, p) for p in files)
    for sub in dirs:
        inside = _listing(sub)
        if _is_series(inside[0]):
            yield True, sub
        else:
            yield from _walk(sub, inside)


def _listing(folder: Path) -> tuple[list[Path], list[Path]]:
    """``(files, sub-folders)`` of ``folder``, sorted, without what the system writes."""
    children = sorted(p for p in folder.iterdir() if not is_clutter(p.name))
    return [p for p in children if p.is_file()], [p for p in children if p.is_dir()]


def _is_series(files: list[Path]) -> bool:
    """Whether a sub-folder holding ``files`` is one case, a DICOM series: it holds files and none is named as an
    image of another format (scanners name slices ``.dcm``, ``IM0001`` or by their UID)."""
    return bool(files) and not any(suffix_of(p) in IMAGE_SUFFIXES and suffix_of(p) not in _DICOM_SUFFIXES
                                   for p in files)
