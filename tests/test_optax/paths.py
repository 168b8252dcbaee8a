"""The optax side of the trajectory tests: a jitted Amos step on the gradient stream
``2 (theta - 0.3) + noise`` (a quadratic pulled toward 0.3, plus noise), shared by the
transcription, cross-backend and warm-start tests."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax


def gradient(theta: Any, noise: Any) -> Any:
    """The stream's gradient at ``theta``: ``2 (theta - 0.3) + noise``."""
    return 2.0 * (theta - 0.3) + noise


def optax_path(tx: optax.GradientTransformation, theta0: dict[str, np.ndarray],
               noises: list[dict[str, np.ndarray]], state: Optional[Any] = None
               ) -> tuple[list[dict[str, np.ndarray]], Any]:
    """The parameters after each step from ``theta0`` (the state from ``tx.init``, or
    ``state`` to resume), and the last state."""
    @jax.jit
    def step(params, state, noise):
        grads = jax.tree.map(gradient, params, noise)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = {k: jnp.asarray(v) for k, v in theta0.items()}
    state = tx.init(params) if state is None else state
    path = []
    for noise in noises:
        params, state = step(params, state, {k: jnp.asarray(v) for k, v in noise.items()})
        path.append({k: np.asarray(v) for k, v in params.items()})
    return path, state
