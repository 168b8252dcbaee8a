"""``amos compare``: Amos against a tuned AdamW on real data (torch; heavy imports live here).

:func:`run_compare` takes a :class:`CompareConfig` and writes ``results.json``, ``loss.png`` and
``report.md``; the command line in :mod:`amosopt.commands.compare` fills the config.
"""

from amosopt.compare.runner import DEFAULTS, CompareConfig, run_compare

__all__ = ["DEFAULTS", "CompareConfig", "run_compare"]
