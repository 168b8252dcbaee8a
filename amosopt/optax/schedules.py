"""A warmup-stable-decay (WSD) schedule for optax (``count -> value``, jit-safe)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from amosopt.schedules import WSD

__all__ = ["wsd_schedule"]


def wsd_schedule(learning_rate: float, total_steps: int, *, warmup_steps: int = 0,
                 cooldown_steps: int | None = None,
                 cooldown: str = "linear") -> Callable[[jax.Array], jax.Array]:
    """``count -> learning_rate * m(count)``: linear warm-up to 1, then 1, then a decay to
    exactly 0 at ``total_steps`` over the last ``cooldown_steps`` (default 20%), 0 after.

    ``m`` is the multiplier of :func:`amosopt.torch.wsd_schedule` (both evaluate
    :class:`amosopt.schedules.WSD`), so ``schedule(s)`` equals the torch rate after ``s``
    updates. :func:`amosopt.optax.amos` calls it, as optax's own optimizers do, with the number
    of updates done (0 at the first), so ``amos(schedule, ...)`` follows torch's
    :class:`~amosopt.torch.WSDSchedule` step for step, also through
    ``optax.inject_hyperparams``.

    Raises:
        ValueError: naming the argument (negative steps, a cooldown longer than
            ``total_steps - warmup_steps``, an unknown ``cooldown``).

    Example:
        >>> schedule = wsd_schedule(1.0, total_steps=10, warmup_steps=2, cooldown_steps=4)
        >>> [round(float(schedule(s)), 2) for s in range(11)]
        [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real) or not (
            math.isfinite(learning_rate) and learning_rate >= 0):
        raise ValueError(f"Invalid learning_rate: {learning_rate!r}; expected a finite number "
                         ">= 0 (the rate of the constant phase)")
    wsd = WSD(total_steps, warmup_steps, cooldown_steps, cooldown)

    def schedule(count: jax.Array) -> jax.Array:
        return learning_rate * wsd.multiplier(count, jnp)

    return schedule
