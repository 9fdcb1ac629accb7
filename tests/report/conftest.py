"""Short demo runs (classification and segmentation), trained and evaluated once per session, and
helpers that read a report back: its images, its tables, its links."""

from __future__ import annotations

import base64
import contextlib
import io
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

FAST = ["--set", "train.max_epochs=3", "--set", "train.patience=50", "--no-progress"]
SEG_FAST = ["--set", "train.max_epochs=1", "--set", "segment.iterations_per_epoch=30", "--set",
            "train.patience=50", "--no-progress"]


@pytest.fixture(scope="session")
def report_demo(tmp_path_factory) -> Path:
    """The demo dataset (seed 0), written once; tests must not modify it."""
    from medlens.data.synthetic import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("report-demo") / "demo")


def _main(*argv) -> str:
    """``medlens ARGV`` in this process; what it printed (fails on a non-zero exit)."""
    from medlens.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main([str(a) for a in argv]) == 0
    return printed.getvalue()


def _train_then_evaluate(data: Path, out: Path, fast: list[str]) -> SimpleNamespace:
    """Train, keep what the report looked like then, evaluate; the run and both reports."""
    train_out = _main("train", data, "--out", out, *fast)
    after_train = SimpleNamespace(html=(out / "report.html").read_text(), md=(out / "report.md").read_text(),
                                  out=train_out)
    return SimpleNamespace(root=out, after_train=after_train, eval_out=_main("evaluate", out, "--bootstrap", "50"))


@pytest.fixture(scope="session")
def cls_run(tmp_path_factory, report_demo) -> SimpleNamespace:
    """A 3-epoch demo classification run, evaluated on its test split."""
    return _train_then_evaluate(report_demo / "classification.csv", tmp_path_factory.mktemp("report-cls") / "run",
                                FAST)


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory, report_demo) -> SimpleNamespace:
    """A 1-epoch demo segmentation run (3D lesions), evaluated on its 3 test volumes."""
    return _train_then_evaluate(report_demo / "segmentation", tmp_path_factory.mktemp("report-seg") / "run",
                                SEG_FAST)


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
