"""A report as data: sections of text, tables and figures, rendered to one HTML file or to Markdown.

Both renderings come from the same :class:`Report`, so ``report.html`` and ``report.md`` always
show the same numbers. The HTML is self-contained: figures are embedded as base64 PNG data URIs
and the style sheet is inline, so the file opens offline and can be mailed as it is.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from medlens._files import write_atomic, write_text_atomic


@dataclass
class Figure:
    """A PNG picture with a caption; ``name`` is its file name stem in the Markdown folder."""

    name: str
    png: bytes
    caption: str = ""
    small: bool = False  # a gallery thumbnail (shown 180 px wide)


@dataclass
class Table:
    """Rows of cell text; ``key`` becomes the HTML ``id`` (tests and scripts find tables by it)."""

    header: list[str]
    rows: list[list[str]]
    key: str = ""
    caption: str = ""


@dataclass
class Html:
    """Markup placed as it is in report.html (the 3D viewer), and the Markdown text standing for it in report.md."""

    html: str
    markdown: str = ""


@dataclass
class Section:
    """A heading and its blocks, in order: ``str`` paragraphs, :class:`Table`, ``list[Figure]`` (a row),
    :class:`Html`."""

    title: str
    blocks: list = field(default_factory=list)
    key: str = ""

    def text(self, paragraph: str) -> Section:
        self.blocks.append(paragraph)
        return self

    def table(self, table: Table) -> Section:
        self.blocks.append(table)
        return self

    def figures(self, *figures: Figure) -> Section:
        if figures:
            self.blocks.append(list(figures))
        return self

    def html(self, block: Html) -> Section:
        self.blocks.append(block)
        return self


@dataclass
class Report:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1f3a5f;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85}nav{padding:6px 32px;background:#e6e9ef;font-size:13px}
nav a{margin-right:14px;color:#1f3a5f;text-decoration:none}main{padding:8px 32px 40px;max-width:1500px}
section{background:#fff;border-radius:8px;padding:14px 20px;margin:14px 0;box-shadow:0 1px 3px #0002}
h2{font-size:18px;margin:4px 0 10px;color:#1f3a5f}p{margin:6px 0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border-bottom:1px solid #e1e4ea;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f6}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:hover td{background:#f7f9fc}
.row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:6px 0;text-align:center}figure img{max-width:100%;border:1px solid #e1e4ea;border-radius:4px}
figure.small img{width:180px}figure.small figcaption{max-width:180px;font-size:11px;overflow-wrap:anywhere}
figcaption{font-size:12px;color:#555;max-width:360px;margin:auto}
.error{color:#b00020;font-weight:600}.warning{color:#a05a00}.info{color:#555}
"""


def render_html(report: Report) -> str:
    """The whole report as one HTML page (no external reference of any kind)."""
    nav = "".join(f'<a href="#{_anchor(s)}">{html.escape(s.title)}</a>' for s in report.sections)
    body = "\n".join(_section_html(s) for s in report.sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{html.escape(report.title)}</h1><p>{html.escape(report.subtitle)}</p></header>"
            f"<nav>{nav}</nav><main>\n{body}\n</main></body></html>\n")


def _anchor(section: Section) -> str:
    return section.key or re.sub(r"[^a-z0-9]+", "-", section.title.lower()).strip("-")


def _section_html(section: Section) -> str:
    parts = [f'<section id="{_anchor(section)}"><h2>{html.escape(section.title)}</h2>']
    for block in section.blocks:
        if isinstance(block, str):
            parts.append(f"<p>{_inline_html(block)}</p>")
        elif isinstance(block, Table):
            parts.append(_table_html(block))
        elif isinstance(block, Html):
            parts.append(block.html)
        else:
            parts.append('<div class="row">' + "".join(_figure_html(f) for f in block) + "</div>")
    return "".join(parts) + "</section>"


def _inline_html(text: str) -> str:
    """Escape, then ``**bold**`` and a leading ``error:`` / ``warning:`` get their colour."""
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    match = re.match(r"(error|warning|info)\b", text)
    return f'<span class="{match.group(1)}">{escaped}</span>' if match else escaped


def _table_html(table: Table) -> str:
    ident = f' id="{html.escape(table.key)}"' if table.key else ""
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    rows = "".join("<tr>" + "".join(_cell_html(c) for c in row) + "</tr>" for row in table.rows)
    return f"<table{ident}>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _cell_html(cell) -> str:
    """A table cell; numbers (and ``value [low, high]``) are right-aligned in tabular figures."""
    text = str(cell)
    numeric = bool(_NUMERIC.match(text)) and (any(ch.isdigit() for ch in text) or text == "n/a")
    return f'<td class="n">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>"


_NUMERIC = re.compile(r"^[-+≈\d.\[\], ]*(n/a)?[-+≈\d.\[\], ]*$")


def _figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    alt = html.escape(figure.caption or figure.name)
    caption = f"<figcaption>{html.escape(figure.caption)}</figcaption>" if figure.caption else ""
    kind = ' class="small"' if figure.small else ""
    return f'<figure{kind}><img src="data:image/png;base64,{data}" alt="{alt}">{caption}</figure>'


def render_markdown(report: Report, files_dir: str) -> tuple[str, dict[str, bytes]]:
    """Markdown text, and the PNG files it references (``files_dir/NAME.png`` -> bytes)."""
    lines, files = [f"# {report.title}", "", report.subtitle, ""], {}
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, Table):
                lines += _table_markdown(block) + [""]
            elif isinstance(block, Html):
                lines += [block.markdown, ""] if block.markdown else []
            else:
                for figure in block:
                    path = f"{files_dir}/{figure.name}.png"
                    files[path] = figure.png
                    lines.append(f"![{figure.caption or figure.name}]({path})")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n", files


def _table_markdown(table: Table) -> list[str]:
    cell = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    lines = [f"**{table.caption}**", ""] if table.caption else []
    lines.append("| " + " | ".join(map(cell, table.header)) + " |")
    lines.append("|" + "|".join("---" for _ in table.header) + "|")
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in table.rows]
    return lines


def write_report_files(report: Report, html_path: Path, markdown: bool = True) -> Path:
    """Write ``html_path`` and, beside it, ``report.md`` with its figures in ``report_files/`` (atomically)."""
    write_text_atomic(html_path, render_html(report))
    if markdown:
        stem = html_path.stem
        text, files = render_markdown(report, f"{stem}_files")
        for stale in (html_path.parent / f"{stem}_files").glob("*.png"):
            if f"{stem}_files/{stale.name}" not in files:
                stale.unlink()
        for relative, data in files.items():
            write_atomic(html_path.parent / relative, lambda f, data=data: f.write(data))
        write_text_atomic(html_path.with_suffix(".md"), text)
    return html_path


def num(value) -> str:
    """A metric value with 4 decimals, ``n/a`` for undefined (``None`` / NaN in metrics.json)."""
    return "n/a" if value is None or value != value else f"{value:.4f}"


def with_ci(entry: dict) -> str:
    """``0.8123 [0.7801, 0.8432]`` (4 decimals, as in metrics.json)."""
    return f"{num(entry['value'])} [{num(entry['ci_low'])}, {num(entry['ci_high'])}]"


def count_phrase(doc: dict) -> str:
    """``"624 cases"``, or ``"624 cases (310 patients)"`` when the bootstrap resampled patients."""
    groups = doc["metrics"].get("n_groups")
    if doc.get("grouped_by") == "patient" and groups is not None:
        return f"{doc['n_cases']} cases ({groups} patients)"
    return f"{doc['n_cases']} cases"

