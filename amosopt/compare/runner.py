"""``amos compare``: a study of optimizers across step budgets and seeds, on one task.

Every run of a seed starts from the same initialisation and sees the same batches in the same
order; a budget's runs are judged at their own end. :func:`run_compare` plans the runs, skips the
ones already in ``OUT/runs/``, runs the rest (``jobs`` at a time), and writes ``results.json``,
``report.md`` and the plots (:mod:`amosopt.compare.report`).
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from amosopt.compare import data as data_lib
from amosopt.compare import jobs, optimizers, report
from amosopt.compare.config import CompareConfig
from amosopt.compare.models import count_parameters
from amosopt.compare.tasks import DigitsTask, LMTask, Task
from amosopt.suggest import suggest

def plan(config: CompareConfig) -> list[jobs.PlannedRun]:
    """Every run, smallest budget first (so that a partial study has whole budgets)."""
    return sorted(jobs.PlannedRun(budget, seed, rank, name, float(value))
                  for budget in config.budgets for seed in config.seeds
                  for rank, name in enumerate(config.optimizers)
                  for value in config.grid(name))


# --------------------------------------------------------------------------------------------
# The task, its initial weights and Amos's settings, per (seed, budget)

_TEXT: dict[Any, Any] = {}  # per process: the loaded data


def build_task(config: CompareConfig, seed: int, budget: int) -> Task:
    if config.task == "lm":
        min_bytes = config.seq_len + 1
        if ("text", config.text) not in _TEXT:
            _TEXT[("text", config.text)] = (data_lib.load_text_file(config.text, min_bytes)
                                            if config.text else
                                            data_lib.load_stdlib_text(min_bytes))
        return LMTask(_TEXT[("text", config.text)], steps=budget, seed=seed,
                      batch_size=config.batch_size, seq_len=config.seq_len, width=config.width,
                      layers=config.layers, heads=config.heads,
                      eval_batches=config.eval_batches)
    if "digits" not in _TEXT:
        _TEXT["digits"] = data_lib.load_digits_data()
    return DigitsTask(_TEXT["digits"], steps=budget, seed=seed, batch_size=config.batch_size,
                      channels=config.channels)


def _amos_scales(config: CompareConfig, model: torch.nn.Module, example: Any):
    """(eta, slot_shape, table) for Amos: automatic, or the ablations' overrides."""
    from amosopt.torch import auto_scales

    scales = auto_scales(model, example_inputs=example)
    k = config.amos_eta_scale
    if config.amos_eta is not None:
        eta = k * float(config.amos_eta)
    elif k != 1:
        eta = functools.partial(_scaled_eta, scales.eta, k)
    else:
        eta = scales.eta
    slot_shape = scales.slot_shape if config.amos_slots == "factored" else None
    scaled = f" x {k:g} (--amos-eta-scale)" if k != 1 else ""
    table = [{"name": name, "shape": list(p.shape),
              "eta": k * float(scales[name].eta if config.amos_eta is None else config.amos_eta),
              "slot_shape": list(scales[name].slot_shape if slot_shape else p.shape),
              "reason": (str(scales[name].reason) if config.amos_eta is None
                         else f"one eta for all (--amos-eta {config.amos_eta:g})") + scaled}
             for name, p in model.named_parameters()]
    return eta, slot_shape, table


def _scaled_eta(eta: Any, k: float, name: str, shape: tuple) -> float:
    return k * eta(name, shape)


def seed_setup(config_dict: dict, seed: int, budget: int) -> jobs.SeedSetup:
    """The model's initialisation for ``seed`` and every run's settings at ``budget``."""
    return _seed_setup(CompareConfig(**config_dict), seed, budget)[0]


