r"""Compensated (Kahan) summation of updates into 16-bit parameters, as an optax transformation.

Adding a small update to a bfloat16 or float16 parameter rounds the sum to 8 (11) significant
bits: an update under half a unit in the last place is lost. Amos's updates shrink as its decay
sets in, so whole late phases of training can vanish this way (``benchmarks/bf16_drift.py``, in
PyTorch: 37-72% higher loss than float32 after 10,000 steps). Kahan summation (Kahan 1965)
keeps what each rounding lost in a buffer :math:`c` of the parameter's dtype and adds it back at
the next step:

.. math::
    \theta = p + c + u, \qquad p' = \mathrm{round}(\theta), \qquad c' = \theta - p'

(computed in float32), so that :math:`p + c` carries about twice the parameter's significant
bits. This is the optax twin of ``amosopt.torch.Amos(rounding="compensated")``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["CompensatedState", "compensated_rounding"]

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class CompensatedState(NamedTuple):
    """``compensation``: per 16-bit parameter, what rounding lost (its shape and dtype); a
    0-d placeholder for the other parameters, which need none."""

    compensation: Any


def _low(x: Any) -> bool:
    return jnp.dtype(x.dtype) in _LOW_PRECISION


def compensated_rounding() -> optax.GradientTransformation:
    """Chain it last, after any optimizer: ``optax.chain(amos(...), compensated_rounding())``.

    For each 16-bit parameter ``p`` it returns the float32 update ``round(p + c + u) - p``, which
    ``optax.apply_updates`` (it adds in float32, then casts to the parameter's dtype) turns into
    exactly ``round(p + c + u)``; other parameters' updates pass through unchanged. The state
    costs 2 bytes per 16-bit parameter. Its ``update`` needs ``params``.
    """

    def init_fn(params: optax.Params) -> CompensatedState:
        return CompensatedState(jax.tree.map(
            lambda p: jnp.zeros_like(p) if _low(p) else jnp.zeros([], p.dtype), params))

    def update_fn(updates: optax.Updates, state: CompensatedState,
                  params: optax.Params | None = None) -> tuple[optax.Updates, CompensatedState]:
        if params is None:
            raise ValueError("compensated_rounding needs the parameters: call "
                             "update(updates, state, params)")

        def leaf(u: jax.Array, c: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
            if not _low(p):
                return u, c
            theta = p.astype(jnp.float32) + c.astype(jnp.float32) + u.astype(jnp.float32)
            rounded = theta.astype(p.dtype).astype(jnp.float32)
            return rounded - p.astype(jnp.float32), (theta - rounded).astype(p.dtype)

        leaves, treedef = jax.tree.flatten(params)
        out = [leaf(u, c, p) for u, c, p in zip(treedef.flatten_up_to(updates),
                                                 treedef.flatten_up_to(state.compensation),
                                                 leaves)]
        return (treedef.unflatten([u for u, _ in out]),
                CompensatedState(treedef.unflatten([c for _, c in out])))

    return optax.GradientTransformation(init_fn, update_fn)
