"""What Amos is doing, from an optax state: :func:`diagnostics` (pure and jit-able).

The numbers and their formulas are those of :mod:`amosopt.diagnostics`, the same as
:meth:`amosopt.torch.Amos.diagnostics` gives on the same problem.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from amosopt import diagnostics as shared
from amosopt.hyperparameters import DEFAULTS
from amosopt.optax.transform import ScaleByAmosState, _eta_function, path_to_name

__all__ = ["decay_onset", "diagnostics"]


def _amos_state(state: Any) -> ScaleByAmosState:
    found = [s for s in jax.tree_util.tree_leaves(
        state, is_leaf=lambda x: isinstance(x, ScaleByAmosState))
        if isinstance(s, ScaleByAmosState)]
    if len(found) != 1:
        raise ValueError(f"Invalid state: expected the state of one amosopt.optax.amos (or "
                         f"scale_by_amos), found {len(found)} ScaleByAmosState in it")
    return found[0]


def diagnostics(state: Any, params: Any, *, learning_rate: Any, eta_fn: Any,
                beta: float = DEFAULTS["beta"], extra_l2: float = DEFAULTS["extra_l2"],
                d_coef: float = DEFAULTS["d_coef"], c_coef: float = DEFAULTS["c_coef"],
                epsilon: float = DEFAULTS["epsilon"], clip_value: float | None = None,
                grads: Any = None, per_parameter: bool = True, shape_fn: Any = None,
                momentum: Any = None, second_moment: Any = None,
                decay_ratio: float = DEFAULTS["decay_ratio"]) -> dict[str, jax.Array]:
    """Per-variable diagnostics of Amos after the steps that ``state`` has seen.

    Pass the arguments given to :func:`amosopt.optax.amos` (``learning_rate`` may be a
    schedule: the next update's ``xi``, ``schedule(count)``, is used). With ``grads`` (the last
    gradient) and ``clip_value``, ``clip_fraction`` too. ``shape_fn``, ``momentum`` and
    ``second_moment`` are accepted so that the same keyword arguments pass unchanged, and do not
    change the numbers: the slots in ``state`` have their shapes already, momentum averages the
    updates after Amos has made them, and the numbers are the slot's (``v``'s).
    ``per_parameter=False`` keeps only the min / median / max over the variables (a few dozen
    keys however large the model).

    Returns:
        A flat dict: ``"KEY/NAME"`` for each variable (``NAME`` its key path joined with
        ``/``) if ``per_parameter``, and ``"KEY/min"``, ``"KEY/median"``, ``"KEY/max"`` over the
        variables, for the keys of :mod:`amosopt.diagnostics` (``lr``, ``weight_decay``,
        ``d_t``, ``c_t``, ``b``, ``decay``, ``decay_onset``, ``clip_fraction``); scalars.

    Example:
        >>> import jax.numpy as jnp
        >>> from amosopt.optax import amos
        >>> params = {"w": jnp.ones((4, 3))}
        >>> tx = amos(0.1, eta_fn=0.5)
        >>> state = tx.init(params)
        >>> _, state = tx.update({"w": jnp.ones((4, 3))}, state, params)
        >>> numbers = diagnostics(state, params, learning_rate=0.1, eta_fn=0.5)
        >>> round(float(numbers["lr/w"]), 4), round(float(numbers["d_t/w"]), 6)
        (0.05, 0.999441)
    """
    del shape_fn, momentum, second_moment  # see the docstring
    amos_state = _amos_state(state)
    count = amos_state.count
    xi = learning_rate(count) if callable(learning_rate) else learning_rate
    eta_of = _eta_function(eta_fn)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    vs, bs = treedef.flatten_up_to(amos_state.v), treedef.flatten_up_to(amos_state.b)
    gs = [None] * len(vs) if grads is None else treedef.flatten_up_to(grads)
    per_name = {}
    for (path, theta), v, b, g in zip(leaves, vs, bs, gs):
        name = path_to_name(path)
        per_name["/".join(name)] = shared.variable(
            xi=jnp.asarray(xi, v.dtype), eta=eta_of(name, tuple(theta.shape)), beta=beta,
            count=count, v=v, b=b, c_coef=c_coef, d_coef=d_coef, extra_l2=extra_l2,
            epsilon=epsilon, xp=jnp, grad=g, clip_value=clip_value, decay_ratio=decay_ratio)
    return shared.flatten(per_name, per_parameter, xp=jnp)


def decay_onset(state: Any, params: Any, **kwargs: Any) -> dict[str, jax.Array]:
    """Per variable (``/``-joined name): in how many more steps Amos's own decay will have cut
    its step by another 10%, at steady gradient statistics; the arguments of
    :func:`diagnostics` (the counterpart of :func:`amosopt.torch.decay_onset`)."""
    numbers = diagnostics(state, params, **kwargs)
    prefix = "decay_onset/"
    return {key[len(prefix):]: value for key, value in numbers.items()
            if key.startswith(prefix) and key[len(prefix):] not in ("min", "median", "max")}
