"""A :class:`~amosopt.suggest.Suggestion` as an optax ``GradientTransformation``, in one call."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from amosopt.optax.schedules import wsd_schedule
from amosopt.optax.transform import amos
from amosopt.schedules import warmup_multiplier
from amosopt.suggest import Suggestion, check_suggestion

__all__ = ["recipe"]


def recipe(suggestion: Suggestion, eta_fn: Any, shape_fn: Any = None,
           **amos_kwargs: Any) -> optax.GradientTransformationExtraArgs:
    """:func:`amosopt.optax.amos` with ``suggestion``'s rate, schedule and arguments.

    The rate is ``wsd_schedule(suggestion.xi, **suggestion.schedule_kwargs())`` for a
    suggestion with a budget, else a linear warm-up over ``suggestion.warmup_steps`` then a
    constant ``xi`` (:func:`amosopt.schedules.warmup_multiplier`, as :func:`amosopt.torch.recipe`
    does); the arguments are ``suggestion.amos_kwargs()`` (``amos_kwargs`` override single
    entries). ``eta_fn`` and ``shape_fn`` are ``amos``'s, for example from
    ``table = amosopt.optax.auto_scales(params, model, example_inputs)``: ``table.eta``,
    ``table.slot_shape``.

    Example:
        >>> import jax.numpy as jnp
        >>> from amosopt.suggest import suggest
        >>> s = suggest(100_000, 32, steps=1000)
        >>> solver = recipe(s, eta_fn=0.1, shape_fn=lambda name, shape: (shape[0], 1))
        >>> state = solver.init({"w": jnp.ones((4, 3))})
    """
    check_suggestion(suggestion, "recipe")
    if suggestion.steps is None:
        # the warm-up of amosopt.torch.warmup_schedule: update `count` uses (count + 1) / W
        xi, warmup = suggestion.xi, suggestion.warmup_steps
        rate = (lambda count: xi * warmup_multiplier(count, warmup, jnp)) if warmup else xi
    else:
        rate = wsd_schedule(suggestion.xi, **suggestion.schedule_kwargs())
    return amos(rate, eta_fn, shape_fn, **{**suggestion.amos_kwargs(), **amos_kwargs})
