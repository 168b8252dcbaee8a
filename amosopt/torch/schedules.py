"""A warmup-stable-decay (WSD) learning-rate scheduler for any torch optimizer.

The multiplier is :class:`amosopt.schedules.WSD`: a linear warm-up to 1, then 1, then a cooldown
to exactly 0 at ``total_steps`` (and 0 after). With :class:`amosopt.torch.Amos` it scales the
global rate ``xi``; Amos's own decay (``d_t``, ``c_t``) still applies on top.
"""

from __future__ import annotations

import functools

import numpy as np
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from amosopt.schedules import WSD, warmup_multiplier

__all__ = ["WSDSchedule", "warmup_schedule", "wsd_schedule"]


class WSDSchedule(LRScheduler):
    """``lr = initial_lr * m(last_epoch)``, with ``m`` the WSD multiplier.

    Its ``state_dict`` holds only numbers and strings, so it loads with ``torch.load``'s
    ``weights_only=True`` default.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, *, warmup_steps: int = 0,
                 cooldown_steps: int | None = None, cooldown: str = "linear",
                 last_epoch: int = -1) -> None:
        wsd = WSD(total_steps, warmup_steps, cooldown_steps, cooldown)  # raises ValueError
        self.total_steps, self.warmup_steps = wsd.total_steps, wsd.warmup_steps
        self.cooldown_steps, self.cooldown = wsd.cooldown_steps, wsd.cooldown
        if last_epoch >= 0:
            # branching a cooldown from a checkpoint of a run that had no scheduler: its
            # current rate is the base rate
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        """``m(step)``: the factor applied to the base rate after ``step`` updates."""
        wsd = WSD(self.total_steps, self.warmup_steps, self.cooldown_steps, self.cooldown)
        return float(wsd.multiplier(step, np))

    def get_lr(self) -> list[float]:
        factor = self.multiplier(self.last_epoch)
        return [base * factor for base in self.base_lrs]


def wsd_schedule(optimizer: Optimizer, total_steps: int, *, warmup_steps: int = 0,
                 cooldown_steps: int | None = None, cooldown: str = "linear",
                 last_epoch: int = -1) -> WSDSchedule:
    """Warmup-stable-decay: linear warm-up to 1, then 1, then a decay to exactly 0 at
    ``total_steps`` over the last ``cooldown_steps``; 0 past ``total_steps``.

    Call ``scheduler.step()`` after each ``optimizer.step()``, as with torch's schedulers.

    Args:
        optimizer: any torch optimizer; its groups' ``lr`` are the base rates.
        total_steps: the budget ``T`` (updates); the rate is 0 from there on.
        warmup_steps: linear warm-up ``W``: update ``s`` (0-based) uses ``(s+1)/W``.
        cooldown_steps: ``C``, default 20% of ``total_steps``; at most
            ``total_steps - warmup_steps``.
        cooldown: ``"linear"`` (``(T-s)/C``) or ``"1-sqrt"`` (``1 - sqrt((s-T+C)/C)``,
            Hägele et al. 2024, arXiv 2405.18392).
        last_epoch: as torch's schedulers: the number of updates already done, minus one. To
            finish a checkpoint taken after ``S`` constant-rate updates with a cooldown of ``C``
            steps, use ``total_steps=S + C, cooldown_steps=C, last_epoch=S - 1``.

    Raises:
        ValueError: naming the argument (negative steps, a cooldown longer than
            ``total_steps - warmup_steps``, an unknown ``cooldown``).

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = wsd_schedule(opt, total_steps=10, warmup_steps=2, cooldown_steps=4)
        >>> lrs = []
        >>> for _ in range(11):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 2))
        ...     opt.step(); sched.step()
        >>> lrs
        [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    return WSDSchedule(optimizer, total_steps, warmup_steps=warmup_steps,
                       cooldown_steps=cooldown_steps, cooldown=cooldown, last_epoch=last_epoch)


def _warmup_factor(step: int, warmup_steps: int) -> float:
    return float(warmup_multiplier(step, warmup_steps, np))


def warmup_schedule(optimizer: Optimizer, warmup_steps: int) -> LambdaLR:
    """No budget: a linear warm-up to 1 over ``warmup_steps`` (update ``s`` uses
    ``(s+1)/W``), then 1 however long the run (Amos's own decay does the rest). Its
    ``state_dict`` is plain data."""
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"Invalid warmup_steps: {warmup_steps!r}; expected an integer >= 0")
    return LambdaLR(optimizer, functools.partial(_warmup_factor, warmup_steps=warmup_steps))
