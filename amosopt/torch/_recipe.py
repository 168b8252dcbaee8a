"""A :class:`~amosopt.suggest.Suggestion` as a PyTorch optimizer and schedule, in one call."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from amosopt.suggest import Suggestion, check_suggestion
from amosopt.torch.optimizer import Amos
from amosopt.torch.scales import auto_amos
from amosopt.torch.schedules import warmup_schedule, wsd_schedule

__all__ = ["recipe"]


def recipe(model: nn.Module, suggestion: Suggestion, example_inputs: Any = None,
           **amos_kwargs: Any) -> tuple[Amos, LRScheduler]:
    """``(optimizer, scheduler)``: ``suggestion`` applied to ``model`` with automatic scales.

    The optimizer is ``auto_amos(model, suggestion.xi, example_inputs,
    **suggestion.amos_kwargs())`` (``amos_kwargs`` override single entries); the scheduler,
    stepped after each ``optimizer.step()``, is ``wsd_schedule(optimizer,
    **suggestion.schedule_kwargs())`` for a suggestion with a budget, else a warm-up over
    ``suggestion.warmup_steps`` then a constant ``xi`` (Amos's own decay does the rest).

    Example:
        >>> import torch
        >>> from amosopt.suggest import suggest
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(),
        ...                             torch.nn.Linear(32, 1))
        >>> optimizer, scheduler = recipe(model, suggest(100_000, 32, steps=1000))
        >>> optimizer.param_groups[0]["second_moment"], scheduler.total_steps
        ('row-col', 1000)
    """
    check_suggestion(suggestion, "recipe")
    optimizer = auto_amos(model, suggestion.xi, example_inputs,
                          **{**suggestion.amos_kwargs(), **amos_kwargs})
    if suggestion.steps is None:
        return optimizer, warmup_schedule(optimizer, suggestion.warmup_steps)
    return optimizer, wsd_schedule(optimizer, **suggestion.schedule_kwargs())
