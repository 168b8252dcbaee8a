"""``amos compare``: Amos against a tuned AdamW on one task, same model, init and data order."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from amosopt.compare import data as data_lib
from amosopt.compare import report, train
from amosopt.compare.models import count_parameters
from amosopt.compare.tasks import DigitsTask, LMTask, Task
from amosopt.suggest import suggest

#: per task: (full, quick) settings; the command-line flags override them. The AdamW sweeps
#: bracket the best rate seen on every seed we ran (a best rate at an edge of the sweep is
#: flagged in the report).
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "lm": {
        # 2000 steps, seed 0, with 5e-4..8e-3 the best was 8e-3, at the top edge: moved up
        "full": {"steps": 2000, "adamw_lrs": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2], "evals": 20,
                 "eval_batches": 8},
        "quick": {"steps": 400, "adamw_lrs": [3e-4, 1e-3, 3e-3, 1e-2], "evals": 16,
                  "eval_batches": 4},
    },
    "digits": {
        "full": {"steps": 1500, "adamw_lrs": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "evals": 30,
                 "eval_batches": 0},
        "quick": {"steps": 400, "adamw_lrs": [3e-3, 1e-2, 3e-2, 1e-1], "evals": 20,
                  "eval_batches": 0},
    },
}


@dataclass
class CompareConfig:
    """Every setting of a comparison (written to results.json)."""

    task: str = "lm"
    text: str | None = None
    steps: int | None = None
    seed: int = 0
    quick: bool = False
    out: str | None = None
    batch_size: int = 32
    adamw_lrs: list[float] | None = None
    adamw_warmup: float = 0.05
    amos_warmup: int = 0
    amos_momentum: float = 0.9
    evals: int | None = None
    eval_batches: int | None = None
    threads: int | None = None
    seq_len: int = 128
    width: int = 128
    layers: int = 2
    heads: int = 4
    channels: int = 16
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def resolve(self) -> CompareConfig:
        """Fills the task's defaults (full or quick) into the unset fields."""
        defaults = DEFAULTS[self.task]["quick" if self.quick else "full"]
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, list(value) if isinstance(value, list) else value)
        if self.out is None:
            self.out = str(Path("amos-results") / ("text" if self.text else self.task))
        return self


def build_task(config: CompareConfig) -> Task:
    if config.task == "lm":
        min_bytes = config.seq_len + 1
        if config.text:
            text = data_lib.load_text_file(config.text, min_bytes)
        else:
            text = data_lib.load_stdlib_text(min_bytes)
        return LMTask(text, steps=config.steps, seed=config.seed, batch_size=config.batch_size,
                      seq_len=config.seq_len, width=config.width, layers=config.layers,
                      heads=config.heads, eval_batches=config.eval_batches)
    return DigitsTask(data_lib.load_digits_data(), steps=config.steps, seed=config.seed,
                      batch_size=config.batch_size, channels=config.channels)


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
    for module in ("amosopt", "tqdm", "matplotlib", "sklearn"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    return {
        "versions": versions,
        "machine": {
            "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    }


def run_compare(config: CompareConfig) -> dict:
    """Runs the AdamW sweep and Amos, writes results.json, loss.png and report.md to
    ``config.out``, and returns the results. On KeyboardInterrupt the results so far are
    written, marked ``"complete": false``, and the interrupt is re-raised."""
    config.resolve()
    torch.set_num_threads(config.threads or default_threads())
    out = Path(config.out)
    results: dict[str, Any] = {"complete": False, "config": asdict(config),
                               "started": _now(), **environment()}
    try:
        task = build_task(config)
        _compare(task, config, results)
        results["complete"] = True
    except KeyboardInterrupt:
        results["interrupted"] = True
        raise
    finally:
        if "task" in results:  # the data loaded: there is something to report
            results["finished"] = _now()
            report.write_outputs(results, out)
    return results


def _warm_up(task: Task, model: torch.nn.Module) -> None:
    """A few untimed forward/backward passes, so one-time costs (thread pools, kernel
    selection) do not land on the first optimizer's clock."""
    for step in range(3):
        inputs, targets = task.batch(step)
        task.loss(model, inputs, targets).backward()
    model.zero_grad(set_to_none=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _compare(task: Task, config: CompareConfig, results: dict) -> None:
    torch.manual_seed(config.seed)
    init_model = task.make_model()
    init_state = {k: v.clone() for k, v in init_model.state_dict().items()}

    def fresh_model() -> torch.nn.Module:
        model = task.make_model()
        model.load_state_dict(init_state)
        return model

    if config.batch_size > task.train_examples:
        raise data_lib.DataError(
            f"invalid --batch-size: {config.batch_size} is larger than the "
            f"{task.train_examples} training examples; use at most {task.train_examples}")
    _warm_up(task, init_model)
    suggestion = suggest(task.train_examples, config.batch_size, "mean")
    scales = train.amos_scales(init_model, task, task.batch(0)[0])
    results["task"] = {"name": task.name, "data": task.description,
                       "parameters": count_parameters(init_model),
                       "train_examples": task.train_examples,
                       "batch_size": config.batch_size, "steps": config.steps}
    results["suggestion"] = suggestion.as_dict()
    results["scales"] = {"source": scales.source, "table": scales.table}
    runs: list[dict] = []
    results["runs"] = runs

    amos_settings = {"lr (xi)": suggestion.xi, "beta": suggestion.beta,
                     "clip_value": suggestion.clip_value, "momentum": config.amos_momentum,
                     "warmup_steps": config.amos_warmup, "scales": scales.source}

    def make_amos(model: torch.nn.Module, momentum: float = config.amos_momentum):
        return train.make_amos(model, scales, suggestion.xi, suggestion.beta, momentum,
                               suggestion.clip_value, config.amos_warmup)

    # Amos first: its curve is what the user came for; then the AdamW sweep.
    amos_run = train.Run("Amos", "amosopt.torch.Amos", amos_settings, config.steps)
    runs.append(amos_run)  # type: ignore[arg-type]
    model = fresh_model()
    optimizer, schedule = make_amos(model)
    train.train(task, model, optimizer, schedule, amos_run, config.evals, config.progress)
    other_momentum = 0.0 if config.amos_momentum > 0 else 0.9
    results["amos_state_bytes_other_momentum"] = {
        "momentum": other_momentum,
        "state_bytes": train.probe_state_bytes(task, init_model,
                                               lambda m: make_amos(m, other_momentum)),
    }
    warmup = round(config.adamw_warmup * config.steps)
    for lr in config.adamw_lrs:
        run = train.Run(f"AdamW lr={lr:g}", "torch.optim.AdamW(fused=True)",
                        {"lr": lr, "betas": list(train.ADAMW_BETAS),
                         "weight_decay": train.ADAMW_WEIGHT_DECAY, "warmup_steps": warmup,
                         "schedule": "linear warm-up, then linear decay to 0 at the budget"},
                        config.steps)
        runs.append(run)  # type: ignore[arg-type]
        model = fresh_model()
        optimizer, schedule = train.make_adamw(model, lr, config.steps, warmup)
        train.train(task, model, optimizer, schedule, run, config.evals, config.progress)
