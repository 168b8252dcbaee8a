"""Griffe extension for the API reference: the package's docstrings are Google style with two
reStructuredText habits that Markdown does not know. Doctest examples (``>>>`` lines and their
output) become ``pycon`` code wherever they stand (Google style fences only an ``Examples:``
section; ours also sit under ``Example:`` or in the body), and ``.. math::`` blocks become
``tex`` code (shown as written: rendering TeX would need MathJax, which the offline site does
not load)."""

from __future__ import annotations

import textwrap
from typing import Any

import griffe


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def fence_math(lines: list[str]) -> list[str]:
    """``.. math::`` and the more-indented lines after it -> a ``tex`` fence."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != ".. math::":
            out.append(lines[i])
            i += 1
            continue
        indent, j = _indent(lines[i]), i + 1
        while j < len(lines) and (not lines[j].strip() or len(_indent(lines[j])) > len(indent)):
            j += 1
        body = textwrap.dedent("\n".join(lines[i + 1:j])).strip("\n").splitlines()
        out += [f"{indent}```tex", *(f"{indent}{b}" if b else "" for b in body), f"{indent}```", ""]
        i = j
    return out


def fence_doctests(lines: list[str]) -> list[str]:
    """Each run of doctest lines (a ``>>>`` line to the next blank line) -> a ``pycon`` fence."""
    out: list[str] = []
    indent: str | None = None  # the open fence's indentation, None outside a fence
    for line in lines:
        if indent is None and line.lstrip().startswith(">>>"):
            indent = _indent(line)
            out.append(f"{indent}```pycon")
        elif indent is not None and not line.strip():
            out.append(f"{indent}```")
            indent = None
        out.append(line)
    if indent is not None:
        out.append(f"{indent}```")
    return out


class FenceDoctests(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        text = obj.docstring.value if obj.docstring is not None else ""
        if ">>>" in text or ".. math::" in text:
            obj.docstring.value = "\n".join(fence_doctests(fence_math(text.splitlines())))
