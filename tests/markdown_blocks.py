"""The Python code blocks of the README and the documentation pages, run as a reader would.

Every ```` ```python ```` block of a page runs in the tests, in order, in one namespace per page
(a page's blocks build on each other, as a reader pastes them into one session). A block that is
deliberately not run carries the marker ``<!-- not run: REASON -->`` on the line just above its
fence, REASON saying why (say, it needs several GPUs); ``tests/test_docs.py`` keeps those few and
requires the reason. Other fences (``console``, ``bash``) are shown, not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

_BLOCK = re.compile(r"^(?:<!-- not run: (?P<reason>[^\n]*?) -->\n)?```python\n(?P<code>.*?)^```$",
                    flags=re.S | re.M)


@dataclass(frozen=True)
class Block:
    code: str
    line: int  # of the fence, 1-based
    skip_reason: str | None  # None: the block runs


def python_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    return [Block(m["code"], text.count("\n", 0, m.start("code")), m["reason"])
            for m in _BLOCK.finditer(text)]


def pages() -> list[Path]:
    """The documentation pages (``docs/**/*.md``)."""
    return sorted(DOCS.rglob("*.md"))


@dataclass
class Page:
    """A page's blocks and the namespace they run in; ``run(i)`` runs block ``i`` (blocks are
    run in order), so a test can check the namespace between blocks."""

    path: Path
    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__docs__"})

    def __post_init__(self) -> None:
        self.blocks = [b for b in python_blocks(self.path) if b.skip_reason is None]
        self.done = 0

    def run(self, upto: int | None = None) -> dict[str, Any]:
        """Run the blocks up to block ``upto`` (inclusive; all the rest if None)."""
        last = len(self.blocks) - 1 if upto is None else upto
        assert self.done <= last < len(self.blocks), (self.done, last, len(self.blocks))
        for block in self.blocks[self.done:last + 1]:
            source = "\n" * block.line + block.code  # tracebacks give the page's line numbers
            exec(compile(source, str(self.path), "exec"), self.namespace)  # noqa: S102
        self.done = last + 1
        return self.namespace

    def __getitem__(self, name: str) -> Any:
        return self.namespace[name]

    def check_all_ran(self) -> None:
        assert self.done == len(self.blocks), f"{self.path}: ran {self.done} of {len(self.blocks)}"
