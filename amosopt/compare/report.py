"""Outputs of ``amos compare``: ``results.json`` (with the summary,
:mod:`~amosopt.compare.summary`), ``report.md`` (:mod:`~amosopt.compare.markdown`),
``frontier.png``, ``schedules.png`` and one ``loss_BUDGET.png`` per budget
(:mod:`~amosopt.compare.plots`).
"""

from __future__ import annotations

import json
from pathlib import Path

from amosopt.compare.markdown import markdown
from amosopt.compare.plots import plot_curves, plot_frontier, plot_schedules
from amosopt.compare.summary import summarize

__all__ = ["write_outputs", "write_results"]


def write_results(results: dict, out: Path) -> None:
    """results.json (with the summary); cheap enough to call after every run."""
    out.mkdir(parents=True, exist_ok=True)
    results["summary"] = summarize(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_outputs(results: dict, out: Path) -> None:
    """results.json, report.md, frontier.png, loss_BUDGET.png and schedules.png."""
    write_results(results, out)
    plot_frontier(results, out / "frontier.png")
    for budget in results["config"]["budgets"]:
        plot_curves(results, budget, out / f"loss_{budget}.png")
    results["schedules_plot"] = plot_schedules(results, out / "schedules.png")
    (out / "report.md").write_text(markdown(results))
