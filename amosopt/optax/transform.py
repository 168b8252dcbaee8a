"""Amos as optax transformations: :func:`scale_by_amos`, :func:`amos`, :class:`ScaleByAmosState`.

Tian & Parikh, `Amos: An Adam-style Optimizer with Adaptive Weight Decay towards Model-Oriented
Scale <https://arxiv.org/abs/2210.11693>`_, 2022. The numbers are those of the authors' reference
code (``jestimator.amos``), without its flax dependency: parameter names come from JAX key paths,
so any pytree works.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from amosopt.hyperparameters import (
    DEFAULTS,
    INTERVALS,
    SECOND_MOMENT,
    check_interval,
    check_second_moment,
    hints_foreign_arguments,
)
from amosopt.optax.nonfinite import skip_if_not_finite
from amosopt.rules import (
    PathName,
    Rules,
    Shape,
    as_b0_fn,
    as_eta_fn,
    as_shape_fn,
    column_shape,
    is_rule_table,
    reduced_axes,
    warn_unused_rules,
)

__all__ = [
    "ScaleByAmosState",
    "amos",
    "param_names",
    "path_to_name",
    "scale_by_amos",
]

# optax's own message for a transformation that needs `params` (add_decayed_weights raises it)
_NO_PARAMS_MSG = getattr(
    getattr(getattr(optax, "_src", None), "base", None), "NO_PARAMS_MSG",
    "You are using a transformation that requires the current value of parameters, but you are "
    "not passing `params` when calling `update`.")

ScalarOrSchedule = Union[float, jax.Array, optax.Schedule]
#: ``eta_fn`` spec: a number, an :mod:`amosopt.rules` table, or ``(name, shape) -> number``.
EtaSpec = Union[float, Any, Callable[[PathName, Shape], float]]
#: ``shape_fn`` spec: ``None`` (full-size slots), a rule table, or ``(name, shape) -> tuple``.
ShapeSpec = Union[None, Any, Callable[[PathName, Shape], Shape]]


class ScaleByAmosState(NamedTuple):
    """State of :func:`scale_by_amos`; ``v`` and ``b`` mirror the parameter tree, and so does
    ``u`` with ``second_moment="row-col"`` (``None`` otherwise, and ``None`` at the leaves that
    have no column factor, see :func:`amosopt.rules.column_shape`)."""

    count: jax.Array  # shape=(), dtype=jnp.int32: the number of updates done, t.
    v: optax.Updates  # running mean of the reduced squared gradient, slot-shaped.
    b: optax.Updates  # decay accumulator, 1 + b_t = prod_i (1 + gamma_i), slot-shaped.
    u: Any = None  # running mean of the squared gradient over the kept axes (the column factor).


# ------------------------------------------------------------------------------------------------
# Names from key paths


def path_to_name(path: tuple[Any, ...]) -> PathName:
    """A JAX key path as a tuple of strings: dict keys, attribute names, indices as strings.

    For nested dicts (flax linen params) this equals jestimator's names. A trailing ``value``
    attribute, which is how boxed leaves such as flax ``nnx.Variable`` expose their array, is
    dropped so that nnx and linen models get the same names.

    >>> import jax
    >>> tree = {"dense": {"kernel": 0.0}, "blocks": [{"w": 1.0}]}
    >>> [path_to_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    [('blocks', '0', 'w'), ('dense', 'kernel')]
    """
    name = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            name.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            name.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            name.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            name.append(str(key.key))
        else:  # a custom key type: its string form, without keystr's brackets
            name.append(str(key).strip(".[]'\""))
    if len(path) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and name[-1] == "value":
        name.pop()
    return tuple(name)


def param_names(params: Any) -> Any:
    """The tree of names (tuples of strings) that ``eta_fn``/``shape_fn`` receive for ``params``.

    >>> param_names({"dense": {"kernel": 0.0, "bias": 0.0}})
    {'dense': {'bias': ('dense', 'bias'), 'kernel': ('dense', 'kernel')}}
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: path_to_name(path), params)


