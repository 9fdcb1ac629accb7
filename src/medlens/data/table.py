"""Reading a manifest's rows as spreadsheets write them: the delimiter, header spellings and blank rows.

Excel in a European locale saves "CSV" with semicolons, a ``.tsv`` has tabs, headers come as
``Patient ID`` or `` Image ``, and a sheet often ends in rows of empty cells. :func:`read_table` takes
all of these; what the rows mean is the manifest readers' business.
"""

from __future__ import annotations

import csv
from pathlib import Path

from medlens.errors import DatasetError

DELIMITERS = (",", ";", "\t")


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header and the rows of a CSV / TSV, each row with its line number in the file.

    The delimiter is the comma unless the header line holds none and holds semicolons or tabs (a
    ``.tsv`` is tab-separated). Rows whose every cell is empty are left out.

    Returns:
        (header as written, [(line number of the row's last physical line, {header: cell text})]).

    Raises:
        DatasetError: not UTF-8 text, a malformed CSV (an unbalanced quote), or no data rows.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            delimiter = _delimiter(path, f.readline())
            f.seek(0)  # (the utf-8-sig decoder skips the byte-order mark again)
            reader = csv.DictReader(f, delimiter=delimiter)
            rows = [(reader.line_num, row) for row in reader if any((v or "").strip() for v in _cells(row))]
            header = list(reader.fieldnames or [])
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text CSV; save it as CSV (UTF-8)") from None
    except csv.Error as exc:
        raise DatasetError(f"{path} line {reader.line_num}: malformed CSV ({exc}); check for an unbalanced "
                           "quote") from None
    if not rows:
        raise DatasetError(f"{path}: the CSV has no data rows (header: {header})")
    return header, rows


def read_header(path: Path) -> list[str]:
    """The header line's cells (``[]`` when the file is no readable text)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            line = f.readline()
    except (UnicodeDecodeError, OSError):
        return []
    try:
        return next(csv.reader([line], delimiter=_delimiter(path, line)), [])
    except csv.Error:
        return []


def normal_name(header: str) -> str:
    """A header cell as the readers match it: ``" Patient ID"`` and ``patient-id`` -> ``patient_id``."""
    return " ".join((header or "").split()).lower().replace(" ", "_").replace("-", "_")


def _delimiter(path: Path, first_line: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    if "," in first_line:
        return ","
    return max(DELIMITERS[1:], key=first_line.count) if any(d in first_line for d in DELIMITERS[1:]) else ","


def _cells(row: dict) -> list:
    """A row's cells, the overflow of a row longer than the header (DictReader's ``None`` key) included."""
    extra = row.get(None) or []
    return [v for k, v in row.items() if k is not None] + list(extra)
