"""Optimizers and the training loop of ``amos compare``.

* AdamW: the paper's baseline recipe, linear warm-up then linear decay to zero at the step
  budget, weight decay 0.01, betas (0.9, 0.999); ``fused=True`` (the fastest AdamW on CPU).
* Amos: ``amosopt.torch.Amos`` with automatic scales (``amosopt.torch.auto_scales``) when they
  exist, else the task's explicit rule table; a constant global rate ``xi`` (optionally a linear
  warm-up), no step budget.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from amosopt.compare.tasks import Task
from amosopt.rules import Rules

ADAMW_BETAS = (0.9, 0.999)
ADAMW_WEIGHT_DECAY = 0.01


def linear_warmup_decay(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier at 0-based step s: ``(s+1)/warmup`` while warming up, then linear decay
    that reaches zero at ``total``: ``(total - s)/(total - warmup)``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def linear_warmup(warmup: int) -> Callable[[int], float]:
    """LR multiplier ``min(1, (s+1)/warmup)`` (constant 1 without warm-up)."""
    return lambda step: 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)


def make_adamw(model: nn.Module, lr: float, steps: int, warmup: int):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=ADAMW_BETAS,
                                  weight_decay=ADAMW_WEIGHT_DECAY, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup, steps))
    return optimizer, schedule


@dataclass
class Scales:
    """Per-parameter eta and slot shape for Amos, and where they came from."""

    eta: Callable[[str, tuple], float]
    slot_shape: Callable[[str, tuple], tuple]
    source: str
    table: list[dict]


def amos_scales(model: nn.Module, task: Task, example_inputs: Any = None) -> Scales:
    """Automatic scales (``amosopt.torch.auto_scales``, traced with ``example_inputs``) when
    they are available, else the task's explicit rule table (the paper's rules, §2)."""
    try:
        from amosopt.torch import auto_scales
    except ImportError:
        auto_scales = None
    if auto_scales is not None:
        scales = auto_scales(model, example_inputs=example_inputs)
        table = [
            {"name": name, "shape": list(p.shape), "eta": float(scales[name].eta),
             "slot_shape": list(scales[name].slot_shape), "reason": str(scales[name].reason)}
            for name, p in model.named_parameters()
        ]
        return Scales(scales.eta, scales.slot_shape, "amosopt.torch.auto_scales", table)
    eta_rules, slot_rules = Rules(task.eta_rules), Rules(task.slot_rules)
    table = []
    for name, p in model.named_parameters():
        eta_pattern, eta = eta_rules.match(name, p.shape)
        _, slot = slot_rules.match(name, p.shape)
        table.append({"name": name, "shape": list(p.shape), "eta": float(eta),
                      "slot_shape": list(slot), "reason": f"explicit rule {eta_pattern!r}"})
    return Scales(eta_rules, slot_rules, "explicit rule table (paper.md §2)", table)


def make_amos(model: nn.Module, scales: Scales, xi: float, beta: float, momentum: float,
              clip_value: float, warmup: int):
    try:
        from amosopt.torch import Amos
    except ImportError as error:
        raise RuntimeError(f"amosopt.torch.Amos is not available ({error})") from None
    optimizer = Amos(model.named_parameters(), lr=xi, eta=scales.eta,
                     slot_shape=scales.slot_shape, beta=beta, momentum=momentum,
                     clip_value=clip_value)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup(warmup))
    return optimizer, schedule


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's per-parameter state (slots and step counters)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total


@dataclass
class Run:
    """One training run; filled in as it goes, so an interrupted run still has its numbers."""

    label: str
    optimizer: str
    settings: dict
    steps: int
    eval_steps: list[int] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # mean since the previous eval
    steps_done: int = 0
    train_seconds: float = 0.0
    optimizer_seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)  # per step, for the median
    optimizer_step_seconds: list[float] = field(default_factory=list)
    state_bytes: int | None = None
    diverged_at: int | None = None
    complete: bool = False

    @property
    def final_val_loss(self) -> float | None:
        return self.val[-1]["loss"] if self.val and self.diverged_at is None else None

    def as_dict(self) -> dict:
        done = max(self.steps_done, 1)
        return {
            "label": self.label, "optimizer": self.optimizer, "settings": self.settings,
            "steps": self.steps, "steps_done": self.steps_done, "complete": self.complete,
            "eval_steps": self.eval_steps, "val": self.val, "train_loss": self.train_loss,
            "final_val_loss": self.final_val_loss, "diverged_at": self.diverged_at,
            "train_seconds": self.train_seconds,
            "mean_seconds_per_step": self.train_seconds / done,
            "seconds_per_step": _median(self.step_seconds),
            "optimizer_seconds_per_step": _median(self.optimizer_step_seconds),
            "state_bytes": self.state_bytes,
        }


def _median(values: list[float]) -> float:
    """Median (robust to the first, slower steps and to other processes on the machine)."""
    return statistics.median(values) if values else math.nan


def eval_schedule(steps: int, evals: int) -> list[int]:
    """Steps (number of updates done) after which to evaluate: 0, evenly spaced, and ``steps``."""
    evals = max(1, min(evals, steps))
    return sorted({0, steps} | {round(steps * i / evals) for i in range(1, evals)})


def train(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
          run: Run, evals: int, progress: bool = True) -> Run:
    """Trains ``model`` for ``run.steps`` steps on the task's batch order, evaluating
    ``evals`` times; stops early (``run.diverged_at``) at a non-finite training loss."""
    from tqdm.auto import tqdm

    eval_at = set(eval_schedule(run.steps, evals))
    window: list[float] = []
    bar = tqdm(total=run.steps, desc=run.label, unit="step", disable=not progress,
               dynamic_ncols=True, leave=True)
    try:
        for step in range(run.steps + 1):
            if step in eval_at:
                run.val.append(task.evaluate(model))
                run.eval_steps.append(step)
                run.train_loss.append(sum(window) / len(window) if window else math.nan)
                window.clear()
                bar.set_postfix(val=f"{run.val[-1]['loss']:.3f}", refresh=False)
            if step == run.steps:
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
            optimizer.step()
            schedule.step()
            end = time.perf_counter()
            run.train_seconds += end - start
            run.optimizer_seconds += end - before_step
            run.step_seconds.append(end - start)
            run.optimizer_step_seconds.append(end - before_step)
            run.steps_done = step + 1
            window.append(loss_value)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            bar.update(1)
        run.complete = True
    finally:
        bar.close()
        run.state_bytes = state_bytes(optimizer)
    return run


def probe_state_bytes(task: Task, model: nn.Module, make: Callable) -> int:
    """State bytes of a fresh optimizer ``make(model_copy)`` after one step on batch 0 (used
    for the Amos variant that is not trained, e.g. without momentum)."""
    import copy

    probe = copy.deepcopy(model)
    optimizer, _ = make(probe)
    inputs, targets = task.batch(0)
    task.loss(probe, inputs, targets).backward()
    optimizer.step()
    return state_bytes(optimizer)