# ------------------------------------------------------------------------------------------------
# Validation (concrete values only: inside inject_hyperparams the values may be tracers)


def _concrete(value: Any) -> float | None:
    """``value`` as a float when it is a known number, None when it is traced or not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        return float(value)
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
        if value.ndim == 0:
            return float(value)
    return None


def _is_scalar(value: Any) -> bool:
    return _concrete(value) is not None or (isinstance(value, jax.Array) and value.ndim == 0)


def _check_number(name: str, value: Any, *, alias: str | None = None) -> None:
    """Raises ValueError naming ``alias or name`` unless ``value`` (a scalar) lies in the
    interval :data:`amosopt.hyperparameters.INTERVALS` gives ``name``; a tracer passes."""
    if not _is_scalar(value):
        raise ValueError(f"Invalid {alias or name}: {value!r}; expected a number. "
                         f"{INTERVALS[name][1]}.")
    x = _concrete(value)
    if x is not None:  # a tracer (inject_hyperparams under jit): nothing to check at trace time
        check_interval(name, x, alias=alias)


def _check_hyperparameters(learning_rate: Any, beta: Any, extra_l2: Any, d_coef: Any,
                           c_coef: Any, epsilon: Any, decay_ratio: Any) -> None:
    if not callable(learning_rate):  # a schedule count -> number is checked by no one
        _check_number("lr", learning_rate, alias="learning_rate")
    for name, value in (("beta", beta), ("extra_l2", extra_l2), ("d_coef", d_coef),
                        ("c_coef", c_coef), ("epsilon", epsilon), ("decay_ratio", decay_ratio)):
        _check_number(name, value)


def _eta_function(spec: EtaSpec) -> Callable[[PathName, Shape], Any]:
    """A checked ``(name, shape) -> eta``; a traced scalar (inject_hyperparams) passes as is."""
    if spec is None:
        raise TypeError(
            "amos needs eta_fn, the expected magnitude eta of each variable's entries. The "
            "automatic scales: scales = amosopt.optax.auto_scales(params), then "
            "amos(learning_rate, eta_fn=scales.eta, shape_fn=scales.slot_shape); or a number "
            "for all variables, or a rule table {regex: eta}.")
    if isinstance(spec, jax.Array) and spec.ndim == 0 and _concrete(spec) is None:
        return lambda name, shape: spec
    number = _concrete(spec)
    if number is not None:
        return as_eta_fn(number)
    if callable(spec) and not hasattr(spec, "pairs"):  # a user function, maybe using jnp
        def fn(name: PathName, shape: Shape) -> Any:
            with jax.ensure_compile_time_eval():  # eta depends on (name, shape) only: a constant
                value = spec(name, shape)
            concrete = _concrete(value)
            return value if concrete is None else concrete
        return as_eta_fn(fn)
    return as_eta_fn(spec, "/")


def _b0_function(spec: Any) -> Callable[[PathName, Shape], Any]:
    """A checked ``(name, shape) -> b0``; a scalar array (``inject_hyperparams`` passes every
    number as one) is a number, a traced one passes as is."""
    if _is_scalar(spec):
        number = _concrete(spec)
        if number is None:
            return lambda name, shape: spec
        spec = number
    return as_b0_fn(spec, "/")


def _slot_dtype(name: PathName, dtype: Any) -> Any:
    """float32 slots for 16-bit parameters, the parameter's own dtype otherwise."""
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"Amos needs real floating-point parameters, but {'/'.join(name)!r} has dtype {dtype}; "
            "leave non-trainable leaves out of the tree given to the optimizer (or optax.masked)."
        )
    return jnp.promote_types(dtype, jnp.float32)


# ------------------------------------------------------------------------------------------------
# The update of one variable


