"""MkDocs hook: the plan reference, generated from ``src/medlens/config.py`` at every build.

``docs/reference/plan.md`` holds the prose; the line ``<!-- plan-reference -->`` in it is replaced
by one section per plan section (a dataclass field of ``Config``), in the order ``Config`` lists
them, each with its docstring and a table of its keys:

- **type** from the resolved annotation (``Literal`` choices listed, tuples written as YAML lists),
- **default** as the plan file writes it (YAML flow style, e.g. ``[28, 28]``, ``''``),
- **description** from the inline ``# comment`` on the field's line(s) in config.py; a field
  without one gets no description. Lint pragmas (``# noqa``, ``# type: ignore``...) are dropped.

The module is imported from ``src/`` (it needs only PyYAML) for the types and defaults; the
docstrings and comments are read from its source with ``ast`` and ``tokenize`` (a dataclass
without a docstring gets an auto-generated ``__doc__``, which must not be shown). Nothing here
names a section or a key, so the page follows config.py as it changes. Any surprise (no marker,
no sections, an import error) stops the build with a message instead of writing a stale or
empty page.
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import html
import importlib
import io
import re
import sys
import tokenize
import types
import typing
from pathlib import Path

import yaml
from mkdocs.exceptions import PluginError

PAGE = "reference/plan.md"
MARKER = "<!-- plan-reference -->"
MODULE = "medlens.config"
ROOT_CLASS = "Config"
PRAGMA = re.compile(r"\s*#?\s*\b(noqa|type:\s*ignore|pragma:|fmt:|pylint:|ruff:|mypy:|pyright:)\b.*$")

_src: Path | None = None


def on_config(config):
    global _src
    _src = Path(config.config_file_path).resolve().parent / "src"
    return config


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"plan_reference hook: {PAGE} must contain the line {MARKER}")
    return markdown.replace(MARKER, render(_src))


# ---- reading config.py --------------------------------------------------------------------------

def import_fresh(src: Path, name: str):
    """Import ``name`` from ``src`` (not from an installed medlens), fresh on every build (``mkdocs serve``)."""
    for loaded in [m for m in sys.modules if m == "medlens" or m.startswith("medlens.")]:
        del sys.modules[loaded]
    sys.path.insert(0, str(src))
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # any failure stops the build, naming the module
        raise PluginError(f"docs hook: cannot import {name} from {src} ({type(exc).__name__}: {exc}); it must "
                          "import without torch or numpy, with PyYAML only, for the docs to build") from exc
    finally:
        sys.path.remove(str(src))
    if not Path(module.__file__).resolve().is_relative_to(src):
        raise PluginError(f"docs hook: {name} was imported from {module.__file__}, not from {src}")
    return module


def source_notes(path: Path) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """Class docstrings by class name, and inline field comments by (class name, field name)."""
    text = path.read_text(encoding="utf-8")
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string
    docstrings, notes = {}, {}
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.ClassDef):
            continue
        docstrings[node.name] = ast.get_docstring(node) or ""
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                found = [_clean(comments[n]) for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments]
                notes[(node.name, stmt.target.id)] = " ".join(c for c in found if c)
    return docstrings, notes


def _clean(comment: str) -> str:
    return PRAGMA.sub("", comment.lstrip("#").strip()).strip()


# ---- rendering ----------------------------------------------------------------------------------

def render(src: Path) -> str:
    module = import_fresh(src, MODULE)
    root = getattr(module, ROOT_CLASS, None)
    if root is None or not dataclasses.is_dataclass(root):
        raise PluginError(f"plan_reference hook: {MODULE}.{ROOT_CLASS} is not a dataclass")
    docstrings, notes = source_notes(Path(module.__file__))
    root_hints = typing.get_type_hints(root)
    blocks = []
    for section in dataclasses.fields(root):
        cls = root_hints[section.name]
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise PluginError(f"plan_reference hook: {ROOT_CLASS}.{section.name} is not a dataclass section")
        blocks.append(_section(section.name, cls, docstrings, notes))
    if not blocks:
        raise PluginError(f"plan_reference hook: {MODULE}.{ROOT_CLASS} has no sections")
    return "\n".join(blocks)


def _section(name: str, cls: type, docstrings: dict, notes: dict) -> str:
    hints = typing.get_type_hints(cls)
    lines = [f"## `{name}` {{#{name}}}", ""]
    doc = _docstring(cls, docstrings)
    if doc:
        lines += [doc, ""]
    lines += [f"In `plan.yaml`: the `{name}:` block. On the command line: `--set {name}.KEY=VALUE`.", "",
              "| key | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        anchor = f'<a id="{name}.{f.name}"></a>'
        note = _comment(cls, f.name, notes)
        lines.append(f"| {anchor}`{f.name}` | {_type(hints[f.name])} | {_default(f)} | {_cell(note)} |")
    return "\n".join(lines) + "\n"


def _docstring(cls: type, docstrings: dict) -> str:
    for klass in cls.__mro__:  # a section without a docstring shows none, not the dataclass signature
        if docstrings.get(klass.__name__):
            return docstrings[klass.__name__]
    return ""


def _comment(cls: type, key: str, notes: dict) -> str:
    for klass in cls.__mro__:  # an inherited field keeps the comment of the class that declares it
        if (klass.__name__, key) in notes:
            return notes[(klass.__name__, key)]
    return ""


def _type(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{_yaml(a)}`" for a in args)
    if _is_union(origin):
        return " or ".join(_type(a) for a in args)
    return f"`{_type_name(hint)}`"


def _is_union(origin) -> bool:
    return origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType)


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return " | ".join(_yaml(a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence):
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            return "[" + ", ".join(_type_name(a) for a in args) + "]"
        return f"list[{_type_name(args[0]) if args else 'any'}]"
    if origin in (dict, collections.abc.Mapping):
        return f"mapping[{', '.join(_type_name(a) for a in args)}]" if args else "mapping"
    if _is_union(origin):
        return " | ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "null"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "*(required)*"
    return f"`{_yaml(value)}`"


def _yaml(value) -> str:
    """A value as the plan file writes it (YAML flow style)."""
    plain = _plain(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
    text = yaml.safe_dump(plain, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").strip().replace("|", "\\|")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|")
