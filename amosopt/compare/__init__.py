"""``amos compare``: Amos against a tuned AdamW on real data (torch; heavy imports live here).

:func:`run_compare` takes a :class:`CompareConfig` and writes ``results.json``, ``loss.png`` and
``report.md``; the command line in :mod:`amosopt.commands.compare` fills the config. The names
below are imported on first use, so that the torch-free :mod:`amosopt.compare.registry` can be
read without torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "CompareConfig", "run_compare"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from amosopt.compare import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
