"""MkDocs hook: the package's docstrings use Sphinx roles (``:class:`Amos```, ``:math:`\\xi```),
which Markdown renders as the role's name before the code span; drop the role, keep the code."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|math|ref):(?=<code>)")


def on_page_content(html: str, **_: object) -> str:
    return ROLE.sub("", html)
