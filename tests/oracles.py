"""Independent oracles for the Amos update, shared by the torch and optax tests.

* :func:`jestimator_amos` imports the authors' reference, ``jestimator.amos`` (PyPI 0.3.3), with
  the two-line shim that current JAX needs (``../shared/env.md``). The shim lives here, in test
  code, never in the package.
* :class:`NumpyAmos` is a line-by-line NumPy transcription of Algorithm 1 of Tian & Parikh (2022)
  (``../shared/paper.md`` §1.2), written from the equations, one tensor at a time, float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np


def jestimator_amos():
    """Returns the ``jestimator.amos`` module, patched to import with current JAX."""
    import jax
    import jax.experimental.pjit as pjit_module

    if not hasattr(pjit_module, "PartitionSpec"):
        pjit_module.PartitionSpec = jax.sharding.PartitionSpec
    if not hasattr(jax, "tree_map"):
        jax.tree_map = jax.tree.map
    from jestimator import amos

    return amos


def jestimator_amos_helper():
    jestimator_amos()
    from jestimator import amos_helper

    return amos_helper


@dataclass
class NumpyAmos:
    """Amos for one tensor, transcribed from the paper's Algorithm 1 (float64 NumPy).

    Symbols: xi (global rate, possibly a schedule of the 1-based step t), eta (scale), beta,
    v and b (slot-shaped), gamma, c_t, d_t, optional element-wise clip and EMA momentum mu;
    rho (``decay_ratio``): gamma and c_t use the rate rho * xi (1 in the paper).
    """

    eta: float
    slot_shape: Optional[tuple] = None  # None: full-size slots
    beta: float = 0.999
    momentum: float = 0.0
    clip_value: Optional[float] = None
    extra_l2: float = 0.0
    c_coef: float = 0.25
    d_coef: float = 0.25
    epsilon: float = 2.0**-125
    decay_ratio: float = 1.0
    t: int = 0
    v: np.ndarray = field(default=None)
    b: np.ndarray = field(default=None)
    m: np.ndarray = field(default=None)

    def step(self, theta: np.ndarray, g: np.ndarray, xi: float | Callable[[int], float]) -> np.ndarray:
        """Returns the new theta after one step with gradient g."""
        theta = np.asarray(theta, np.float64)
        g = np.asarray(g, np.float64)
        slot = theta.shape if self.slot_shape is None else tuple(self.slot_shape)
        if self.v is None:
            self.v = np.zeros(slot)
            self.b = np.zeros(slot)
            self.m = np.zeros(theta.shape)
        self.t += 1
        t = self.t
        xi = float(xi(t)) if callable(xi) else float(xi)
        if self.clip_value is not None and self.clip_value > 0:
            g = np.clip(g, -self.clip_value, self.clip_value)
        # M(g^2): mean over the axes the slot shares (all axes for a scalar slot)
        if slot == ():
            g2 = np.mean(g * g)
        else:
            axes = tuple(i for i, (s, n) in enumerate(zip(slot, theta.shape)) if s < n)
            g2 = np.mean(g * g, axis=axes, keepdims=True)
        self.v = self.beta * self.v + (1 - self.beta) * g2
        v_hat = np.maximum(self.v, self.epsilon) / (1 - self.beta**t)
        b_prev = self.b
        rho_xi = self.decay_ratio * xi
        c_t = (1 + self.c_coef * math.sqrt(rho_xi) * b_prev) ** -0.5
        d_t = 1 / (1 + self.d_coef * math.sqrt(xi * self.eta) * b_prev)
        gamma = c_t * rho_xi**2 * g2 / v_hat
        delta = -d_t * (xi * self.eta * g / np.sqrt(v_hat) + (0.5 * gamma + self.extra_l2) * theta)
        self.b = b_prev + gamma * (1 + b_prev)
        if self.momentum > 0:
            self.m = self.momentum * self.m + (1 - self.momentum) * delta
            delta = self.m
        return theta + delta
