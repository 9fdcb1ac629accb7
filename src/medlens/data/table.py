"""Reading a manifest's rows as spreadsheets write them: the delimiter, decimal commas, header spellings and
blank rows.

Excel in a European locale saves "CSV" with semicolons and writes decimals with a comma (``0,715``), a ``.tsv``
has tabs, headers come as ``Patient ID`` or `` Image ``, and a sheet often ends in rows of empty cells.
:func:`read_table` takes all of these; what the rows mean is the manifest readers' business.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import NamedTuple

from medlens.errors import DatasetError

DELIMITERS = (",", ";", "\t")
DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")  # 0,715: a number where the decimal separator is a comma


class Table(NamedTuple):
    """A CSV's header as written, its rows ``[(line number, {header: cell})]``, the columns where decimal
    commas were read as points (a semicolon-separated file: ``0,715`` -> ``0.715``), and the text encoding when
    it was not UTF-8 (``"cp1252"``: what Excel's plain "CSV" saves on Windows in Western Europe and the Americas)."""

    header: list[str]
    rows: list[tuple[int, dict]]
    decimal_commas: tuple[str, ...] = ()
    encoding: str = "utf-8"


def read_table(path: Path) -> Table:
    """The header and the rows of a CSV / TSV, each row with its line number in the file.

    The delimiter is the comma unless the header line holds none and holds semicolons or tabs (a
    ``.tsv`` is tab-separated). Rows whose every cell is empty are left out. In a semicolon-separated file
    (what spreadsheets save where the comma is the decimal separator) a cell that is a number written with a
    decimal comma (``0,715``, ``-1,5``) reads as that number with a point; in a comma- or tab-separated file
    ``1,234`` may be a thousands separator, so cells stay as written there.

    Text that is not UTF-8 is read as Windows-1252 (Excel's plain "CSV" on Windows, where ``é`` is one byte)
    when it decodes so and holds no NUL byte.

    Returns:
        :class:`Table`: header as written, [(line number of the row's last physical line, {header: cell text})],
        the columns with a decimal comma read as a point, the encoding.

    Raises:
        DatasetError: neither UTF-8 nor Windows-1252 text, a malformed CSV (an unbalanced quote), or no data rows.
    """
    text, encoding = _text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=(delimiter := _delimiter(path, text)))
    try:
        rows = [(reader.line_num, row) for row in reader if any((v or "").strip() for v in _cells(row))]
        header = list(reader.fieldnames or [])
    except csv.Error as exc:
        raise DatasetError(f"{path} line {reader.line_num}: malformed CSV ({exc}); check for an unbalanced "
                           "quote") from None
    if not rows:
        raise DatasetError(f"{path}: the CSV has no data rows (header: {header})")
    return Table(header, rows, _decimal_points(rows) if delimiter == ";" else (), encoding)


def _text(path: Path) -> tuple[str, str]:
    """The file's text (a byte-order mark dropped) and its encoding: UTF-8, else Windows-1252."""
    data = Path(path).read_bytes()
    if (decoded := _decoded(data)) is not None:
        return decoded
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = data[:exc.start].count(b"\n") + 1
    raise DatasetError(f"{path}: not a text CSV (line {where} is neither UTF-8 nor Windows-1252 text); save it as "
                       "CSV (UTF-8)")


def _decoded(data: bytes) -> tuple[str, str] | None:
    """``(text, encoding)`` of ``data`` as UTF-8 (a byte-order mark dropped), else as Windows-1252 when it holds no
    NUL byte and decodes so; ``None`` otherwise."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    if b"\0" not in data:
        try:
            return data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            pass
    return None


def read_header(path: Path) -> list[str]:
    """The header line's cells (``[]`` when the file is no readable text)."""
    try:
        with open(path, "rb") as f:
            decoded = _decoded(f.readline(64 * 1024))
    except OSError:
        return []
    if decoded is None:
        return []
    try:
        return next(csv.reader([decoded[0]], delimiter=_delimiter(path, decoded[0])), [])
    except csv.Error:
        return []


def normal_name(header: str) -> str:
    """A header cell as the readers match it: ``" Patient ID"`` and ``patient-id`` -> ``patient_id``."""
    return " ".join((header or "").split()).lower().replace(" ", "_").replace("-", "_")


def _delimiter(path: Path, text: str) -> str:
    """The delimiter the header line (the first line of ``text``) uses."""
    end = text.find("\n")
    first_line = text if end < 0 else text[:end]
    if path.suffix.lower() == ".tsv":
        return "\t"
    if "," in first_line:
        return ","
    return max(DELIMITERS[1:], key=first_line.count) if any(d in first_line for d in DELIMITERS[1:]) else ","


def _decimal_points(rows: list[tuple[int, dict]]) -> tuple[str, ...]:
    """Rewrite, in place, every cell that is a number with a decimal comma with a point; the columns touched."""
    touched = []
    for _, row in rows:
        for key, cell in row.items():
            if isinstance(cell, str) and DECIMAL_COMMA.fullmatch(cell.strip()):
                row[key] = cell.strip().replace(",", ".")
                if key not in touched:
                    touched.append(key)
    return tuple(touched)


def _cells(row: dict) -> list:
    """A row's cells, the overflow of a row longer than the header (DictReader's ``None`` key) included."""
    extra = row.get(None) or []
    return [v for k, v in row.items() if k is not None] + list(extra)
