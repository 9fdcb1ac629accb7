"""CSV manifests: one row per image, paths relative to the CSV (or to ``image_root``).

Columns (first match wins, case-insensitive): image ``image|image_path|path|file|filename``,
label ``label|labels|class|target|diagnosis``, patient ``patient_id|patient|subject|subject_id``,
split ``split|set|subset``. Several labels in one cell, separated by ``;`` or ``|``, make the
task multi-label.
"""

from __future__ import annotations

import csv
from pathlib import Path

from medlens.data.dataset import Dataset, Finding, order_class_names, parse_split
from medlens.errors import DatasetError
from medlens.types import Case, Task

COLUMNS = {
    "image": ("image", "image_path", "path", "file", "filename", "file_name"),
    "label": ("label", "labels", "class", "target", "diagnosis"),
    "mask": ("mask", "mask_path", "segmentation", "seg", "label_map", "annotation"),
    "patient_id": ("patient_id", "patient", "patientid", "subject", "subject_id"),
    "split": ("split", "set", "subset"),
}
LABEL_SEPARATORS = (";", "|")


def open_manifest(csv_path: Path, image_root: Path | None = None) -> Dataset:
    """List the cases of a CSV manifest.

    Args:
        csv_path: the manifest.
        image_root: folder the image paths are relative to (default: the CSV's folder).

    Raises:
        DatasetError: no image or label column, an empty CSV, fewer than two classes.
    """
    rows, columns = _read_rows(csv_path)
    image_root = Path(image_root) if image_root else csv_path.parent
    if "mask" in columns and "label" not in columns:
        return _open_segmentation_manifest(csv_path, rows, columns, image_root)
    labels = [(row[columns["label"]] or "").strip() for row in rows]
    multilabel = any(sep in value for value in labels for sep in LABEL_SEPARATORS)
    class_names = _class_names(labels, multilabel)
    if len(class_names) < 2:
        raise DatasetError(f"{csv_path}: column {columns['label']!r} holds {len(class_names)} distinct label(s) "
                           f"({', '.join(class_names)}); classification needs at least two")
    cases, missing_files, missing_labels = [], [], []
    for line, (row, label) in enumerate(zip(rows, labels), start=2):
        rel = (row[columns["image"]] or "").strip()
        path = image_root / rel
        if not rel or not path.exists():
            missing_files.append(f"line {line}: {rel or '(empty)'}")
            continue
        if not label:
            missing_labels.append(f"line {line}: {rel}")
            continue
        where = f"{csv_path} line {line}"
        cases.append(Case(case_id=rel, images=(path,), label=_encode(label, class_names, multilabel),
                          patient_id=_optional(row, columns.get("patient_id")),
                          split=parse_split(_optional(row, columns.get("split")), where)))
    findings = _findings(csv_path, image_root, missing_files, missing_labels)
    task = Task.MULTILABEL if multilabel else (Task.BINARY if len(class_names) == 2 else Task.MULTICLASS)
    return Dataset(csv_path, "manifest", task, tuple(class_names), cases, findings=findings,
                   meta={"columns": columns, "image_root": str(image_root)})


def _read_rows(csv_path: Path) -> tuple[list[dict], dict[str, str]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except UnicodeDecodeError:
        raise DatasetError(f"{csv_path}: not a UTF-8 text CSV; save it as CSV (UTF-8)") from None
    except csv.Error as exc:
        raise DatasetError(f"{csv_path} line {reader.line_num}: malformed CSV ({exc}); check for an unbalanced "
                           "quote") from None
    if not rows:
        raise DatasetError(f"{csv_path}: the CSV has no data rows (header: {header})")
    columns = {}
    for role, names in COLUMNS.items():
        found = next((h for h in header if h and h.strip().lower() in names), None)
        if found:
            columns[role] = found
    if "image" not in columns:
        raise DatasetError(f"{csv_path}: no image column; expected one of {', '.join(COLUMNS['image'])}, "
                           f"found columns {header}")
    if "label" not in columns and "mask" not in columns:
        raise DatasetError(f"{csv_path}: no label column (classification: one of {', '.join(COLUMNS['label'])}) "
                           f"and no mask column (segmentation: one of {', '.join(COLUMNS['mask'])}); found "
                           f"columns {header}")
    return rows, columns


def _open_segmentation_manifest(csv_path: Path, rows: list[dict], columns: dict, image_root: Path) -> Dataset:
    """Rows of ``image, mask[, patient_id, split]``: one image + label map pair per row."""
    cases, missing = [], []
    for line, row in enumerate(rows, start=2):
        rel, mask_rel = (row[columns["image"]] or "").strip(), (row[columns["mask"]] or "").strip()
        paths = [image_root / rel, image_root / mask_rel]
        absent = [r or "(empty)" for r, path in zip((rel, mask_rel), paths) if not r or not path.exists()]
        if absent:
            missing.append(f"line {line}: {', '.join(absent)}")
            continue
        cases.append(Case(case_id=rel, images=(paths[0],), mask=paths[1],
                          patient_id=_optional(row, columns.get("patient_id")),
                          split=parse_split(_optional(row, columns.get("split")), f"{csv_path} line {line}")))
    findings = _findings(csv_path, image_root, missing, [])
    return Dataset(csv_path, "manifest", Task.SEGMENTATION, (), cases, findings=findings,
                   meta={"columns": columns, "image_root": str(image_root)})


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


def _optional(row: dict, column: str | None) -> str | None:
    value = (row.get(column) or "").strip() if column else ""
    return value or None


def _findings(csv_path: Path, image_root: Path, missing_files: list[str], missing_labels: list[str]) -> list[Finding]:
    findings = []
    if missing_files:
        findings.append(Finding.blocking("file.missing",
                                f"{csv_path}: {len(missing_files)} row(s) point at files that do not exist under "
                                f"{image_root} (first: {'; '.join(missing_files[:3])}); fix the paths, or pass "
                                "--image-root if they are relative to another folder", missing_files))
    if missing_labels:
        findings.append(Finding.blocking("label.missing",
                                f"{csv_path}: {len(missing_labels)} row(s) have no label (first: "
                                f"{'; '.join(missing_labels[:3])}); fill them in or remove the rows", missing_labels))
    return findings
