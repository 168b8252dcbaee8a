"""The training loop of ``amos compare``: one run, one optimizer, one budget, one seed."""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from amosopt.compare.optimizers import Built
from amosopt.compare.tasks import Task

#: called as ``progress(steps_done, last_training_loss)`` every few steps
Progress = Callable[[int, float], None]


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's per-parameter state (slots and step counters)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total


@dataclass
class RunRecord:
    """One training run; filled in as it goes, so an interrupted run still has its numbers."""

    key: str
    optimizer: str
    value: float  # the tuned hyper-parameter (lr, or a multiple of the suggested xi)
    budget: int
    seed: int
    settings: dict
    eval_steps: list[int] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)  # mean since the last eval
    lr: list[float] = field(default_factory=list)  # the rate of the next update, at each eval
    #: at each eval, per layer kind: the effective step and weight decay (schedule_numbers)
    schedules: list[dict] = field(default_factory=list)
    steps_done: int = 0
    train_seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    optimizer_step_seconds: list[float] = field(default_factory=list)
    state_bytes: int | None = None
    diverged_at: int | None = None
    error: str | None = None
    complete: bool = False

    @property
    def final_val_loss(self) -> float | None:
        """The loss at the end of the budget (None if the run diverged or stopped early)."""
        if self.diverged_at is not None or not self.complete or not self.val:
            return None
        return self.val[-1]["loss"]

    def as_dict(self) -> dict:
        record = asdict(self)
        del record["step_seconds"], record["optimizer_step_seconds"]
        record["final_val_loss"] = self.final_val_loss
        record["seconds_per_step"] = _median(self.step_seconds)
        record["optimizer_seconds_per_step"] = _median(self.optimizer_step_seconds)
        return record


def _median(values: list[float]) -> float | None:
    """Median (robust to the first, slower steps and to other processes on the machine)."""
    return statistics.median(values) if values else None


#: layer kinds for the schedules plot: the first pattern found in the parameter's name
LAYER_KINDS = (("bias", re.compile(r"bias$")),
               ("norm", re.compile(r"norm|(^|\.)ln")),
               ("embedding", re.compile(r"emb|wte|wpe")),
               ("attention", re.compile(r"attn|attention|qkv|query|key|value")),
               ("mlp", re.compile(r"mlp|ffn|fc|feed_forward|intermediate|linear")),
               ("conv", re.compile(r"conv")))


def layer_kind(name: str) -> str:
    return next((kind for kind, pattern in LAYER_KINDS if pattern.search(name.lower())),
                "other")


def schedule_numbers(optimizer: torch.optim.Optimizer) -> dict[str, dict[str, float]]:
    """What the optimizer does per step, by layer kind (median over the layers of a kind) and
    over all layers (``all``: min, median, max): ``step``, how far an entry moves at its usual
    gradient scale, and ``weight_decay`` per step. Amos: :mod:`amosopt.diagnostics` (``xi eta
    d_t`` and ``0.5 gamma + extra_l2``); the others: their rate and ``lr * weight_decay``."""
    from amosopt.torch import Amos
    from amosopt.torch.diagnostics import numbers_by_name

    if not isinstance(optimizer, Amos):
        group = optimizer.param_groups[0]
        lr = float(group["lr"])
        numbers = {"step": lr, "weight_decay": lr * float(group.get("weight_decay", 0.0))}
        return {"all": {f"{k}_{s}": v for k, v in numbers.items()
                        for s in ("min", "median", "max")}}
    per_name = numbers_by_name(optimizer)
    if not per_name:
        return {}  # before the first step
    out: dict[str, dict[str, float]] = {}
    kinds: dict[str, list[dict]] = {}
    for name, numbers in per_name.items():
        kinds.setdefault(layer_kind(name), []).append(numbers)
    for kind, rows in [("all", list(per_name.values())), *sorted(kinds.items())]:
        out[kind] = {}
        for key in ("step", "weight_decay"):
            values = [r[key] for r in rows]
            out[kind].update({f"{key}_min": min(values), f"{key}_median":
                              statistics.median(values), f"{key}_max": max(values)})
    return out


def eval_schedule(steps: int, evals: int) -> list[int]:
    """Steps (number of updates done) after which to evaluate: 0, evenly spaced, and ``steps``."""
    evals = max(1, min(evals, steps))
    return sorted({0, steps} | {round(steps * i / evals) for i in range(1, evals)})


def _evaluate(task: Task, model: nn.Module, built: Built, run: RunRecord, window: list[float],
              step: int) -> None:
    built.eval_mode()
    run.val.append(task.evaluate(model))
    built.train_mode()
    run.eval_steps.append(step)
    run.train_loss.append(sum(window) / len(window) if window else None)  # None: JSON null
    run.lr.append(built.lr())
    run.schedules.append(schedule_numbers(built.optimizer))
    window.clear()


def train(task: Task, model: nn.Module, built: Built, run: RunRecord, evals: int,
          progress: Progress | None = None) -> RunRecord:
    """Trains ``model`` for ``run.budget`` steps on the task's batch order, evaluating
    ``evals`` times; stops early (``run.diverged_at``) at a non-finite training loss, or when
    the optimizer refuses a step (Amos raises on a non-finite gradient)."""
    optimizer, scheduler = built.optimizer, built.scheduler
    eval_at = set(eval_schedule(run.budget, evals))
    window: list[float] = []
    built.train_mode()
    try:
        for step in range(run.budget + 1):
            if step in eval_at:
                _evaluate(task, model, built, run, window, step)
            if step == run.budget:
                break
            inputs, targets = task.batch(step)
            start = time.perf_counter()
            loss = task.loss(model, inputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                run.diverged_at = step
                break
            before_step = time.perf_counter()
            try:
                optimizer.step()
            except (ValueError, RuntimeError) as error:
                run.diverged_at, run.error = step, f"{type(error).__name__}: {error}"
                break
            if scheduler is not None:
                scheduler.step()
            end = time.perf_counter()
            run.train_seconds += end - start
            run.step_seconds.append(end - start)
            run.optimizer_step_seconds.append(end - before_step)
            run.steps_done = step + 1
            window.append(loss_value)
            if progress is not None and (step % 10 == 0 or step + 1 == run.budget):
                progress(step + 1, loss_value)
        run.complete = run.diverged_at is None
    finally:
        run.state_bytes = state_bytes(optimizer)
    return run


def probe_state_bytes(task: Task, model: nn.Module, make: Callable[[nn.Module], Any]) -> int:
    """State bytes of a fresh optimizer ``make(model_copy).optimizer`` after one step on
    batch 0 (for a variant that is not trained, e.g. Amos without momentum)."""
    import copy

    probe = copy.deepcopy(model)
    optimizer = make(probe).optimizer
    inputs, targets = task.batch(0)
    task.loss(probe, inputs, targets).backward()
    optimizer.step()
    return state_bytes(optimizer)
