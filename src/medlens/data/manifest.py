"""CSV manifests: one row per image, paths relative to the CSV (or to ``image_root``).

Columns (first match wins, case-insensitive): image ``image|image_path|path|file|filename``,
label ``label|labels|class|target|diagnosis``, patient ``patient_id|patient|subject|subject_id``,
split ``split|set|subset``. Several labels in one cell, separated by ``;`` or ``|``, make the
task multi-label.

Several images per case: columns ``image:NAME`` (e.g. ``image:axial, image:coronal`` or ``image:t1,
image:flair``) instead of one image column. ``Case.images`` holds the views a row fills, in column order,
``Case.views`` their names; an empty cell is that view missing for the case (``view.missing``, a warning for
classification, an error for segmentation, which stacks the views as channels). The case id is then the
patient column's value when it is unique per row, else the first present view's path. Every other column
(not image, label, mask, patient, split) is a candidate clinical column: ``Case.clinical`` holds its cell text
(``""`` when empty), ``Dataset.meta["clinical_columns"]`` the names; the plan says which are inputs.

DICOM studies: a ``study`` column (``study|study_folder|study_path``), one study folder of series folders per row,
and ``series_rules`` (``NAME=REGEX``, :mod:`medlens.data.series`) naming the series to read: each rule becomes a
view ``image:NAME`` holding the series it matches in that study (``series.unmatched`` when it matches none or
several). The case is then named by its study.

Rows are checked before they become cases, each problem a finding naming the CSV lines:
``file.missing``, ``path.outside_root`` (a path leaving the root once ``..`` and links are resolved,
refused unless ``allow_outside_root``), ``label.missing``, ``label.invalid`` (``nan``, ``None``,
``=HYPERLINK(...)``: see :func:`~medlens.data.dataset.class_name_problem`), ``label.conflict`` (one
file listed with two labels, or two masks), ``row.conflict`` (one file with two patients or splits)
and ``duplicates.rows`` (a row repeated; the warning alone). Every file is one case however often
it is listed, so a splits file never names it twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from medlens.data.dataset import (
    Dataset,
    Finding,
    allow_outside_root_in_force,
    class_name_problem,
    escaping_link,
    lies_outside,
    order_class_names,
    parse_split,
    single_class_finding,
)
from medlens.data.table import Table, normal_name, read_table
from medlens.errors import ConfigError, DatasetError
from medlens.types import Case, Task

COLUMNS = {
    "image": ("image", "image_path", "path", "file", "filename", "file_name"),
    "label": ("label", "labels", "class", "target", "diagnosis"),
    "mask": ("mask", "mask_path", "segmentation", "seg", "label_map", "annotation"),
    "patient_id": ("patient_id", "patient", "patientid", "subject", "subject_id"),
    "split": ("split", "set", "subset"),
    "study": ("study", "study_folder", "study_path"),
}
LABEL_SEPARATORS = (";", "|")
VIEW_PREFIX = "image:"  # a column per view: image:axial, image:t1...


@dataclass(frozen=True)
class _Inputs:
    """The columns beside the roles: ``(view name, header)`` per ``image:NAME`` column, ``(name, header)`` of the
    candidate clinical columns."""

    views: tuple[tuple[str, str], ...] = ()
    clinical: tuple[tuple[str, str], ...] = ()


@dataclass
class _Row:
    """One CSV data row, its paths joined to the image root (``mask_rel`` is ``None`` for classification)."""

    line: int
    rel: str
    path: Path
    label: str
    patient_id: str | None
    split: str | None
    mask_rel: str | None = None
    mask: Path | None = None
    views: tuple[tuple[str, str, Path], ...] = ()  # (view name, path as written or "", joined path) per image:NAME
    clinical: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        images = [f"{name}={rel or '(empty)'}" for name, rel, _ in self.views] or [self.rel or "(empty)"]
        files = images + ([self.mask_rel or "(empty)"] if self.mask_rel is not None else [])
        return f"line {self.line}: {', '.join(files)}"

    def images(self) -> list[tuple[str, Path]]:
        """``(path as written, joined path)`` of the image, or of each view the row fills (``[("", ...)]`` if none)."""
        return [(rel, path) for _, rel, path in self.views if rel] or [(self.rel, self.path)]

    def files(self) -> list[tuple[str, Path]]:
        """``(path as written, path joined to the root)`` for the image(s) and, for segmentation, the mask."""
        return self.images() + ([(self.mask_rel, self.mask)] if self.mask_rel is not None else [])

    def lacking(self) -> list[str]:
        """The views whose cell is empty."""
        return [name for name, rel, _ in self.views if not rel]

    def view_key(self) -> tuple:
        """The views as files, for two rows of one first image to agree on."""
        return tuple((name, path.resolve()) for name, rel, path in self.views if rel)

    def label_key(self, multilabel: bool):
        """What two rows of one file must agree on: the mask file, the set of labels, or the label."""
        if self.mask_rel is not None:
            return self.mask.resolve()
        return frozenset(_split_labels(self.label)) if multilabel else self.label


def open_manifest(csv_path: Path, image_root: Path | None = None, *, allow_outside_root: bool | None = None,
                  unlabelled: bool = False, series_rules=(), one_class: bool = False) -> Dataset:
    """List the cases of a CSV manifest.

    Args:
        csv_path: the manifest.
        image_root: folder the image paths are relative to (default: the CSV's folder). Paths must
            stay under it.
        allow_outside_root: follow paths leaving ``image_root`` (``../..``, absolute paths elsewhere,
            links pointing out); ``None`` = what :func:`~medlens.data.dataset.outside_root_allowed` says.
        unlabelled: a CSV with neither a label nor a mask column lists images without labels (for
            self-supervised pretraining) instead of being refused.
        series_rules: ``"NAME=REGEX"`` per series to read from each study of a ``study`` column.
        one_class: a label column of one class is a one-class dataset (normal images for anomaly detection);
            otherwise it is listed with a blocking ``class.single`` finding.

    Raises:
        ConfigError: a study column without series rules, or series rules without a study column.
        DatasetError: no image column, no label column (unless ``unlabelled``), an empty CSV, fewer than
            two classes.
    """
    table, columns, inputs = _read_rows(csv_path, unlabelled)
    image_root = Path(image_root) if image_root else csv_path.parent
    allow = allow_outside_root_in_force(allow_outside_root)
    numbered, inputs, study_findings = _studies(csv_path, table.rows, columns, inputs,
                                                image_root, series_rules, allow)
    study_findings = _table_findings(csv_path, table) + study_findings
    rows = [_row(line, raw, columns, inputs, image_root) for line, raw in numbered]
    meta = _meta(columns, inputs, image_root)
    if "mask" in columns and "label" not in columns:
        dataset = _open_segmentation_manifest(csv_path, rows, meta, image_root, allow)
        dataset.findings[:0] = study_findings
        return dataset
    if "label" not in columns:
        dataset = _open_unlabelled_manifest(csv_path, rows, meta, image_root, allow)
        dataset.findings[:0] = study_findings
        return dataset
    multilabel = any(sep in row.label for row in rows for sep in LABEL_SEPARATORS)
    labelled, label_findings = _check_labels(csv_path, rows, multilabel)
    class_names = _class_names([row.label for row in labelled], multilabel)
    if len(class_names) == 1 and not multilabel and not one_class:
        label_findings.insert(0, single_class_finding(csv_path, class_names[0], f"column {columns['label']!r}"))
    elif len(class_names) < (1 if one_class and not multilabel else 2):
        raise DatasetError(f"{csv_path}: column {columns['label']!r} holds {len(class_names)} distinct usable "
                           f"label(s) ({', '.join(class_names)}); classification needs at least two"
                           + "".join(f". {f.message}" for f in label_findings))
    present, path_findings = _check_paths(csv_path, image_root, labelled, allow)
    unique, duplicate_findings = _check_repeats(csv_path, present, multilabel)
    cases = [Case(**inputs, label=_encode(row.label, class_names, multilabel), patient_id=row.patient_id,
                  split=parse_split(row.split, f"{csv_path} line {row.line}"))
             for row, inputs in zip(unique, _case_inputs(unique))]
    task = Task.MULTILABEL if multilabel else (Task.BINARY if len(class_names) == 2 else Task.MULTICLASS)
    return Dataset(csv_path, "manifest", task, tuple(class_names), cases,
                   findings=study_findings + path_findings + label_findings + duplicate_findings
                   + _view_findings(csv_path, unique, cases),
                   meta=meta)


def _studies(csv_path: Path, numbered: list[tuple[int, dict]], columns: dict, inputs: _Inputs, image_root: Path,
             rules, allow_outside_root: bool) -> tuple[list[tuple[int, dict]], _Inputs, list[Finding]]:
    """A study column's series as view columns (see :func:`medlens.data.series.study_views`); other manifests as
    they are (with rules, only one that already names a view column per rule: the series they picked)."""
    if "study" not in columns:
        from medlens.data.series import parse_series_rules

        if rules and [name for name, _ in inputs.views] != [rule.name for rule in parse_series_rules(rules)]:
            # (a manifest of the series the rules picked, one image:NAME column per rule, needs them no more: the
            # sites' cases pooled by a federation, read again through a plan that keeps the rules)
            raise ConfigError(f"{csv_path}: series rules ({', '.join(rules)}) were given, and the CSV has no study "
                              f"column ({', '.join(COLUMNS['study'])}) naming DICOM study folders; add one, or drop "
                              "the rules")
        return numbered, inputs, []
    from medlens.data.series import study_views

    numbered, headers, findings = study_views(csv_path, numbered, columns["study"], image_root, rules,
                                              allow_outside_root)
    return numbered, replace(inputs, views=tuple((h[len(VIEW_PREFIX):], h) for h in headers)), findings


def _row(line: int, raw: dict, columns: dict, inputs: _Inputs, image_root: Path) -> _Row:
    views = tuple((name, _cell(raw, header), joined(image_root, _cell(raw, header))) for name, header in inputs.views)
    rel = next((rel for _, rel, _ in views if rel), "") if views else _cell(raw, columns["image"])
    if "study" in columns:  # the case is its study, named as the CSV writes it
        rel = _cell(raw, columns["study"])
    patient_id, split = _cell(raw, columns.get("patient_id")) or None, _cell(raw, columns.get("split")) or None
    row = _Row(line, rel, joined(image_root, rel), _cell(raw, columns.get("label")), patient_id, split, views=views,
               clinical={name: _cell(raw, header) for name, header in inputs.clinical})
    if "mask" in columns and "label" not in columns:  # segmentation: the mask is the label
        row.mask_rel = _cell(raw, columns["mask"])
        row.mask = joined(image_root, row.mask_rel)
    return row


def joined(root: Path, written: str) -> Path:
    """``root / written``; a path written on Windows (``scans\\p001.png``) is taken with ``/`` where only that
    spelling exists here."""
    path = root / written
    if "\\" in written and not path.exists():
        posix = root / written.replace("\\", "/")
        return posix if posix.exists() else path
    return path


def _meta(columns: dict, inputs: _Inputs, image_root: Path) -> dict:
    meta = {"columns": columns, "image_root": str(image_root)}
    if inputs.views:
        meta["views"] = [name for name, _ in inputs.views]
    meta["clinical_columns"] = [name for name, _ in inputs.clinical]
    return meta


def _case_inputs(rows: list[_Row]) -> list[dict]:
    """Per row, the :class:`Case` fields its columns give: ``case_id``, ``images``, ``views`` and ``clinical``.

    A multi-view case is named by its patient when every row has a patient of its own (a subject's views are one
    case), else by its first present view; a one-image case by its image, as always.
    """
    patients = [row.patient_id for row in rows]
    by_patient = any(row.views for row in rows) and all(patients) and len(set(patients)) == len(patients)
    return [{"case_id": row.patient_id if by_patient else row.rel,
             "images": tuple(path for _, path in row.images()),
             "views": tuple(name for name, rel, _ in row.views if rel),
             "clinical": dict(row.clinical)} for row in rows]


def _view_findings(csv_path: Path, rows: list[_Row], cases: list[Case], *, blocking: bool = False) -> list[Finding]:
    """``view.missing``: rows with an empty ``image:NAME`` cell (an error when the views are stacked as channels)."""
    lacking = [(case.case_id, f"line {row.line}: {', '.join(row.lacking())}")
               for row, case in zip(rows, cases) if row.lacking()]
    if not lacking:
        return []
    said = f"{csv_path}: {len(lacking)} case(s) lack a view (first: {'; '.join(m for _, m in lacking[:3])}); "
    ids = [case_id for case_id, _ in lacking]
    if blocking:
        return [Finding.blocking("view.missing", said + "segmentation stacks the views as channels, so every case "
                                 "needs all of them: fill in the paths, or remove these rows", ids)]
    return [Finding("warning", "view.missing", said + "these cases are trained and predicted without it (modality "
                    "dropout teaches the network that); fill in the paths if the images exist", ids)]


def _cell(raw: dict, column: str | None) -> str:
    return (raw.get(column) or "").strip() if column else ""


def _read_rows(csv_path: Path, unlabelled: bool = False) -> tuple[Table, dict[str, str], _Inputs]:
    """The table (see :func:`~medlens.data.table.read_table`), the column of each role, the inputs."""
    table = read_table(csv_path)
    header = table.header
    columns = {}
    for role, names in COLUMNS.items():
        found = next((h for h in header if h and normal_name(h) in names), None)
        if found:
            columns[role] = found
    inputs = _inputs(csv_path, header, columns)
    if "study" in columns and ("image" in columns or inputs.views):
        raise DatasetError(f"{csv_path}: both a study column ({columns['study']!r}) and image columns "
                           f"({', '.join([columns.get('image', '')] + [h for _, h in inputs.views]).strip(', ')}); a "
                           "row is one study (its series picked by --series-rule) or its image file(s): drop one")
    if "image" not in columns and not inputs.views and "study" not in columns:
        raise DatasetError(f"{csv_path}: no image column; expected one of {', '.join(COLUMNS['image'])}, or one "
                           f"column per view named {VIEW_PREFIX}NAME (e.g. image:axial), found columns {header}")
    if "label" not in columns and "mask" not in columns and not unlabelled:
        raise DatasetError(f"{csv_path}: no label column (classification: one of {', '.join(COLUMNS['label'])}) "
                           f"and no mask column (segmentation: one of {', '.join(COLUMNS['mask'])}); found "
                           f"columns {header}. To learn an encoder from images without labels use "
                           "`medlens pretrain CSV`")
    return table, columns, inputs


def _table_findings(csv_path: Path, table: Table) -> list[Finding]:
    """Notes on how the sheet was read: ``table.encoding`` (not UTF-8) and ``table.decimal_comma`` (the columns
    whose numbers were written with a decimal comma)."""
    findings = []
    if table.encoding != "utf-8":
        findings.append(Finding("info", "table.encoding", f"{csv_path}: not UTF-8; read as {table.encoding} "
                                "(Windows-1252: what Excel's plain CSV saves on Windows). If names show odd "
                                "characters, save the sheet as CSV UTF-8"))
    if table.decimal_commas:
        findings.append(Finding("info", "table.decimal_comma", f"{csv_path}: semicolon-separated, as spreadsheets save "
                                "CSV where the comma is the decimal separator: numbers such as 0,715 in column(s) "
                                f"{', '.join(table.decimal_commas)} are read as 0.715. If a comma there means "
                                "something else, save the file with commas between columns"))
    return findings


def _inputs(csv_path: Path, header: list[str], columns: dict[str, str]) -> _Inputs:
    """The ``image:NAME`` view columns and the candidate clinical columns (every other named column)."""
    views = [(h.strip()[len(VIEW_PREFIX):].strip(), h) for h in header
             if h and h.strip().lower().startswith(VIEW_PREFIX)]
    if views and "image" in columns:
        raise DatasetError(f"{csv_path}: both an image column ({columns['image']!r}) and view columns "
                           f"({', '.join(h for _, h in views)}); a manifest lists one image per row or one column per "
                           f"view ({VIEW_PREFIX}NAME): pick one, and rename or drop the other")
    names = [name.lower() for name, _ in views]
    if "" in names or len(set(names)) < len(names):
        raise DatasetError(f"{csv_path}: view columns {[h for _, h in views]} need a distinct name after "
                           f"{VIEW_PREFIX!r} each (e.g. image:axial, image:coronal)")
    taken = set(columns.values()) | {h for _, h in views}
    clinical = [(h.strip(), h) for h in header if h and h.strip() and h not in taken]
    return _Inputs(tuple(views), tuple(clinical))


def _open_segmentation_manifest(csv_path: Path, rows: list[_Row], meta: dict, image_root: Path,
                                allow_outside_root: bool) -> Dataset:
    """Rows of ``image, mask[, patient_id, split]``: one image (or one per view: channels) + label map per row."""
    present, path_findings = _check_paths(csv_path, image_root, rows, allow_outside_root)
    unique, duplicate_findings = _check_repeats(csv_path, present, multilabel=False)
    cases = [Case(**inputs, mask=row.mask, patient_id=row.patient_id,
                  split=parse_split(row.split, f"{csv_path} line {row.line}"))
             for row, inputs in zip(unique, _case_inputs(unique))]
    view_findings = _view_findings(csv_path, unique, cases, blocking=True)
    return Dataset(csv_path, "manifest", Task.SEGMENTATION, (), cases,
                   findings=path_findings + duplicate_findings + view_findings, meta=meta)


def _open_unlabelled_manifest(csv_path: Path, rows: list[_Row], meta: dict, image_root: Path,
                              allow_outside_root: bool) -> Dataset:
    """Rows of ``image[, patient_id, split]``: images without labels, one case per file (or per row of views)."""
    present, path_findings = _check_paths(csv_path, image_root, rows, allow_outside_root)
    unique, duplicate_findings = _check_repeats(csv_path, present, multilabel=False)
    cases = [Case(**inputs, patient_id=row.patient_id, split=parse_split(row.split, f"{csv_path} line {row.line}"))
             for row, inputs in zip(unique, _case_inputs(unique))]
    view_findings = _view_findings(csv_path, unique, cases)
    return Dataset(csv_path, "image_manifest", Task.PRETRAINING, (), cases,
                   findings=path_findings + duplicate_findings + view_findings, meta=meta)


def _check_labels(csv_path: Path, rows: list[_Row], multilabel: bool) -> tuple[list[_Row], list[Finding]]:
    """The rows whose label can be used; ``label.missing`` and ``label.invalid`` for the others."""
    kept, missing, invalid = [], [], []
    for row in rows:
        parts = _split_labels(row.label) if multilabel else [row.label]
        problems = [problem for part in parts if (problem := class_name_problem(part))]
        if not row.label or not parts:
            missing.append(row.where)
        elif problems:
            invalid.append(f"line {row.line}: label {problems[0]}")
        else:
            kept.append(row)
    findings = []
    if missing:
        findings.append(Finding.blocking("label.missing", f"{csv_path}: {len(missing)} row(s) have no label (first: "
                                         f"{'; '.join(missing[:3])}); fill them in or remove the rows", missing))
    if invalid:
        findings.append(Finding.blocking("label.invalid", f"{csv_path}: {len(invalid)} row(s) have a label that "
                                         f"cannot be a class name (first: {'; '.join(invalid[:3])}); write the real "
                                         "class name in these rows, or remove them", invalid))
    return kept, findings


def _check_paths(csv_path: Path, image_root: Path, rows: list[_Row], allow_outside_root: bool
                 ) -> tuple[list[_Row], list[Finding]]:
    """The rows whose files exist under ``image_root``; ``path.outside_root`` and ``file.missing`` for the others.

    A path leaving the root is refused before anything looks at it (not even whether it exists).
    """
    kept, outside, missing, links = [], [], [], {}
    for row in rows:
        files = row.files()
        if not all(rel for rel, _ in files):
            missing.append(row.where)
        elif not allow_outside_root and any(lies_outside(path, image_root) for _, path in files):
            outside.append(row.where)
            links.update(link for _, path in files if (link := escaping_link(path, image_root)))
        elif not all(path.exists() for _, path in files):
            missing.append(row.where)
        else:
            kept.append(row)
    return kept, _path_findings(csv_path, image_root, outside, missing, links)


def _check_repeats(csv_path: Path, rows: list[_Row], multilabel: bool) -> tuple[list[_Row], list[Finding]]:
    """One row per file (the first); a file listed again is a conflict or a duplicate.

    Files are compared once resolved, so ``a.png``, ``./a.png`` and ``sub/../a.png`` are one file.
    """
    first: dict[Path, _Row] = {}
    conflicts, row_conflicts, repeats = [], [], []
    for row in rows:
        earlier = first.setdefault(row.path.resolve(), row)
        if earlier is row:
            continue
        said = f"line {row.line} ({row.rel}) repeats line {earlier.line}"
        if row.label_key(multilabel) != earlier.label_key(multilabel):
            what = "mask" if row.mask_rel is not None else "label"
            conflicts.append((earlier.rel, f"{said} with another {what} ({_shown(earlier, row)})"))
        elif (row.patient_id, row.split, row.view_key()) != (earlier.patient_id, earlier.split, earlier.view_key()):
            other = "another patient id, split or other views" if row.views else "another patient id or split"
            row_conflicts.append((earlier.rel, f"{said} with {other}"))
        else:
            repeats.append((earlier.rel, said))
    return list(first.values()), _repeat_findings(csv_path, conflicts, row_conflicts, repeats)


def _shown(earlier: _Row, row: _Row) -> str:
    if row.mask_rel is not None:
        return f"{earlier.mask_rel} vs {row.mask_rel}"
    return f"{earlier.label!r} vs {row.label!r}"


def _path_findings(csv_path: Path, image_root: Path, outside: list[str], missing: list[str],
                   links: dict[Path, Path] | None = None) -> list[Finding]:
    findings = []
    if outside:
        findings.append(Finding.blocking("path.outside_root", f"{csv_path}: {len(outside)} row(s) point outside "
                                         f"{image_root} (first: {'; '.join(outside[:3])}){_links_said(links)}; "
                                         "medlens reads a manifest's files only under its folder. Move the images "
                                         "under it, point --image-root at the folder that holds them, or pass "
                                         "--allow-outside-root if these paths are meant", outside))
    if missing:
        findings.append(Finding.blocking("file.missing", f"{csv_path}: {len(missing)} row(s) point at files that do "
                                         f"not exist under {image_root} (first: {'; '.join(missing[:3])}); fix the "
                                         "paths, or pass --image-root if they are relative to another folder",
                                         missing))
    return findings


def _links_said(links: dict[Path, Path] | None) -> str:
    """Where rows written inside the root leave it through symbolic links: ``", through the symbolic link(s) ..."``."""
    if not links:
        return ""
    shown = ", ".join(f"{link} -> {target}" for link, target in list(links.items())[:3])
    return f", through the symbolic link(s) {shown}{' ...' if len(links) > 3 else ''}"


def _repeat_findings(csv_path: Path, conflicts: list, row_conflicts: list, repeats: list) -> list[Finding]:
    """``label.conflict`` and ``row.conflict`` (both block training) and ``duplicates.rows`` (a warning)."""
    findings = []
    if conflicts:
        findings.append(Finding.blocking("label.conflict", f"{csv_path}: {len(conflicts)} row(s) list a file again "
                                         f"with a different label (first: {'; '.join(m for _, m in conflicts[:3])}); "
                                         "decide which is right and delete the other row", _ids(conflicts)))
    if row_conflicts:
        findings.append(Finding.blocking("row.conflict", f"{csv_path}: {len(row_conflicts)} row(s) list a file "
                                         f"again under another patient id or split (first: "
                                         f"{'; '.join(m for _, m in row_conflicts[:3])}); one file belongs to one "
                                         "patient and one split: delete the wrong row", _ids(row_conflicts)))
    if repeats:
        findings.append(Finding("warning", "duplicates.rows", f"{csv_path}: {len(repeats)} row(s) repeat a file "
                                f"already listed with the same label (first: {'; '.join(m for _, m in repeats[:3])}); "
                                "each file counts once and the repeats are ignored: delete them", _ids(repeats)))
    return findings


def _ids(entries: list[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(case_id for case_id, _ in entries))


def _class_names(labels: list[str], multilabel: bool) -> list[str]:
    names = set()
    for value in labels:
        parts = _split_labels(value) if multilabel else [value]
        names.update(p for p in parts if p)
    return order_class_names(list(names))


def _split_labels(value: str) -> list[str]:
    for sep in LABEL_SEPARATORS:
        value = value.replace(sep, ";")
    return [p.strip() for p in value.split(";") if p.strip()]


def _encode(label: str, class_names: list[str], multilabel: bool) -> int | tuple[int, ...]:
    if not multilabel:
        return class_names.index(label)
    present = set(_split_labels(label))
    return tuple(int(name in present) for name in class_names)
