r"""What Amos is doing: per-variable numbers for logging, computed from the optimizer state.

Framework-free (``xp`` is ``numpy`` or ``jax.numpy``); :meth:`amosopt.torch.Amos.diagnostics`
and :func:`amosopt.optax.diagnostics` evaluate it on their state. After ``t`` steps, with the
slots ``v_t``, ``b_t`` of one variable (Tian & Parikh 2022, arXiv 2210.11693, Algorithm 1), the
next step uses

.. math::

    1/\hat v = (1 - \beta^t) / \max(v_t, \epsilon), \qquad
    d = \big(1 + d_\text{coef} \sqrt{\xi\eta}\, b_t\big)^{-1}, \qquad
    c = \big(1 + c_\text{coef} \sqrt{\rho\xi}\, b_t\big)^{-1/2}, \qquad
    \gamma = c\, (\rho\xi)^2\, g^2/\hat v \approx c\, (\rho\xi)^2

(the last at steady gradient statistics, :math:`g^2/\hat v = 1`, since the next gradient is not
known yet; :math:`\rho` is ``decay_ratio``, 1 in the paper). The keys, each the mean over the
variable's slot entries:

* ``lr``: :math:`\xi\eta\, d \sqrt{1/\hat v}`, the step per unit of gradient (large where the
  gradients are tiny);
* ``step``: :math:`\xi\eta\, d`, how far an entry moves in one step when its gradient is at its
  usual scale (:math:`g^2 = \hat v`): the number to watch;
* ``weight_decay``: :math:`\tfrac12\gamma + \text{extra\_l2}` (the update applies it times
  :math:`d`);
* ``d_t``, ``c_t``, ``b``: the decay factors and the accumulator;
* ``decay``: :math:`1 - d`, the share of the step that Amos's own decay has removed so far;
* ``decay_onset``: steps until the step has dropped by another 10%
  (:func:`steps_until_drop`);
* ``clip_fraction``: the share of the last gradient's entries beyond ``clip_value`` (when
  clipping is on and the gradient is there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from amosopt.hyperparameters import DEFAULTS

__all__ = ["KEYS", "ONSET_DROP", "flatten", "steps_until_drop", "variable"]

KEYS = ("lr", "step", "weight_decay", "d_t", "c_t", "b", "decay", "decay_onset",
        "clip_fraction")
#: the drop of the step that ``decay_onset`` counts to
ONSET_DROP = 0.1


def _b_clock(b: Any, xi: Any, c_coef: Any, xp: Any) -> Any:
    """``xi^2 t(b)``: steps (times ``xi^2``) for ``b`` to grow from 0 to ``b`` at steady
    gradient statistics, in continuous time. From ``db/dt = xi^2 (1 + b) / sqrt(1 + k b)``,
    ``k = c_coef sqrt(xi)``, with ``u = sqrt(1 + k b)``, ``a = sqrt(1 - k)``::

        xi^2 t(b) = integral_0^b sqrt(1 + k s) / (1 + s) ds
                  = 2 (u - 1) + a (ln(1 + b) - 2 ln((u + a) / (1 + a)))

    (the substitution ``u = sqrt(1 + k s)`` turns the integrand into
    ``2 + 2 a^2 / (u^2 - a^2)``)."""
    k = c_coef * xp.sqrt(xi)
    a = xp.sqrt(1 - k)
    u = xp.sqrt(1 + k * b)
    return 2 * (u - 1) + a * (xp.log1p(b) - 2 * xp.log((u + a) / (1 + a)))


def steps_until_drop(xi: Any, eta: Any, b: Any = 0.0, *, drop: float = ONSET_DROP,
                     c_coef: Any = DEFAULTS["c_coef"], d_coef: Any = DEFAULTS["d_coef"],
                     decay_ratio: Any = DEFAULTS["decay_ratio"], xp: Any = math) -> Any:
    """Steps until the decay factor ``d`` has fallen by ``drop`` from its value at ``b``, at
    steady gradient statistics (``g^2 / v_hat = 1``; exact in the limit of small steps for a
    constant gradient, see :func:`_b_clock`). ``d`` falls by ``drop`` when
    ``1 + d_coef sqrt(xi eta) b`` grows by the factor ``1 / (1 - drop)``; ``b`` grows at the
    decay's rate ``decay_ratio * xi``. Needs ``c_coef sqrt(decay_ratio xi) < 1`` (``xi < 16``
    with the paper's constants)."""
    k_d = d_coef * xp.sqrt(xi * eta)
    target = ((1 + k_d * b) / (1 - drop) - 1) / k_d
    xi_g = decay_ratio * xi
    return (_b_clock(target, xi_g, c_coef, xp) - _b_clock(b, xi_g, c_coef, xp)) / xi_g**2


def variable(*, xi: Any, eta: Any, beta: Any, count: Any, v: Any, b: Any, c_coef: Any,
             d_coef: Any, extra_l2: Any, epsilon: Any, xp: Any, grad: Any = None,
             clip_value: Any = None, decay_ratio: Any = DEFAULTS["decay_ratio"]
             ) -> dict[str, Any]:
    """The diagnostics of one variable from its slots (scalars of ``xp``; see the module)."""
    r = (1 - beta ** count) / xp.maximum(v, epsilon)  # 1 / v_hat; 0 before the first step
    d = 1 / (1 + d_coef * xp.sqrt(xi * eta) * b)
    c = 1 / xp.sqrt(1 + c_coef * xp.sqrt(decay_ratio * xi) * b)
    gamma = c * (decay_ratio * xi)**2
    out = {
        "lr": xp.mean(xi * eta * d * xp.sqrt(r)),
        "step": xp.mean(xi * eta * d),
        "weight_decay": xp.mean(0.5 * gamma + extra_l2),
        "d_t": xp.mean(d), "c_t": xp.mean(c), "b": xp.mean(b), "decay": xp.mean(1 - d),
        # at xi = 0 (a finished cooldown) nothing moves: the onset is never
        "decay_onset": xp.where(xi > 0, xp.mean(steps_until_drop(
            xp.where(xi > 0, xi, 1.0), eta, b, c_coef=c_coef, d_coef=d_coef,
            decay_ratio=decay_ratio, xp=xp)), xp.inf),
    }
    if clip_value is not None and grad is not None:
        out["clip_fraction"] = xp.mean(xp.where(xp.abs(grad) > clip_value, 1.0, 0.0))
    return out


def flatten(per_name: Mapping[str, Mapping[str, Any]], per_parameter: bool = True,
            xp: Any = None) -> dict[str, Any]:
    """``{"KEY/NAME": value}`` for every variable (if ``per_parameter``), and
    ``{"KEY/min", "KEY/median", "KEY/max"}`` over the variables: a flat dict for TensorBoard,
    W&B or Lightning's ``log_dict``. Without ``xp`` the values become Python floats; with
    ``jax.numpy`` they stay traceable scalars."""
    to_float = xp is None
    if xp is None:
        import numpy as xp  # lazy: amosopt itself (rules, suggest) needs no numpy
    flat: dict[str, Any] = {}
    for key in KEYS:
        values = {name: d[key] for name, d in per_name.items() if key in d}
        if not values:
            continue
        stacked = xp.stack([xp.asarray(value) for value in values.values()])
        summary = {"min": xp.min(stacked), "median": xp.median(stacked), "max": xp.max(stacked)}
        entries = ({f"{key}/{name}": value for name, value in values.items()}
                   if per_parameter else {})
        entries.update({f"{key}/{stat}": value for stat, value in summary.items()})
        flat.update({k: float(v) for k, v in entries.items()} if to_float else entries)
    return flat
