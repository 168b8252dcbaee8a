"""``amos compare``: Amos against a tuned AdamW on real data (torch; heavy imports live here).

:func:`run_compare` takes a :class:`CompareConfig` and writes ``results.json``, ``report.md`` and
the plots (:mod:`amosopt.compare.report`); the command line in :mod:`amosopt.commands.compare`
fills the config. ``run_compare`` (torch) is imported on first use, so that the settings
(:mod:`amosopt.compare.config`) and the optimizer names (:mod:`amosopt.compare.registry`) read
without torch.
"""

from __future__ import annotations

from typing import Any

from amosopt.compare.config import DEFAULTS, CompareConfig

__all__ = ["DEFAULTS", "CompareConfig", "run_compare"]


def __getattr__(name: str) -> Any:
    if name == "run_compare":
        from amosopt.compare.runner import run_compare

        return run_compare
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
