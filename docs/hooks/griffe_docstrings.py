"""Griffe extension: read medlens docstrings (Google style with a few reST habits) as Markdown.

mkdocstrings renders docstrings as Markdown, and three habits of the medlens docstrings would
either fail ``mkdocs build --strict`` or render badly. Before a docstring is parsed, this
extension rewrites its text (the source is never touched):

1. **Grouped parameters** in ``Args:`` sections (``train_x, val_x, test_x: ...``) become one entry
   per name with the same description. Google style has one parameter per line, so griffe would
   read the group as one unknown name and warn, which fails ``--strict``. Each name is then checked
   against the signature like any other.
2. **Sphinx roles** (``:func:`fit`, :class:`~medlens.io.Image```) become inline code
   (```fit```, ```Image```; ``~`` keeps the last component as Sphinx does). Without this they show as
   ``:func:`` followed by code. (A Markdown cross-reference, ``[Image][medlens.io.Image]``, would be
   a checked link; these are plain code because the role targets are often relative names.)
3. **Doctest lines** (``>>> ...`` and their ``...`` continuations outside an ``Examples:`` section)
   are fenced as ``pycon`` code; Markdown would otherwise read ``>>>`` as nested block quotes.
   A reST literal-block marker (a paragraph ending in ``::``) becomes a single ``:``; the indented
   block after it is already Markdown code.

Each rule does nothing to a docstring that is already plain Google style + Markdown, so the
extension can be dropped from ``mkdocs.yml`` (``extensions:``) once the docstrings are converted.
"""

from __future__ import annotations

import re

import griffe

SECTION = re.compile(r"^(?P<indent>\s*)(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|"
                     r"Other Parameters):\s*$")
ANY_SECTION = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
GROUPED = re.compile(r"^(?P<indent>\s+)(?P<names>\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)"
                     r"(?P<rest>\s*(?:\([^)]*\))?:(?:\s.*)?)$")
ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const|term|ref):`(?P<tilde>~?)(?P<target>[^`]+)`")
PROMPT = re.compile(r"^(?P<indent>\s*)>>>(\s|$)")


def normalize(text: str) -> str:
    return _fence_doctests(_literal_markers(ROLE.sub(_role, _split_grouped(text))))


def _role(match: re.Match) -> str:
    target = match.group("target").strip()
    if match.group("tilde"):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _literal_markers(text: str) -> str:
    # "text::" at the end of a paragraph line -> "text:"; a lone "::" line disappears
    return re.sub(r"(?m)^[ \t]*::[ \t]*$", "", re.sub(r"(?m)(\S)::[ \t]*$", r"\1:", text))


def _fence_doctests(text: str) -> str:
    lines, out, i, in_examples = text.split("\n"), [], 0, False
    while i < len(lines):
        line = lines[i]
        if ANY_SECTION.match(line):
            in_examples = line.strip().rstrip(":") in ("Examples", "Example")
        prompt = PROMPT.match(line)
        if not prompt or in_examples:
            out.append(line)
            i += 1
            continue
        indent = prompt.group("indent")
        block = []  # a doctest block runs to the next blank line (prompts, continuations, output)
        while i < len(lines) and lines[i].strip():
            block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].strip())
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def _split_grouped(text: str) -> str:
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        header = SECTION.match(lines[i])
        out.append(lines[i])
        i += 1
        if not header:
            continue
        base, item_indent = len(header.group("indent")), None
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            line = lines[i]
            if line.strip() and item_indent is None:
                item_indent = _indent(line)
            match = GROUPED.match(line) if line.strip() and _indent(line) == item_indent else None
            if not match:
                out.append(line)
                i += 1
                continue
            j = i + 1  # the item's continuation lines are indented deeper than the item
            while j < len(lines) and lines[j].strip() and _indent(lines[j]) > item_indent:
                j += 1
            for name in (n.strip() for n in match.group("names").split(",")):
                out += [f"{match.group('indent')}{name}{match.group('rest')}", *lines[i + 1:j]]
            i = j
    return "\n".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


class MedlensDocstrings(griffe.Extension):
    """Rewrite every docstring with :func:`normalize` before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = normalize(obj.docstring.value)
