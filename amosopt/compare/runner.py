"""``amos compare``: a study of optimizers across step budgets and seeds, on one task.

Every run of a seed starts from the same initialisation and sees the same batches in the same
order; a budget's runs are judged at their own end. :func:`run_compare` plans the runs
(:mod:`~amosopt.compare.plan`), skips the ones already in ``OUT/runs/``, runs the rest ``jobs``
at a time (:mod:`~amosopt.compare.jobs`, each from its seed's setup in
:mod:`~amosopt.compare.prepare`), and writes ``results.json``, ``report.md`` and the plots
(:mod:`~amosopt.compare.report`).
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from amosopt.compare import jobs, report
from amosopt.compare.config import CompareConfig
from amosopt.compare.describe import describe
from amosopt.compare.environment import default_threads, environment
from amosopt.compare.plan import plan
from amosopt.compare.prepare import seed_setup

__all__ = ["run_compare"]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_compare(config: CompareConfig) -> dict:
    """Runs the study of ``config`` (skipping runs already in ``config.out``), writes
    results.json, report.md and the plots, and returns the results. On KeyboardInterrupt the
    outputs cover the runs finished so far, marked incomplete, and the interrupt is re-raised.
    """
    config.resolve()
    out = Path(config.out)
    jobs.check_fingerprint(out, config.fingerprint())
    threads = 1 if config.jobs > 1 else (config.threads or default_threads())
    torch.set_num_threads(threads)
    specs = plan(config)
    runs_dir = out / "runs"
    done = jobs.load_done(runs_dir)
    todo = [s for s in specs if s.key not in done]
    results: dict[str, Any] = {"complete": False, "config": asdict(config), "started": _now(),
                               **environment(), **describe(config)}
    results["machine"]["torch_threads_per_run"] = threads
    results["planned"] = [s.key for s in specs]
    skipped = len(specs) - len(todo)
    if skipped:
        print(f"amos compare: {skipped} of {len(specs)} runs are already done in {out}: "
              "skipping them", flush=True)

    def on_done(record: dict) -> None:
        done[record["key"]] = record
        results["runs"] = [done[s.key] for s in specs if s.key in done]
        report.write_results(results, out)

    results["runs"] = [done[s.key] for s in specs if s.key in done]
    try:
        jobs.run_all(todo, functools.partial(seed_setup, asdict(config)), runs_dir,
                     config.jobs, on_done, config.progress)
        results["complete"] = True
    except KeyboardInterrupt:
        results["interrupted"] = True
        raise
    finally:
        results["finished"] = _now()
        report.write_outputs(results, out)
    return results
