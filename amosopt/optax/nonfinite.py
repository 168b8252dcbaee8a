r"""Skipping a step whose gradient is not finite, decided on the device: :func:`skip_if_not_finite`.

A non-finite gradient cannot raise inside ``jit``, and left alone it puts NaN into Amos's slots
for good. The wrapper computes one flag per step, *all gradient entries and their squares are
finite*, and only where it holds runs the inner transformation (``jax.lax.cond``: a branch on
the device, no transfer to the host). A skipped step returns updates of :math:`-0` (so that
``optax.apply_updates`` leaves every parameter bit for bit as it was, :math:`-0.0` included,
where :math:`+0` would turn :math:`-0.0` into :math:`+0.0`) and the inner state unchanged, its
step count included; it is counted in :attr:`SkipState.skipped`.

``optax.apply_if_finite`` differs in three ways: it applies a non-finite update after
``max_consecutive_errors`` skips, it returns :math:`+0` updates, and it does not catch a finite
gradient whose square overflows (which the PyTorch ``Amos`` treats as non-finite, as Amos's
:math:`M(g^2)` would be infinite).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["SkipState", "skip_if_not_finite"]


class SkipState(NamedTuple):
    """State of :func:`skip_if_not_finite`."""

    inner_state: Any  # the wrapped transformation's, unchanged by a skipped step
    skipped: jax.Array  # shape=(), dtype=jnp.int32: the number of steps skipped


def all_finite(updates: Any) -> jax.Array:
    """A boolean scalar: every entry of every leaf, and its square in at least float32, is
    finite (one peak per leaf: ``max |g|`` propagates NaN, and its square overflows exactly
    when some entry's does)."""
    flags = []
    for g in jax.tree.leaves(updates):
        if g.size == 0:
            continue
        peak = jnp.max(jnp.abs(g)).astype(jnp.promote_types(g.dtype, jnp.float32))
        flags.append(jnp.isfinite(peak * peak))
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def skip_if_not_finite(inner: optax.GradientTransformation
                       ) -> optax.GradientTransformationExtraArgs:
    """``inner``, skipping every step whose gradients are not all finite (see the module).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from amosopt.optax import amos
        >>> solver = skip_if_not_finite(amos(learning_rate=0.1, eta_fn=0.5))
        >>> params = {"w": jnp.ones(3)}
        >>> state = solver.init(params)
        >>> updates, state = solver.update({"w": jnp.array([1.0, jnp.nan, 0.0])}, state, params)
        >>> updates["w"].tolist(), int(state.skipped)
        ([-0.0, -0.0, -0.0], 1)
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> SkipState:
        return SkipState(inner_state=inner.init(params), skipped=jnp.zeros([], jnp.int32))

    def update_fn(updates: optax.Updates, state: SkipState, params: optax.Params | None = None,
                  **extra_args: Any) -> tuple[optax.Updates, SkipState]:
        finite = all_finite(updates)

        def step(_: None) -> tuple[optax.Updates, Any]:
            return inner.update(updates, state.inner_state, params, **extra_args)

        def skip(_: None) -> tuple[optax.Updates, Any]:
            new_updates = jax.eval_shape(step, None)[0]  # the dtypes a step would return
            return (jax.tree.map(lambda u: jnp.full(u.shape, -0.0, u.dtype), new_updates),
                    state.inner_state)

        new_updates, inner_state = jax.lax.cond(finite, step, skip, None)
        skipped = state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32)
        return new_updates, SkipState(inner_state=inner_state, skipped=skipped)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
