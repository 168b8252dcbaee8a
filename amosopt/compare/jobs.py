"""The runs of an ``amos compare`` study (:mod:`~amosopt.compare.plan`), executed in parallel
and resumable.

Each run trains a fresh model from the seed's initialisation on the seed's batch order for
exactly its budget, and is judged at its own end. A finished run is written to
``OUT/runs/KEY.json`` (atomically) the moment it ends, so an interrupted study loses at most the
runs in flight, and running the same command again skips what is done. ``--jobs N`` runs N runs
at once in separate processes, one torch thread each; the main process draws the progress bars
(:mod:`~amosopt.compare.progress`) from their reports.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue as queue_lib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from amosopt.compare import optimizers
from amosopt.compare.plan import PlannedRun
from amosopt.compare.prepare import SeedSetup
from amosopt.compare.progress import ProgressBars
from amosopt.compare.registry import AMOS
from amosopt.compare.train import RunRecord, train

__all__ = ["StudyError", "check_fingerprint", "execute", "load_done", "run_all"]


class StudyError(ValueError):
    """An output folder that holds a study with other settings."""


def load_done(runs_dir: Path) -> dict[str, dict]:
    """The finished runs already in ``runs_dir`` (unreadable files are ignored and redone)."""
    done = {}
    for path in sorted(runs_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        done[record["key"]] = record
    return done


def check_fingerprint(out: Path, fingerprint: dict) -> None:
    """Records the settings that every run of ``out`` shares, or checks them on a resume."""
    path = out / "study.json"
    if path.exists():
        saved = json.loads(path.read_text())
        changed = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
        if changed:
            what = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in
                             changed.items())
            raise StudyError(f"--out {out} holds a study with other settings ({what}); resume "
                             "it with the same settings or choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fingerprint, indent=2) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# One run (in the main process or a worker)

#: per process: the task of each (seed, budget), with its initial weights and Amos settings
_CACHE: dict[Any, Any] = {}
_REPORTS: Any = None  # the queue a worker sends its progress to


def execute(spec: PlannedRun, make_setup: Callable[[int, int], SeedSetup], runs_dir: str,
            progress: Callable[[str, int, float], None] | None = None) -> dict:
    """Trains one run, writes ``runs_dir/KEY.json`` and returns its record."""
    # the settings are part of the key: one process may run several studies (amos compare
    # called twice with --jobs 1), and make_setup is a partial of the study's settings
    key = (spec.seed, spec.budget, repr(make_setup))
    if key not in _CACHE:
        _CACHE.clear()  # one (seed, budget) at a time keeps a worker's memory flat
        _CACHE[key] = make_setup(spec.seed, spec.budget)
    setup: SeedSetup = _CACHE[key]
    model = setup.task.make_model()
    model.load_state_dict(setup.init_state)
    built = optimizers.build(spec.optimizer, model, spec.value, setup.settings)
    run = RunRecord(spec.key, spec.optimizer, spec.value, spec.budget, spec.seed,
              {"schedule": optimizers.schedule_description(spec.optimizer, setup.settings),
               "hyper": optimizers.OPTIMIZERS[spec.optimizer].hyper,
               "lr": built.lr() if spec.optimizer in AMOS else spec.value})
    if _REPORTS is not None:  # a worker: the main process draws the bars
        def callback(done: int, loss: float) -> None:
            _REPORTS.put((spec.key, done, loss))
    elif progress is not None:
        def callback(done: int, loss: float) -> None:
            progress(spec.key, done, loss)
    else:
        callback = None
    train(setup.task, model, built, run, setup.evals, callback)
    record = run.as_dict()
    _write_atomically(Path(runs_dir) / f"{spec.key}.json", json.dumps(record) + "\n")
    return record


def _init_worker(reports: Any) -> None:
    global _REPORTS
    _REPORTS = reports
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Many runs, one at a time or in a pool of processes


def run_all(specs: list[PlannedRun], make_setup: Callable[[int, int], SeedSetup],
            runs_dir: Path, jobs: int, on_done: Callable[[dict], None],
            progress: bool = True) -> None:
    """Runs ``specs`` (``jobs`` at a time) and calls ``on_done(record)`` after each one.

    ``make_setup`` must be picklable (a module-level function or a ``functools.partial`` of
    one) when ``jobs > 1``. A KeyboardInterrupt stops the runs in flight and is re-raised;
    every finished run is on disk already.
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    bars = ProgressBars(specs, progress)
    budgets = {s.key: s.budget for s in specs}
    try:
        if jobs <= 1:
            for spec in specs:
                on_done(execute(spec, make_setup, str(runs_dir),
                                lambda key, done, loss: bars.update(key, done, loss,
                                                                    budgets[key])))
                bars.finish(spec)
        else:
            _run_pool(specs, make_setup, runs_dir, jobs, on_done, bars, budgets)
    finally:
        bars.close()


def _run_pool(specs: Iterable[PlannedRun], make_setup: Callable, runs_dir: Path, jobs: int,
              on_done: Callable[[dict], None], bars: ProgressBars,
              budgets: dict[str, int]) -> None:
    context = multiprocessing.get_context("spawn")  # no fork of torch's thread pools
    reports = context.Queue()
    pool = context.Pool(jobs, initializer=_init_worker, initargs=(reports,))
    try:
        pending = {spec: pool.apply_async(execute, (spec, make_setup, str(runs_dir)))
                   for spec in specs}
        while pending:
            _drain(reports, bars, budgets, wait=0.2)
            for spec in [s for s, result in pending.items() if result.ready()]:
                record = pending.pop(spec).get()  # re-raises a worker's error here
                _drain(reports, bars, budgets, wait=0)
                on_done(record)
                bars.finish(spec)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _drain(reports: Any, bars: ProgressBars, budgets: dict[str, int], wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            key, done, loss = reports.get(timeout=max(0.0, deadline - time.monotonic()))
        except (queue_lib.Empty, OSError, EOFError):
            return
        bars.update(key, done, loss, budgets[key])
