"""MkDocs hook: the command-line reference, generated from medlens' own argument parser at every build.

``docs/reference/cli.md`` holds the prose; the line ``<!-- cli-reference -->`` in it is replaced by
one section per subcommand with the exact text ``medlens COMMAND --help`` prints. The parser is
built by ``medlens.cli.build_parser()`` imported from ``src/`` (the console script imports nothing
heavy, so the docs environment needs no torch). No command is named here: a new or renamed
subcommand appears on the next build.
"""

from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from plan_reference import import_fresh  # MkDocs puts the hook's folder on sys.path while loading it

PAGE = "reference/cli.md"
MARKER = "<!-- cli-reference -->"
WIDTH = 100
ANSI = re.compile(r"\x1b\[[0-9;]*m")

_src: Path | None = None


def on_config(config):
    global _src
    _src = Path(config.config_file_path).resolve().parent / "src"
    return config


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"cli_reference hook: {PAGE} must contain the line {MARKER}")
    return markdown.replace(MARKER, render(_src))


def render(src: Path) -> str:
    cli = import_fresh(src, "medlens.cli")
    parser = cli.build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions or not actions[0].choices:
        raise PluginError("cli_reference hook: medlens.cli.build_parser() has no subcommands")
    blocks = [_block("medlens", parser)]
    for name, sub in actions[0].choices.items():
        blocks.append(_block(f"medlens {name}", sub))
    return "\n".join(blocks)


def _block(title: str, parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = functools.partial(parser.formatter_class, width=WIDTH)
    if hasattr(parser, "color"):  # Python 3.14+: no ANSI colours in the page
        parser.color = False
    text = ANSI.sub("", parser.format_help()).rstrip()
    slug = title.replace(" ", "-")
    lines = [f"## `{title}` {{#{slug}}}", "", "```text", text, "```", ""]
    return "\n".join(lines)