def _amos_leaf(g: jax.Array, theta: jax.Array, v: jax.Array, b: jax.Array,
               u: jax.Array | None, *, xi: Any, eta: Any, beta: Any, count: jax.Array,
               extra_l2: Any, d_coef: Any, c_coef: Any, epsilon: Any, decay_ratio: Any
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """One Amos step for one variable; returns (update Delta, new v, new b, new u).

    Computed in the slots' dtype (float32 for 16-bit parameters); the update is cast back to the
    gradient's dtype, the slots to their own, so state dtypes never change. ``u`` is the column
    factor (``None``: the paper's update), see :func:`_column_scaled`.
    """
    dtype, update_dtype = v.dtype, g.dtype
    if g.size == 0:  # nothing to update; a mean over no entries would put NaN in v
        return jnp.zeros_like(g), v, b, u
    as_dtype = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    g, theta = g.astype(dtype), theta.astype(dtype)
    xi, eta, beta = as_dtype(xi), as_dtype(eta), as_dtype(beta)
    axes = reduced_axes(g.shape, v.shape)
    g2 = jnp.mean(jnp.square(g), axis=axes, keepdims=bool(v.shape))  # M(g_t^2), slot-shaped
    v_new = beta * v + (1 - beta) * g2
    r = (1 - beta ** count) / jnp.maximum(v_new, as_dtype(epsilon))  # 1 / v_hat_t
    xi_g = xi * as_dtype(decay_ratio)  # ρξ, the decay's rate (ρ = 1: exactly ξ)
    c_t = jax.lax.rsqrt(1 + as_dtype(c_coef) * jnp.sqrt(xi_g) * b)
    gamma = c_t * jnp.square(xi_g) * r * g2
    xi_eta = xi * eta
    d_t = 1 / (1 + as_dtype(d_coef) * jnp.sqrt(xi_eta) * b)
    g_step, u_new = (g, None) if u is None else _column_scaled(g, v_new, u, axes, beta,
                                                                as_dtype(epsilon))
    delta = -d_t * (xi_eta * jnp.sqrt(r) * g_step + (0.5 * gamma + as_dtype(extra_l2)) * theta)
    b_new = b + gamma * (1 + b)
    return (delta.astype(update_dtype), v_new.astype(v.dtype), b_new.astype(b.dtype),
            None if u is None else u_new.astype(u.dtype))


def _column_scaled(g: jax.Array, v: jax.Array, u: jax.Array, axes: tuple[int, ...], beta: Any,
                   epsilon: Any) -> tuple[jax.Array, jax.Array]:
    r"""The gradient scaled by the column factor, and the new column factor :math:`u_t`.

    With :math:`K` the axes the slot keeps (all but ``axes``, :math:`R`):

    .. math::
        u_t = \beta u_{t-1} + (1-\beta) M_K(g_t^2), \qquad
        w_t = \max(u_t, \epsilon) / \max(\mathrm{mean}(v_t), \epsilon), \qquad
        \tilde g_t = g_t / \sqrt{w_t}

    so that :math:`\xi\eta\, \tilde g_t / \sqrt{\hat v_t}` is :math:`\xi\eta\, g_t` over
    the square root of the rank-1 estimate :math:`\hat v_t \hat u_t / \mathrm{mean}(\hat v_t)`
    (the bias corrections cancel in :math:`w_t`, whose mean is about 1).
    """
    kept = tuple(i for i in range(g.ndim) if i not in axes)
    u_new = beta * u + (1 - beta) * jnp.mean(jnp.square(g), axis=kept, keepdims=True)
    w = jnp.maximum(u_new, epsilon) / jnp.maximum(jnp.mean(v), epsilon)
    return g * jax.lax.rsqrt(w), u_new


# ------------------------------------------------------------------------------------------------
# Transformations


@hints_foreign_arguments(lr="learning_rate")
def scale_by_amos(
    learning_rate: ScalarOrSchedule,
    eta_fn: EtaSpec = None,
    shape_fn: ShapeSpec = None,
    beta: float = DEFAULTS["beta"],
    extra_l2: float = DEFAULTS["extra_l2"],
    d_coef: float = DEFAULTS["d_coef"],
    c_coef: float = DEFAULTS["c_coef"],
    epsilon: float = DEFAULTS["epsilon"],
    decay_ratio: float = DEFAULTS["decay_ratio"],
    second_moment: str = SECOND_MOMENT,
    *,
    b0: Any = DEFAULTS["b0"],
) -> optax.GradientTransformationExtraArgs:
    """Rescales updates by the Amos rule; see :func:`amos` for the math and the arguments.

    The result is already the (negative) step: add it to the parameters with
    ``optax.apply_updates``, do not scale it by a learning rate afterwards.

    Raises:
        ValueError: an invalid hyper-parameter (here), or, at ``init``, a slot shape that does
            not broadcast to its parameter, an ``eta`` that is not a positive finite number, or a
            non-floating parameter; at ``update``, ``params=None``.

    Warns:
        amosopt.rules.UnmatchedRuleWarning: at ``init``, for each rule of an ``eta_fn`` /
            ``shape_fn`` table that no variable takes, naming the pattern and the nearest
            names (an error under ``warnings.simplefilter("error", UnmatchedRuleWarning)``).
    """
    _check_hyperparameters(learning_rate, beta, extra_l2, d_coef, c_coef, epsilon, decay_ratio)
    factored = check_second_moment(second_moment) == "row-col"
    eta_of = _eta_function(eta_fn)
    slot_shape_of = as_shape_fn(shape_fn, "/")
    b0_of = _b0_function(b0)

    def slot_zeros(name: PathName, theta: Any) -> jax.Array:
        shape = tuple(theta.shape)
        eta_of(name, shape)  # validates eta now, not at the first update
        slot = shape if slot_shape_of is None else slot_shape_of(name, shape)
        return jnp.zeros(slot, _slot_dtype(name, theta.dtype))

    def column_zeros(theta: Any, v: jax.Array) -> jax.Array | None:
        shape = column_shape(theta.shape, v.shape)
        return None if shape is None else jnp.zeros(shape, v.dtype)

    tables = [(Rules(spec, "/"), what)
              for spec, what in ((eta_fn, "eta_fn"), (shape_fn, "shape_fn"), (b0, "b0"))
              if is_rule_table(spec)]

    def b_start(path: Any, theta: Any, v: jax.Array) -> jax.Array:
        """b_0: 0 (the paper's), or a warm start's (see ``b0`` of :func:`amos`)."""
        return jnp.full_like(v, b0_of(path_to_name(path), tuple(theta.shape)))

    def init_fn(params: optax.Params) -> ScaleByAmosState:
        v = jax.tree_util.tree_map_with_path(lambda p, x: slot_zeros(path_to_name(p), x), params)
        names = [path_to_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        for rules, what in tables:  # a rule no variable takes: a typo in its regex, likely
            warn_unused_rules(rules, names, what, stacklevel=2)
        b = jax.tree_util.tree_map_with_path(b_start, params, v)
        u = jax.tree.map(column_zeros, params, v) if factored else None
        return ScaleByAmosState(count=jnp.zeros([], jnp.int32), v=v, b=b, u=u)

    def update_fn(updates: optax.Updates, state: ScaleByAmosState,
                  params: optax.Params | None = None, **extra_args: Any):
        del extra_args
        if params is None:
            raise ValueError(_NO_PARAMS_MSG)
        # a schedule sees optax's count, the updates done before this one (0 first), as in
        # optax.adam; the bias correction uses the 1-based step t = count + 1
        xi = learning_rate(state.count) if callable(learning_rate) else learning_rate
        count = optax.safe_increment(state.count)  # t, 1-based
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        grads = treedef.flatten_up_to(updates)
        vs, bs = treedef.flatten_up_to(state.v), treedef.flatten_up_to(state.b)
        us = treedef.flatten_up_to(state.u) if factored else [None] * len(vs)
        out = []
        for (path, theta), g, v, b, u in zip(leaves, grads, vs, bs, us):
            eta = eta_of(path_to_name(path), tuple(theta.shape))
            out.append(_amos_leaf(g, theta, v, b, u, xi=xi, eta=eta, beta=beta, count=count,
                                  extra_l2=extra_l2, d_coef=d_coef, c_coef=c_coef,
                                  epsilon=epsilon, decay_ratio=decay_ratio))
        delta, v, b, u = (treedef.unflatten([leaf[i] for leaf in out]) for i in range(4))
        return delta, ScaleByAmosState(count=count, v=v, b=b, u=u if factored else None)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _momentum(mu: Any) -> optax.GradientTransformation:
    """``m <- mu m + (1 - mu) Delta`` without debiasing, as ``optax.ema(mu, debias=False)``,
    but with a float32 ``m`` for 16-bit updates (optax.ema fixes one accumulator dtype for all
    leaves at construction, before the parameters' dtypes are known)."""

    def init_fn(params: optax.Params) -> optax.EmaState:
        m = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.promote_types(x.dtype, jnp.float32)),
                         params)
        return optax.EmaState(count=jnp.zeros([], jnp.int32), ema=m)

    def update_fn(updates: optax.Updates, state: optax.EmaState, params: Any = None):
        del params

        def step(delta: jax.Array, m: jax.Array) -> jax.Array:
            return ((1 - mu) * delta.astype(m.dtype) + mu * m).astype(m.dtype)

        m = jax.tree.map(step, updates, state.ema)
        out = jax.tree.map(lambda x, u: x.astype(u.dtype), m, updates)
        return out, optax.EmaState(count=optax.safe_increment(state.count), ema=m)

    return optax.GradientTransformation(init_fn, update_fn)


