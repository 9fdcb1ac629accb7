"""CSV box manifests: one row per box, paths relative to the CSV (or to ``image_root``).

Columns (case-insensitive; ``centre`` may be spelt ``center``): the image (``image``, ``path``, ``file``...,
as in :mod:`medlens.data.manifest`), ``label``, optional ``patient_id`` and ``split``, and one set of
coordinates, the unit stated by the names:

- ``x_min, y_min, x_max, y_max`` (+ ``z_min, z_max`` in 3D): voxel corners, voxel ``i`` spanning ``[i, i + 1)``;
- ``center_x, center_y[, center_z], size_x, size_y[, size_z]``: voxel centre and size;
- ``center_x_mm, center_y_mm[, center_z_mm]`` with ``size_x_mm, ...`` or one ``diameter_mm`` (a sphere-like
  lesion, as LUNA16's ``annotations.csv``; its ``coordX/Y/Z`` are read as ``center_*_mm``): world millimetres.

A row whose coordinates are all empty lists an image without boxes (a negative); an image's rows are one case.
"""

from __future__ import annotations

from pathlib import Path

from medlens.data.box_sources import check_files
from medlens.data.dataset import Dataset, Finding, allow_outside_root_in_force, class_name_problem, parse_split
from medlens.data.manifest import COLUMNS, joined
from medlens.data.table import normal_name, read_header, read_table
from medlens.errors import DatasetError
from medlens.types import Boxes, Case, Task

AXES = ("x", "y", "z")
ALIASES = {"coordx": "center_x_mm", "coordy": "center_y_mm", "coordz": "center_z_mm"}


def _normal(name: str) -> str:
    key = normal_name(name).replace("centre", "center")
    return ALIASES.get(key, key)


def coordinate_scheme(header: list[str]) -> tuple[list[str], str, str] | None:
    """``(coordinate columns in box order, form, unit)`` the header names, or ``None`` for a non-box CSV."""
    names = {_normal(h) for h in header}
    for dims in (3, 2):
        axes = AXES[:dims]
        corners = [f"{a}_min" for a in axes] + [f"{a}_max" for a in axes]
        centre_mm = [f"center_{a}_mm" for a in axes]
        sizes_mm = [f"size_{a}_mm" for a in axes]
        voxel = [f"center_{a}" for a in axes] + [f"size_{a}" for a in axes]
        if set(corners) <= names:
            return corners, "corners", "voxel"
        if set(centre_mm) <= names and (set(sizes_mm) <= names or "diameter_mm" in names):
            return centre_mm + (sizes_mm if set(sizes_mm) <= names else ["diameter_mm"] * dims), "center_size", "mm"
        if set(voxel) <= names:
            return voxel, "center_size", "voxel"
    return None


def is_box_csv(path: Path) -> bool:
    """Whether the CSV's header names box coordinates (read before the class / mask manifest takes it)."""
    return coordinate_scheme(read_header(path)) is not None


def open_box_manifest(csv_path: Path, image_root: Path | None = None, *,
                      allow_outside_root: bool | None = None) -> Dataset:
    """List a CSV box manifest's images, each with its boxes (none for a negative).

    Raises:
        DatasetError: no image or label column, no data rows, or no coordinate columns.
    """
    rows, header = _read(csv_path)
    columns, (coords, form, unit) = _columns(csv_path, header), coordinate_scheme(header)
    root = Path(image_root) if image_root else csv_path.parent
    by_image: dict[str, dict] = {}
    bad: dict[str, list[str]] = {}
    for line, raw in rows:
        cell = {_normal(k): (v or "").strip() for k, v in raw.items() if k is not None}
        _add_row(by_image, bad, line, cell, columns, coords)
    names = sorted({label for entry in by_image.values() for label in entry["labels"]})
    findings = _row_findings(csv_path, bad)
    cases = [Case(case_id=rel, images=(joined(root, rel),), patient_id=e["patient_id"],
                  split=parse_split(e["split"], f"{csv_path} line {e['line']}"),
                  boxes=Boxes(tuple(e["values"]), tuple(names.index(n) for n in e["labels"]), form=form, unit=unit))
             for rel, e in by_image.items()]
    cases, path_findings = check_files(csv_path, root, cases, allow_outside_root_in_force(allow_outside_root))
    return Dataset(csv_path, "box_manifest", Task.DETECTION, tuple(names), cases, spatial_dims=len(coords) // 2,
                   meta={"image_root": str(root), "box_unit": unit, "box_form": form},
                   findings=path_findings + findings)


def _read(csv_path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    header, rows = read_table(csv_path)[:2]
    if coordinate_scheme(header) is None:
        raise DatasetError(f"{csv_path}: no box coordinate columns; expected x_min, y_min, x_max, y_max[, z_min, "
                           f"z_max], or center_*/size_* (voxels), or center_*_mm with size_*_mm or diameter_mm; "
                           f"found {header}")
    return rows, header


def _columns(csv_path: Path, header: list[str]) -> dict[str, str]:
    names = {_normal(h) for h in header}
    columns = {role: next((n for n in options if n in names), None)
               for role, options in COLUMNS.items() if role in ("image", "label", "patient_id", "split")}
    for role in ("image", "label"):
        if columns[role] is None:
            raise DatasetError(f"{csv_path}: no {role} column; expected one of {', '.join(COLUMNS[role])}, found "
                               f"{header}")
    return columns


def _add_row(by_image: dict, bad: dict, line: int, cell: dict, columns: dict, coords: list[str]) -> None:
    """Add one row's box (or nothing, for a negative) to its image's entry; problems go to ``bad[code]``."""
    rel = cell.get(columns["image"], "")
    if not rel:
        bad.setdefault("image", []).append(f"line {line}")
        return
    patient, split = (cell.get(columns[key] or "", "") or None for key in ("patient_id", "split"))
    entry = by_image.setdefault(rel, {"line": line, "patient_id": patient, "split": split, "values": [],
                                      "labels": []})
    if (entry["patient_id"], entry["split"]) != (patient, split):
        bad.setdefault("conflict", []).append(f"line {line} ({rel}) vs line {entry['line']}")
    texts = [cell.get(c, "") for c in coords]
    if not any(texts):
        return
    label = cell.get(columns["label"], "")
    try:
        values = [float(t) for t in texts]
    except ValueError:
        bad.setdefault("number", []).append(f"line {line} ({rel})")
        return
    if label and class_name_problem(label) is None:
        entry["values"].append(tuple(values))  # a diameter column is read once per axis: the sizes
        entry["labels"].append(label)
    else:
        bad.setdefault("label", []).append(f"line {line} ({rel})")


def _row_findings(csv_path: Path, bad: dict[str, list[str]]) -> list[Finding]:
    """Blocking findings for rows without an image, with non-numbers, without a usable label, or in conflict."""
    said = {"image": ("file.missing", "have no image path", "fill it in"),
            "number": ("boxes.invalid", "have coordinates that are not all numbers", "write numbers, or leave all "
                       "coordinates empty for an image without boxes"),
            "label": ("label.missing", "have a box without a usable label (empty, 'nan', a formula...)",
                      "write the class name"),
            "conflict": ("row.conflict", "give an image another patient id or split than its first row",
                         "one image belongs to one patient and one split")}
    findings = []
    for key, where in bad.items():
        code, problem, fix = said[key]
        findings.append(Finding.blocking(code, f"{csv_path}: {len(where)} row(s) {problem} (first: "
                                         f"{'; '.join(where[:3])}); {fix}", where))
    return findings
