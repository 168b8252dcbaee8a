"""Amos in the trainers people use: Hugging Face ``Trainer`` (and anything that takes an
optimizer and a scheduler: Lightning's ``configure_optimizers``, accelerate's ``prepare``).

Two forms for ``transformers.Trainer``:

* ``Trainer(..., optimizers=trainer_optimizer(model, args))``: Amos with automatic scales and a
  schedule of ``xi`` built from ``args``: its warm-up, then a WSD cooldown to 0 at
  ``args.max_steps`` (or, with ``schedule="constant"``, a constant ``xi``: Amos's own decay);
* ``Trainer(..., optimizer_cls_and_kwargs=(AmosFactory, {"lr": xi, ...}))`` (transformers >= 5,
  which calls a non-optimizer class as a factory with the model): Amos with automatic scales,
  under the Trainer's own schedule (``args.lr_scheduler_type``; ``"warmup_stable_decay"`` is the
  WSD shape).

``args.learning_rate`` is Amos's global rate ``xi`` (about ``1/sqrt(batches per epoch)``, see
``amos suggest``), not an AdamW rate. ``args.weight_decay`` does not apply: Amos decays the
weights itself (the paper's adaptive ``gamma``); pass ``extra_l2`` for more.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from amosopt.schedules import DEFAULT_COOLDOWN_FRACTION
from amosopt.torch.scales import auto_amos
from amosopt.torch.schedules import warmup_schedule, wsd_schedule

__all__ = ["AmosFactory", "trainer_optimizer"]

SCHEDULES = ("wsd", "constant")


def _budget(args: Any, num_training_steps: int | None) -> int:
    steps = args.max_steps if getattr(args, "max_steps", -1) > 0 else num_training_steps
    if steps is None or steps <= 0:
        raise ValueError("Invalid num_training_steps: args.max_steps is not set; pass "
                         "num_training_steps (the number of optimizer steps of the run)")
    return int(steps)


def trainer_optimizer(model: nn.Module, args: Any, num_training_steps: int | None = None, *,
                      example_inputs: Any = None, schedule: str = "wsd",
                      cooldown_fraction: float = DEFAULT_COOLDOWN_FRACTION,
                      **amos_kwargs: Any) -> tuple[torch.optim.Optimizer, Any]:
    """``(optimizer, scheduler)`` for ``transformers.Trainer(optimizers=...)``.

    Args:
        model: the model the Trainer trains.
        args: its ``TrainingArguments``: ``learning_rate`` is ``xi``; ``warmup_steps`` (steps,
            or a fraction of the run when below 1) the linear warm-up; ``max_steps`` the budget.
        num_training_steps: the budget when ``args.max_steps`` is not set (epochs instead).
        example_inputs: one batch's inputs for the data-flow analysis of
            :func:`amosopt.torch.auto_scales` (for a Hugging Face model, a dict such as
            ``{"input_ids": ids}``); without it the name heuristics decide.
        schedule: ``"wsd"``: warm-up, constant, then a linear cooldown to 0 over the last
            ``cooldown_fraction`` of the budget (for a budget shorter than Amos's own decay
            onset, see ``amos suggest --steps``); ``"constant"``: warm-up, then constant.
        **amos_kwargs: for :class:`amosopt.torch.Amos` (``momentum``, ``clip_value``, ``beta``...).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"Invalid schedule: {schedule!r}; expected one of {SCHEDULES}")
    total = _budget(args, num_training_steps)
    warmup = min(args.get_warmup_steps(total), total)
    if getattr(args, "weight_decay", 0.0):
        warnings.warn(f"TrainingArguments.weight_decay={args.weight_decay} does not apply to "
                      "Amos, which decays the weights itself; use extra_l2 for more",
                      stacklevel=2)
    optimizer = auto_amos(model, args.learning_rate, example_inputs, **amos_kwargs)
    if schedule == "constant":  # no budget: hold xi after the warm-up, however long the run
        return optimizer, warmup_schedule(optimizer, warmup)
    cooldown = min(round(cooldown_fraction * total), total - warmup)
    return optimizer, wsd_schedule(optimizer, total, warmup_steps=warmup,
                                   cooldown_steps=cooldown)


class AmosFactory:
    """For ``Trainer(optimizer_cls_and_kwargs=(AmosFactory, kwargs))`` (transformers >= 5):
    the Trainer calls ``AmosFactory()(model, **kwargs)``, which is
    :func:`amosopt.torch.auto_amos` (``kwargs``: ``lr`` and Amos's arguments)."""

    def __call__(self, model: nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
        kwargs = dict(kwargs)
        lr = kwargs.pop("lr")
        return auto_amos(model, lr, kwargs.pop("example_inputs", None), **kwargs)