@hints_foreign_arguments(lr="learning_rate")  # weight_decay=: what to pass instead
def amos(
    learning_rate: ScalarOrSchedule,
    eta_fn: EtaSpec = None,
    shape_fn: ShapeSpec = None,
    beta: float = DEFAULTS["beta"],
    momentum: float | None = None,
    clip_value: float | None = None,
    extra_l2: float = DEFAULTS["extra_l2"],
    d_coef: float = DEFAULTS["d_coef"],
    c_coef: float = DEFAULTS["c_coef"],
    epsilon: float = DEFAULTS["epsilon"],
    decay_ratio: float = DEFAULTS["decay_ratio"],
    second_moment: str = SECOND_MOMENT,
    *,
    nonfinite: str | None = None,
    b0: Any = DEFAULTS["b0"],
) -> optax.GradientTransformationExtraArgs:
    r"""The Amos optimizer: element-wise clipping, then Amos, then momentum.

    Amos is Adam with adaptive learning-rate decay and weight decay, both driven by a
    per-variable *model-oriented scale* :math:`\eta`, the expected magnitude of the variable's
    entries once trained.

    Let :math:`\xi_t` represent ``learning_rate`` (a schedule is called with optax's ``count``,
    the number of updates done before this one: 0 for the first update, as ``optax.adam`` and
    ``optax.inject_hyperparams`` do, so :math:`\xi_t` is ``schedule(t - 1)``), :math:`\eta` the
    value of ``eta_fn`` for the variable, :math:`\beta` ``beta``,
    :math:`\lambda` ``extra_l2``, :math:`c, d` ``c_coef``, ``d_coef``, :math:`\epsilon`
    ``epsilon``, and :math:`\mu` ``momentum``. The slots :math:`v` and :math:`b` have the shape
    given by ``shape_fn`` (by default the variable's); :math:`M(\cdot)` averages over the axes
    where the slot is 1 (all axes for a scalar slot ``()``). With :math:`v_0 = m_0 = 0`,
    :math:`b_0` = ``b0`` (0, the paper's, by default) and :math:`g_t` the gradient clipped to
    :math:`[-\text{clip}, \text{clip}]`:

    .. math::

        \begin{align*}
        v_t &\leftarrow \beta v_{t-1} + (1 - \beta)\, M(g_t^2), \qquad
            \hat v_t \leftarrow \max(v_t, \epsilon) / (1 - \beta^t) \\
        c_t &\leftarrow (1 + c \sqrt{\rho\xi_t}\, b_{t-1})^{-1/2}, \qquad
            d_t \leftarrow (1 + d \sqrt{\xi_t \eta}\, b_{t-1})^{-1} \\
        \gamma_t &\leftarrow c_t\, (\rho\xi_t)^2\, M(g_t^2) / \hat v_t \\
        \Delta_t &\leftarrow -d_t \big(\xi_t \eta\, g_t / \sqrt{\hat v_t}
            + (\tfrac12 \gamma_t + \lambda)\, \theta_{t-1}\big) \\
        b_t &\leftarrow b_{t-1} + \gamma_t (1 + b_{t-1}) \\
        m_t &\leftarrow \mu m_{t-1} + (1 - \mu) \Delta_t \quad
            \text{(if momentum; the update is then } m_t\text{)}
        \end{align*}

    and the caller applies :math:`\theta_t = \theta_{t-1} + \Delta_t` (``optax.apply_updates``).
    :math:`\rho` is ``decay_ratio``; the paper's algorithm has :math:`\rho = 1` (the default).

    With ``second_moment="row-col"`` each entry's step is normalised by a rank-1 estimate of
    its own second moment instead of its slot's (Adafactor's factorisation, Shazeer & Stern
    2018, with means for sums). Let :math:`R` be the axes the slot reduces and :math:`K` the
    ones it keeps; a column factor :math:`u` (shape: the variable's, with the kept axes 1)
    runs beside :math:`v`, and only the gradient term of :math:`\Delta_t` changes:

    .. math::

        \begin{align*}
        u_t &\leftarrow \beta u_{t-1} + (1 - \beta)\, M_K(g_t^2), \qquad
            \hat u_t \leftarrow \max(u_t, \epsilon) / (1 - \beta^t) \\
        \hat V_t &\leftarrow \hat v_t\, \hat u_t / \overline{\hat v_t}, \qquad
            \overline{\hat v_t} = \max(\mathrm{mean}(v_t), \epsilon) / (1 - \beta^t) \\
        \Delta_t &\leftarrow -d_t \big(\xi_t \eta\, g_t / \sqrt{\hat V_t}
            + (\tfrac12 \gamma_t + \lambda)\, \theta_{t-1}\big)
        \end{align*}

    (:math:`\mathrm{mean}(v_t)` is the mean of :math:`v_t` over the slot, the same number as
    the mean of :math:`u_t`: both average all of :math:`g^2`). :math:`v_t` drives
    :math:`\gamma_t, b_t, c_t, d_t` exactly as before. A variable whose slot reduces no axis
    (full size) or has one entry (``()``) has no column factor (its ``state.u`` leaf is
    ``None``) and the paper's update; see :func:`amosopt.rules.column_shape`. The cost is one
    vector per matrix (``(1, in)`` beside a ``(out, 1)`` slot), in the slots' dtype.

    Unlike most optax optimizers, ``learning_rate`` is an argument of the scaling itself, not a
    final ``scale_by_learning_rate``: :math:`\xi^2`, :math:`\sqrt{\xi}` and :math:`\xi\eta` appear
    inside the update, so it cannot be factored out (as in ``optax.contrib.prodigy``).

    Slots are float32 for 16-bit parameters (the arithmetic too; the update is cast back to the
    gradient's dtype): ``epsilon = 2**-125`` is 0 in float16. Arguments and defaults are those of
    ``jestimator.amos.amos``, so replacing its import gives the same numbers (a schedule shifted
    by one, see Schedules).

    A non-finite gradient cannot raise inside ``jit`` (the PyTorch ``Amos`` raises
    ``FloatingPointError`` by default): it would put NaN into the slots for good. Pass
    ``nonfinite="skip"`` (the PyTorch ``Amos(nonfinite="skip")``): a step whose clipped
    gradient is not finite then changes no parameter and no state, and is counted
    (:func:`~amosopt.optax.nonfinite.skip_if_not_finite`).

    Schedules: any optax schedule (``optax.warmup_cosine_decay_schedule``,
    :func:`amosopt.optax.wsd_schedule`) drops in unchanged, also through
    ``optax.inject_hyperparams(amos)(learning_rate=schedule, ...)``. ``jestimator.amos`` calls its
    schedule with the 1-based step instead: port a jestimator schedule ``f`` as
    ``lambda count: f(count + 1)``. The state's ``count`` is, as before, the number of updates
    done, so an optax state saved by an earlier amosopt (which called the schedule with
    ``count + 1``) loads and continues; only a schedule written for that 1-based call needs the
    same ``lambda count: f(count + 1)``.

    Args:
        learning_rate: :math:`\xi`, a non-negative number or a schedule ``count -> number``
            (``count`` = updates done, 0 at the first update). About :math:`1/\sqrt{N}` for
            :math:`N` independent batches in the training data.
        eta_fn: :math:`\eta` per variable: a positive number for all, an :mod:`amosopt.rules`
            table (``{regex: value}``, matched against the key path joined with ``'/'``), or
            jestimator's ``(name, shape) -> number`` with ``name`` a tuple of strings; the
            automatic one is ``amosopt.optax.auto_scales(params).eta``. Required: without it,
            a ``TypeError`` says so.
        shape_fn: the shape of the ``v`` and ``b`` slots per variable: ``None`` (full size), a
            rule table, or ``(name, shape) -> tuple``; each axis is the variable's or 1, or
            ``()`` for one scalar slot.
        beta: :math:`\beta \in [0, 1)`; make :math:`1 - \beta` about the size of
            ``learning_rate``. Defaults to 0.999.
        momentum: :math:`\mu \in [0, 1)` for an EMA of the updates (no debiasing); ``None`` or 0
            turns it off.
        clip_value: clips each gradient entry to ``[-clip_value, clip_value]`` first; ``None``
            turns it off.
        extra_l2: :math:`\lambda \ge 0`, an extra constant L2 term (experimental, not in the
            paper). Defaults to 0.
        d_coef: :math:`d \ge 0` in the learning-rate decay :math:`d_t`. Defaults to 0.25.
        c_coef: :math:`c \ge 0` in the weight-decay decay :math:`c_t`. Defaults to 0.25.
        epsilon: :math:`\epsilon > 0`, the floor on :math:`v`. Defaults to :math:`2^{-125}`.
        decay_ratio: :math:`\rho > 0`, the global rate of the decay as a fraction of the
            step's. Defaults to 1 (the paper's). :math:`\rho = 1/k` is exactly ``eta`` times
            :math:`k` with ``learning_rate`` divided by :math:`k`: the same initial step, a weight
            decay :math:`k^2` times weaker and a step decay :math:`d_t` that starts later; for
            budgets shorter than an epoch or two (``amos suggest --steps``).
        second_moment: ``"slot"`` (default, the paper's): :math:`g_t / \sqrt{\hat v_t}` with
            the slot-shaped :math:`v`; ``"row-col"``: each entry over the rank-1 estimate
            :math:`\hat V_t` above, at the cost of the column factors :math:`u`.
        nonfinite: ``None`` (default): every step is computed; ``"skip"``: a step whose
            (clipped) gradient or its square is not finite is skipped on the device.
        b0: :math:`b_0`, the value each variable's slot :math:`b` starts at (read by
            ``init``): a number :math:`\ge 0`, a rule table or ``(name, shape) -> number``, as
            ``eta_fn``. 0 (default) is the paper's fresh start. A warm start from pretrained
            weights sets how far along its own decay each variable already is: its first step
            is :math:`d_0 = 1/(1 + d\sqrt{\xi\eta}\, b_0)` of the full :math:`\xi\eta` and
            its weight decay is shrunk by :math:`c_0 = (1 + c\sqrt{\rho\xi}\, b_0)^{-1/2}`;
            ``auto_scales(params, pretrained=True)`` gives it as ``table.b0`` (with ``eta``
            from the weights). The state carries :math:`b`, so a restored state resumes exactly.

    Returns:
        An ``optax.GradientTransformationExtraArgs``, always
        ``optax.chain(clip or identity, scale_by_amos, momentum or identity)`` whatever the
        options, with ``nonfinite="skip"`` ``optax.chain(clip or identity,
        skip_if_not_finite(optax.chain(scale_by_amos, momentum or identity)))``; its ``update``
        needs ``params``.

    Raises:
        ValueError: naming the argument: a negative ``learning_rate``; ``beta`` or ``momentum``
            outside :math:`[0, 1)`; ``clip_value <= 0``; a negative ``extra_l2``, ``c_coef`` or
            ``d_coef``; ``epsilon <= 0``; a ``second_moment`` other than ``"slot"`` and
            ``"row-col"``; ``nonfinite`` not None or "skip". At ``init``: a slot shape that does
            not broadcast, an ``eta`` that is not a positive finite number, a parameter with no
            matching rule.
        TypeError: a keyword argument of another optimizer (``weight_decay``, ``b1``, ``eps``,
            ...), naming what Amos takes instead.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from amosopt.optax import amos
        >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
        >>> loss = lambda p: jnp.sum((jnp.ones(3) @ p["dense"]["kernel"] + p["dense"]["bias"]) ** 2)
        >>> solver = amos(learning_rate=0.1, momentum=0.9,
        ...               eta_fn={r".*/kernel": "sqrt(1 / SHAPE[0])", r".*/bias": 0.5},
        ...               shape_fn={r".*/kernel": "(1, SHAPE[1])", r".*": ()})
        >>> state = solver.init(params)
        >>> for _ in range(3):
        ...     grads = jax.grad(loss)(params)
        ...     updates, state = solver.update(grads, state, params)
        ...     params = optax.apply_updates(params, updates)
        ...     print(f"{loss(params):.3f}")
        17.715
        17.182
        16.439

    References:
        Tian and Parikh, `Amos: An Adam-style Optimizer with Adaptive Weight Decay towards
        Model-Oriented Scale <https://arxiv.org/abs/2210.11693>`_, 2022. Reference code:
        ``jestimator.amos`` (google-research/jestimator).
    """
    if momentum is not None:
        _check_number("momentum", momentum)
    if clip_value is not None:
        _check_number("clip_value", clip_value)
    # A Python 0 turns momentum off, as in jestimator. An array (what inject_hyperparams passes)
    # keeps it on, so the state has the same structure at init and under jit.
    momentum_off = momentum is None or (isinstance(momentum, numbers.Real) and momentum == 0)
    if nonfinite not in (None, "skip"):
        raise ValueError(f"Invalid nonfinite: {nonfinite!r}; it must be None (every step is "
                         "computed) or 'skip' (a non-finite step changes nothing)")
    clip = optax.identity() if clip_value is None else optax.clip(clip_value)
    steps = (scale_by_amos(learning_rate, eta_fn, shape_fn=shape_fn, beta=beta,
                           extra_l2=extra_l2, d_coef=d_coef, c_coef=c_coef, epsilon=epsilon,
                           decay_ratio=decay_ratio, second_moment=second_moment, b0=b0),
             optax.identity() if momentum_off else _momentum(momentum))
    if nonfinite == "skip":  # after clipping, which makes an inf finite, as in PyTorch
        return optax.chain(clip, skip_if_not_finite(optax.chain(*steps)))
    return optax.chain(clip, *steps)
