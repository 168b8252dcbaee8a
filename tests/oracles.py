"""Independent oracles for the Amos update, shared by the torch and optax tests.

* :func:`jestimator_amos` imports the authors' reference, ``jestimator.amos`` (PyPI 0.3.3), with
  the two-line shim that current JAX needs (``../shared/env.md``). The shim lives here, in test
  code, never in the package.
* :class:`NumpyAmos` is a line-by-line NumPy transcription of Algorithm 1 of Tian & Parikh (2022)
  (``../shared/paper.md`` §1.2), written from the equations, one tensor at a time, float64;
  with ``second_moment="row-col"``, also of the column factor (Adafactor's factored second
  moment, Shazeer & Stern 2018, arXiv 1804.04235) that normalises each entry of the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np


#: ``name: (parameter shape, slot shape, eta)``: every kind of slot the automatic scales produce,
#: for the tests of ``second_moment="row-col"``; the last three have no column factor
FACTORED_LEAVES = {
    "linear": ((6, 5), (6, 1), 0.4),  # torch Linear (out, in): one slot per output row
    "kernel": ((5, 6), (1, 6), 0.4),  # flax kernel / Hugging Face Conv1D (in, out)
    "embedding": ((9, 4), (9, 1), 0.7),  # (V, d): one slot per row
    "conv": ((4, 3, 2, 2), (4, 1, 1, 1), 0.3),  # torch conv (out, in, kh, kw)
    "interleaved": ((2, 4, 3), (2, 1, 3), 0.5),  # kept axes on both sides of the reduced one
    "bias": ((5,), (), 0.5),  # scalar slot
    "ones": ((3, 4), (1, 1), 0.5),  # one entry
    "full": ((3, 4), (3, 4), 1.0),  # full-size slot
}


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

    ``second_moment="row-col"`` adds the column factor u, the running mean of g^2 over the
    axes the slot keeps (K); the step divides g by sqrt of the rank-1 estimate
    v_hat * u_hat / mean(v_hat) instead of sqrt(v_hat), each factor floored by epsilon:
    V_hat = max(v, eps) / (1 - beta^t) * max(u, eps) / max(mean(v), eps). No column factor
    (the paper's update) where the slot reduces no axis or has a single entry.
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
    second_moment: str = "slot"  # or "row-col"
    b0: float = 0.0  # where b starts: 0 in the paper; a warm start's value otherwise
    t: int = 0
    v: np.ndarray = field(default=None)
    b: np.ndarray = field(default=None)
    m: np.ndarray = field(default=None)
    u: Optional[np.ndarray] = None  # the column factor, where there is one

    def step(self, theta: np.ndarray, g: np.ndarray, xi: float | Callable[[int], float]) -> np.ndarray:
        """Returns the new theta after one step with gradient g."""
        theta = np.asarray(theta, np.float64)
        g = np.asarray(g, np.float64)
        slot = theta.shape if self.slot_shape is None else tuple(self.slot_shape)
        # R: the axes the slot averages over; K: the others (the kept ones)
        reduced = (tuple(range(theta.ndim)) if slot == () else
                   tuple(i for i, (s, n) in enumerate(zip(slot, theta.shape)) if s < n))
        kept = tuple(i for i in range(theta.ndim) if i not in reduced)
        column = (self.second_moment == "row-col" and bool(reduced)
                  and int(np.prod(slot)) > 1)
        if self.v is None:
            self.v = np.zeros(slot)
            self.b = np.full(slot, float(self.b0))
            self.m = np.zeros(theta.shape)
            if column:
                self.u = np.zeros([1 if i in kept else n for i, n in enumerate(theta.shape)])
        self.t += 1
        t = self.t
        xi = float(xi(t)) if callable(xi) else float(xi)
        if self.clip_value is not None and self.clip_value > 0:
            g = np.clip(g, -self.clip_value, self.clip_value)
        # M(g^2): mean over the axes the slot shares (all axes for a scalar slot)
        if slot == ():
            g2 = np.mean(g * g)
        else:
            g2 = np.mean(g * g, axis=reduced, keepdims=True)
        self.v = self.beta * self.v + (1 - self.beta) * g2
        v_hat = np.maximum(self.v, self.epsilon) / (1 - self.beta**t)
        normaliser = v_hat  # what g is divided by the square root of
        if column:
            self.u = self.beta * self.u + (1 - self.beta) * np.mean(g * g, axis=kept,
                                                                    keepdims=True)
            u_hat = np.maximum(self.u, self.epsilon) / (1 - self.beta**t)
            mean_v_hat = max(np.mean(self.v), self.epsilon) / (1 - self.beta**t)
            normaliser = v_hat * u_hat / mean_v_hat  # broadcasts to the parameter's shape
        b_prev = self.b
        rho_xi = self.decay_ratio * xi
        c_t = (1 + self.c_coef * math.sqrt(rho_xi) * b_prev) ** -0.5
        d_t = 1 / (1 + self.d_coef * math.sqrt(xi * self.eta) * b_prev)
        gamma = c_t * rho_xi**2 * g2 / v_hat
        delta = -d_t * (xi * self.eta * g / np.sqrt(normaliser)
                        + (0.5 * gamma + self.extra_l2) * theta)
        self.b = b_prev + gamma * (1 + b_prev)
        if self.momentum > 0:
            self.m = self.momentum * self.m + (1 - self.momentum) * delta
            delta = self.m
        return theta + delta
