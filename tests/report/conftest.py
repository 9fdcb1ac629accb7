"""Helpers that read a report back: its images, its tables, its links (the demo runs, trained and
evaluated once per session, are the root conftest's ``cls_run`` and ``seg_run``)."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest


class PageParser(HTMLParser):
    """The ``<img src>`` values, every ``href`` / ``src``, and each table's cells (by table id)."""

    def __init__(self):
        super().__init__()
        self.images, self.links, self.tables = [], [], {}
        self._table, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self.links += [v for k, v in attrs.items() if k in ("href", "src") and v]
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", f"table{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = self._row = None


def parse_page(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    return parser


def decode_png(src: str):
    """The Pillow image of a ``data:image/png;base64,...`` URI (fails on anything else)."""
    from PIL import Image

    assert src.startswith("data:image/png;base64,"), src[:60]
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
    image.load()
    assert image.format == "PNG" and image.width > 0 and image.height > 0
    return image


def external_references(text: str) -> list[str]:
    return re.findall(r"(?:https?:)?//[\w.-]+\.\w+", text.replace("file://", ""))


@pytest.fixture
def pages() -> SimpleNamespace:
    """Helpers to read a report back: ``parse(text)``, ``decode_png(src)``, ``external(text)``."""
    return SimpleNamespace(parse=parse_page, decode_png=decode_png, external=external_references)