def _seed_setup(config: CompareConfig, seed: int, budget: int
                  ) -> tuple[jobs.SeedSetup, list[dict]]:
    """:func:`seed_setup`, and Amos's scales table for the report (one trace of the model)."""
    task = build_task(config, seed, budget)
    torch.manual_seed(seed)
    model = task.make_model()
    _warm_up(task, model)
    suggestion = suggest(task.train_examples, config.batch_size, "mean")
    eta, slot_shape, table = _amos_scales(config, model, task.batch(0)[0])
    settings = optimizers.OptimizerSettings(
        budget=budget, xi=suggestion.xi / config.amos_eta_scale, beta=suggestion.beta,
        clip_value=suggestion.clip_value, eta=eta, slot_shape=slot_shape,
        amos_momentum=config.amos_momentum, amos_beta=config.amos_beta,
        amos_warmup=config.amos_warmup, amos_second_moment=config.amos_second_moment,
        warmup_fraction=config.warmup_fraction,
        cooldown_fraction=config.cooldown_fraction, cooldown=config.cooldown,
        adamw_weight_decay=config.adamw_weight_decay, adamw_beta1=config.adamw_beta1,
        amos_decay_ratio=config.amos_decay_ratio)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    return jobs.SeedSetup(task, init_state, settings, config.evals), table


def _warm_up(task: Task, model: torch.nn.Module) -> None:
    """A few untimed forward/backward passes, so one-time costs (thread pools, kernel
    selection) do not land on the first run's clock."""
    for step in range(3):
        inputs, targets = task.batch(step)
        task.loss(model, inputs, targets).backward()
    model.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------------


def default_threads() -> int:
    """torch's default thread count, less the cores other processes keep busy (1-minute load
    average): with 2 threads on a 2-core machine that is busy elsewhere, torch's threads wait
    for each other and a step takes several times longer than with 1 thread."""
    threads = torch.get_num_threads()
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):
        return threads
    return max(1, min(threads, (os.cpu_count() or threads) - busy))


def environment() -> dict:
    import numpy

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__}
    for module in ("amosopt", "tqdm", "matplotlib", "sklearn", "schedulefree"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            versions[module] = None
    return {
        "versions": versions,
        "machine": {
            "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    }


def _describe(config: CompareConfig) -> dict:
    """The task, the suggestion, the scales and the state sizes (seed 0's model) for the
    report."""
    from amosopt.compare.train import probe_state_bytes

    budget = max(config.budgets)
    task = build_task(config, config.seeds[0], budget)
    if config.batch_size > task.train_examples:
        raise data_lib.DataError(
            f"invalid --batch-size: {config.batch_size} is larger than the "
            f"{task.train_examples} training examples; use at most {task.train_examples}")
    setup, table = _seed_setup(config, config.seeds[0], budget)
    model = task.make_model()
    model.load_state_dict(setup.init_state)
    memory = {}
    for name, momentum in (("amos_momentum_0", 0.0), ("amos_momentum_0.9", 0.9),
                           ("adamw", None)):
        settings = replace(setup.settings, amos_momentum=momentum or 0.0)
        memory[name] = probe_state_bytes(task, model, functools.partial(
            optimizers.build, "adamw" if momentum is None else "amos", value=1e-3,
            settings=settings))
    source = "amosopt.torch.auto_scales"
    if config.amos_eta is not None:
        source += f", eta overridden to {config.amos_eta:g}"
    if config.amos_decay_ratio != 1:
        source += f", decay_ratio {config.amos_decay_ratio:g}"
    if config.amos_eta_scale != 1:
        source += f", eta x {config.amos_eta_scale:g} with xi / {config.amos_eta_scale:g}"
    if config.amos_slots != "factored":
        source += ", full-size slots"
    if config.amos_second_moment != "slot":
        source += f", second moment {config.amos_second_moment}"
    return {
        "task": {"name": task.name, "data": task.description,
                 "parameters": count_parameters(model), "train_examples": task.train_examples,
                 "batch_size": config.batch_size},
        "suggestion": suggest(task.train_examples, config.batch_size, "mean").as_dict(),
        "scales": {"source": source, "table": table},
        "probe_state_bytes": memory,
    }


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
                               **environment(), **_describe(config)}
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
