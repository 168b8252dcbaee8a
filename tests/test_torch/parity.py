"""A shared problem for parity tests: tensors of ranks 0, 1, 2, 4, a gradient recomputed from the
current parameters (so trajectories interact with the update), and three runners that feed it
the same gradient stream: ``amosopt.torch.Amos``, ``jestimator.amos`` and
``tests.oracles.NumpyAmos``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from tests.oracles import NumpyAmos, jestimator_amos

SHAPES = {"scalar": (), "bias": (5,), "w": (6, 4), "conv": (3, 2, 2, 2)}
ETAS = {"scalar": 1.0, "bias": 0.5, "w": 0.5, "conv": 0.35}


def slot_shape_for(kind: Optional[str], shape: tuple[int, ...]) -> Optional[tuple[int, ...]]:
    """full (None) / rows (keep axis 0) / cols (keep the last axis) / scalar (())."""
    if kind is None or kind == "full":
        return None
    if kind == "scalar" or shape == ():
        return ()
    if kind == "rows":
        return (shape[0],) + (1,) * (len(shape) - 1)
    if kind == "cols":
        return (1,) * (len(shape) - 1) + (shape[-1],)
    raise ValueError(kind)


def resolved_slot_shape(kind: Optional[str], shape: tuple[int, ...]) -> tuple[int, ...]:
    slot = slot_shape_for(kind, tuple(shape))
    return tuple(shape) if slot is None else slot


def initial_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape) for name, shape in SHAPES.items()}


def gradient(name: str, theta: np.ndarray, t: int) -> np.ndarray:
    """A non-quadratic loss gradient plus a step-dependent 'minibatch' noise; the per-element
    scales differ along every axis so that factored slots see different statistics."""
    rng = np.random.default_rng(1000 * t + sum(map(ord, name)))
    shape = theta.shape
    scale = np.ones(shape)
    for axis, n in enumerate(shape):
        index = [None] * len(shape)
        index[axis] = slice(None)
        scale = scale * (1.0 + 0.5 * np.arange(n))[tuple(index)]
    target = 0.3 * np.cos(np.arange(theta.size).reshape(shape) if shape else 0.0)
    return scale * (theta - target) + 0.2 * np.sin(3.0 * theta) + rng.normal(size=shape)


def run_torch(steps: int, slot: Optional[str], schedule: Optional[Callable[[int], float]] = None,
              lr: float = 0.05, dtype: torch.dtype = torch.float64, **options: Any
              ) -> tuple[dict[str, np.ndarray], Any]:
    """Runs ``amosopt.torch.Amos``; ``schedule(t)`` (1-based) becomes a LambdaLR factor."""
    from amosopt.torch import Amos

    params = {n: torch.nn.Parameter(torch.tensor(x, dtype=dtype))
              for n, x in initial_params().items()}
    opt = Amos(list(params.items()), lr=lr, eta=lambda n, s: ETAS[n],
               slot_shape=lambda n, s: resolved_slot_shape(slot, s), **options)
    sched = None
    if schedule is not None:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: schedule(k + 1) / lr)
    for t in range(1, steps + 1):
        for n, p in params.items():
            p.grad = torch.tensor(gradient(n, p.detach().double().numpy(), t), dtype=dtype)
        opt.step()
        if sched is not None:
            sched.step()
    return {n: p.detach().double().numpy() for n, p in params.items()}, opt


def run_jestimator(steps: int, slot: Optional[str],
                   schedule: Optional[Callable[[int], float]] = None, lr: float = 0.05,
                   **options: Any) -> dict[str, np.ndarray]:
    """Runs the authors' ``jestimator.amos.amos`` in float64 on the same gradient stream."""
    import jax
    import jax.numpy as jnp
    import optax

    amos = jestimator_amos()
    with jax.enable_x64(True):
        params = {n: jnp.asarray(x, jnp.float64) for n, x in initial_params().items()}
        tx = amos.amos(
            (lambda count: schedule(count)) if schedule is not None else lr,
            lambda name, shape: ETAS[name[0]],
            shape_fn=lambda name, shape: resolved_slot_shape(slot, shape),
            **options,
        )
        state = tx.init(params)

        @jax.jit
        def update(grads, state, params):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        for t in range(1, steps + 1):
            grads = {n: jnp.asarray(gradient(n, np.asarray(p), t)) for n, p in params.items()}
            params, state = update(grads, state, params)
        return {n: np.asarray(p, np.float64) for n, p in params.items()}


def run_numpy(steps: int, slot: Optional[str], schedule: Optional[Callable[[int], float]] = None,
              lr: float = 0.05, **options: Any) -> dict[str, np.ndarray]:
    """Runs ``tests.oracles.NumpyAmos`` (float64) on the same gradient stream."""
    params = initial_params()
    opts = {n: NumpyAmos(eta=ETAS[n], slot_shape=slot_shape_for(slot, s), **options)
            for n, s in SHAPES.items()}
    for t in range(1, steps + 1):
        for n in params:
            g = gradient(n, params[n], t)
            params[n] = opts[n].step(params[n], g, schedule if schedule is not None else lr)
    return params


def max_relative_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """max |got - want| / |want| element-wise, with a floor of 1e-6 * max|want| per tensor so
    that entries passing near 0 do not divide by ~0."""
    worst = 0.0
    for n, w in want.items():
        floor = 1e-6 * max(float(np.max(np.abs(w))), 1e-300)
        err = np.abs(got[n] - w) / np.maximum(np.abs(w), floor)
        worst = max(worst, float(np.max(err)))
    return worst
