"""Warmup-stable-decay (WSD) learning-rate multipliers, framework-free.

Amos decays its own step through the accumulator ``b``, but that decay starts only after about
``ln(4/sqrt(xi*eta))/xi^2`` steps (several epochs). Within a shorter budget, a constant rate
followed by a short final *cooldown* to zero matches a tuned decay schedule, and the cooldown can
be branched from any checkpoint of the constant phase (Hägele et al. 2024, arXiv 2405.18392;
Bergsma et al. 2025, arXiv 2502.15938). With ``s`` the number of updates already done (torch's
``LRScheduler.last_epoch``, optax's ``count``), ``W`` warm-up and ``C`` cooldown steps and a
budget ``T``:

.. math::

    m(s) = \\begin{cases}
        \\min\\!\\big(1, \\tfrac{s+1}{W}\\big) & s < T - C \\\\
        \\tfrac{T - s}{C} & T - C \\le s < T \\quad(\\texttt{"linear"}) \\\\
        1 - \\sqrt{\\tfrac{s - (T - C)}{C}} & T - C \\le s < T \\quad(\\texttt{"1-sqrt"}) \\\\
        0 & s \\ge T
    \\end{cases}

so the multiplier is 1 when the cooldown starts and exactly 0 at ``T`` and after.
The backends wrap it: :func:`amosopt.torch.wsd_schedule` (an ``LRScheduler``) and
:func:`amosopt.optax.wsd_schedule` (an optax schedule).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

__all__ = ["COOLDOWN_SHAPES", "WSD", "DEFAULT_COOLDOWN_FRACTION", "warmup_multiplier"]

COOLDOWN_SHAPES = ("linear", "1-sqrt")
#: the cooldown length when none is given, as a fraction of the budget (Hägele et al. found
#: 10-20% enough to match a tuned cosine schedule)
DEFAULT_COOLDOWN_FRACTION = 0.2


def warmup_multiplier(step: Any, warmup_steps: int, xp: Any) -> Any:
    """The linear warm-up both backends use: update ``s`` (0 at the first) takes
    ``min(1, (s + 1) / W)`` of the rate, 1 without a warm-up (``W = 0``); ``xp`` is ``math``'s
    stand-in for a Python number (``numpy``) or ``jax.numpy`` for a traced ``count``.

    >>> import numpy as np
    >>> [float(warmup_multiplier(s, 4, np)) for s in range(5)]
    [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    s = xp.asarray(step) * 1.0
    return xp.minimum(1.0, (s + 1.0) / warmup_steps) if warmup_steps else xp.ones_like(s)


def _steps(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r}; expected an integer >= {minimum}")
    return int(value)


@dataclass(frozen=True)
class WSD:
    """A checked warmup-stable-decay schedule; :meth:`multiplier` evaluates it.

    Raises:
        ValueError: naming the argument: ``total_steps < 1``, negative ``warmup_steps`` or
            ``cooldown_steps``, ``cooldown_steps > total_steps - warmup_steps``, or an unknown
            ``cooldown`` shape.
    """

    total_steps: int
    warmup_steps: int = 0
    cooldown_steps: int | None = None
    cooldown: str = "linear"

    def __post_init__(self) -> None:
        total = _steps(self.total_steps, "total_steps", 1)
        warmup = _steps(self.warmup_steps, "warmup_steps", 0)
        if warmup > total:
            raise ValueError(f"Invalid warmup_steps: {warmup} is more than total_steps "
                             f"({total})")
        if self.cooldown_steps is None:
            cooldown = min(round(DEFAULT_COOLDOWN_FRACTION * total), total - warmup)
        else:
            cooldown = _steps(self.cooldown_steps, "cooldown_steps", 0)
        if cooldown > total - warmup:
            raise ValueError(
                f"Invalid cooldown_steps: {cooldown} is more than total_steps - warmup_steps "
                f"({total} - {warmup} = {total - warmup}); shorten the cooldown or the warm-up")
        if self.cooldown not in COOLDOWN_SHAPES:
            raise ValueError(f"Invalid cooldown: {self.cooldown!r}; expected one of "
                             f"{', '.join(repr(s) for s in COOLDOWN_SHAPES)}")
        object.__setattr__(self, "total_steps", total)
        object.__setattr__(self, "warmup_steps", warmup)
        object.__setattr__(self, "cooldown_steps", cooldown)

    def multiplier(self, step: Any, xp: Any) -> Any:
        """``m(step)`` with the array namespace ``xp`` (``numpy`` or ``jax.numpy``), so the same
        expression serves a Python number and a traced ``count``."""
        s = xp.asarray(step) * 1.0
        total, warmup, cooldown = self.total_steps, self.warmup_steps, self.cooldown_steps
        warm = warmup_multiplier(s, warmup, xp)
        if cooldown == 0:
            decay = xp.where(s < total, 1.0, 0.0)
        else:
            done = xp.clip((s - (total - cooldown)) / cooldown, 0.0, 1.0)  # fraction cooled
            decay = 1.0 - done if self.cooldown == "linear" else 1.0 - xp.sqrt(done)
        return xp.where(s >= total, 0.0, xp.minimum(warm, decay))
