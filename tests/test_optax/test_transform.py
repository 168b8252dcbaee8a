"""Behaviour of amosopt.optax: convergence, jit, dtypes, optax wrappers, pytree names, bad input."""

from __future__ import annotations

import dataclasses
import doctest
import math
from typing import NamedTuple

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

import amosopt.optax  # noqa: E402
from amosopt.optax import ScaleByAmosState, amos, param_names, scale_by_amos  # noqa: E402
from amosopt.optax import sharding as sharding_module  # noqa: E402
from amosopt.optax import transform as transform_module  # noqa: E402
from tests.oracles import NumpyAmos  # noqa: E402

F32 = jnp.float32


def run_scan(tx, params, grad_fn, steps):
    """``steps`` jitted steps of ``tx`` on the gradient ``grad_fn(params)``, in one lax.scan."""

    def body(carry, _):
        params, state = carry
        updates, state = tx.update(grad_fn(params), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))(
        (params, tx.init(params)))
    return params, state


# ------------------------------------------------------------------------------------------------
# The reference's toy problems (jestimator amos_test.py; paper.md §1.5)


def test_parabola_converges():
    target = jnp.array([1.0, -1.0, 1.0], F32)
    loss = lambda theta: jnp.sum(jnp.square(theta - target))  # noqa: E731
    tx = amos(learning_rate=1.0, eta_fn=1.0, shape_fn=lambda name, shape: ())
    theta, _ = run_scan(tx, jnp.array([-1.0, 10.0, 1.0], F32), jax.grad(loss), 10_000)
    np.testing.assert_allclose(theta, target, atol=1e-2)


def test_rosenbrock_converges():
    def rosenbrock(xy):
        x, y = xy[0], xy[1]
        return jnp.square(1.0 - x) + 100.0 * jnp.square(y - jnp.square(x))

    tx = amos(learning_rate=0.5, eta_fn=1.0, shape_fn=lambda name, shape: (), beta=0.5,
              clip_value=1.0, momentum=0.9)
    theta, _ = run_scan(tx, jnp.zeros(2, F32), jax.grad(rosenbrock), 10_000)
    np.testing.assert_allclose(theta, [1.0, 1.0], atol=3e-2)


# ------------------------------------------------------------------------------------------------
# jit, dtypes, state


def small_params(dtype=F32):
    return {"w": jnp.linspace(-1.0, 1.0, 12, dtype=F32).reshape(3, 4).astype(dtype),
            "b": jnp.full((4,), 0.1, dtype), "s": jnp.asarray(0.5, dtype)}


SHAPE_RULES = {"w": "(1, SHAPE[1])", "b": (), "s": ()}


def dtypes_of(tree):
    return jax.tree.map(lambda x: (x.shape, jnp.asarray(x).dtype), tree)


def test_no_retrace_and_state_dtypes_are_stable():
    tx = amos(learning_rate=lambda count: 0.1 / jnp.sqrt(count + 1), eta_fn=0.5,
              shape_fn=SHAPE_RULES, momentum=0.9, clip_value=1.0)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        updates, state = tx.update(jax.tree.map(jnp.cos, params), state, params)
        return optax.apply_updates(params, updates), state

    params = small_params()
    state = tx.init(params)
    before = dtypes_of(state)
    for _ in range(3):
        params, state = step(params, state)
    assert len(traces) == 1, "the second call retraced: state dtypes or shapes changed"
    assert dtypes_of(state) == before
    assert int(state[1].count) == 3


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_low_precision_params(dtype):
    """Updates in the gradient's dtype, slots and momentum in float32, values as float32 math."""
    tx = amos(learning_rate=0.05, eta_fn=0.5, shape_fn=SHAPE_RULES, momentum=0.5)
    params = small_params(dtype)
    state = tx.init(params)
    before = dtypes_of(state)
    amos_state, momentum_state = state[1], state[2]
    for slot in jax.tree.leaves((amos_state.v, amos_state.b, momentum_state.ema)):
        assert slot.dtype == jnp.float32
    grads = jax.tree.map(lambda x: (jnp.sin(3.0 * x.astype(F32)) + 0.2).astype(dtype), params)
    oracle = {k: NumpyAmos(eta=0.5, slot_shape=None if k == "w" else (), momentum=0.5)
              for k in params}
    oracle["w"].slot_shape = (1, 4)
    step = jax.jit(tx.update)
    for _ in range(3):
        updates, state = step(grads, state, params)
        for k in params:
            assert updates[k].dtype == dtype
            theta = np.asarray(params[k], np.float64)
            expected = oracle[k].step(theta, np.asarray(grads[k], np.float64), 0.05) - theta
            tolerance = {jnp.float32: 1e-5}.get(dtype, 1e-2)
            np.testing.assert_allclose(np.asarray(updates[k], np.float64), expected,
                                       rtol=tolerance, atol=tolerance * np.max(np.abs(expected)))
        assert dtypes_of(state) == before


def test_state_is_stable_across_lax_cond():
    tx = amos(0.1, eta_fn=1.0, shape_fn=SHAPE_RULES)
    params = small_params(jnp.bfloat16)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def maybe_step(flag, state):
        return jax.lax.cond(flag, lambda s: tx.update(grads, s, params)[1], lambda s: s, state)

    assert dtypes_of(maybe_step(True, state)) == dtypes_of(state)


def test_zero_size_parameter_gets_no_nan():
    tx = amos(0.1, eta_fn=1.0, shape_fn=lambda name, shape: ())
    params = {"empty": jnp.zeros((0, 3), F32), "w": jnp.ones((2,), F32)}
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert updates["empty"].shape == (0, 3)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((updates, state)))


# ------------------------------------------------------------------------------------------------
# optax wrappers and flax


def steps_of(tx, params, n, jit=True):
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    out = []
    for i in range(n):
        grads = jax.tree.map(lambda x: jnp.cos(x + i), params)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out, state


def assert_trees_close(a, b, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-7)


def test_inject_hyperparams_equals_plain_and_learning_rate_can_change():
    kwargs = dict(eta_fn=0.5, shape_fn=SHAPE_RULES, momentum=0.9, clip_value=0.5, beta=0.99)
    injected = optax.inject_hyperparams(amos, static_args=("shape_fn",))(0.05, **kwargs)
    plain, _ = steps_of(amos(0.05, **kwargs), small_params(), 4)
    updates, state = steps_of(injected, small_params(), 4)
    assert_trees_close(updates, plain)
    # the learning rate is a hyper-parameter in the state: changing it changes the next step
    state.hyperparams["learning_rate"] = jnp.asarray(0.0, F32)
    grads = jax.tree.map(jnp.ones_like, small_params())
    zero_lr_updates, _ = injected.update(grads, state, small_params())
    # xi = 0 makes Delta_t = 0, so the update is mu * m_{t-1}: only the earlier momentum
    expected = jax.tree.map(lambda m: 0.9 * m, state.inner_state[2].ema)
    assert_trees_close(zero_lr_updates, expected)
    assert any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(expected))
    zero_lr_plain = amos(0.0, **{**kwargs, "momentum": None}).update(
        grads, amos(0.0, **{**kwargs, "momentum": None}).init(small_params()), small_params())[0]
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(zero_lr_plain))


def test_inject_hyperparams_with_zero_momentum_keeps_one_state_structure():
    injected = optax.inject_hyperparams(amos)(0.05, eta_fn=0.5, momentum=0.0)
    updates, state = steps_of(injected, small_params(), 3)  # jitted: structure must not change
    assert_trees_close(updates, steps_of(amos(0.05, 0.5), small_params(), 3)[0])


def test_inject_hyperparams_with_rule_table_callables_as_static():
    table = {"w": "sqrt(1 / SHAPE[0])", ".*": 0.5}
    injected = optax.inject_hyperparams(amos, static_args=("eta_fn", "shape_fn"))(
        0.05, eta_fn=amosopt.rules.Rules(table), shape_fn=SHAPE_RULES)
    assert_trees_close(steps_of(injected, small_params(), 3)[0],
                       steps_of(amos(0.05, table, SHAPE_RULES), small_params(), 3)[0])


def test_multisteps_accumulates():
    k = 3
    tx = amos(0.05, eta_fn=0.5, shape_fn=SHAPE_RULES)
    multi = optax.MultiSteps(tx, every_k_schedule=k)
    params = small_params()
    state = multi.init(params)
    grads = [jax.tree.map(lambda x: jnp.cos(x + i), params) for i in range(k)]
    update = jax.jit(multi.update)
    for g in grads[:-1]:
        updates, state = update(g, state, params)
        assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    updates, state = update(grads[-1], state, params)
    mean_grad = jax.tree.map(lambda *gs: sum(gs) / k, *grads)
    expected, _ = tx.update(mean_grad, tx.init(params), params)
    assert_trees_close(updates, expected, rtol=1e-5)
    assert any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates))


def test_flax_train_state():
    train_state = pytest.importorskip("flax.training.train_state")
    tx = amos(0.05, eta_fn=0.5, shape_fn=SHAPE_RULES, momentum=0.9)
    ts = train_state.TrainState.create(apply_fn=None, params=small_params(), tx=tx)
    grads = jax.tree.map(jnp.cos, small_params())
    ts = jax.jit(lambda ts: ts.apply_gradients(grads=grads))(ts)
    updates, _ = tx.update(grads, tx.init(small_params()), small_params())
    assert_trees_close(ts.params, optax.apply_updates(small_params(), updates))
    assert int(ts.step) == 1


def test_works_inside_a_chain_with_other_transforms():
    tx = optax.chain(optax.clip_by_global_norm(1.0), amos(0.05, 0.5, SHAPE_RULES))
    updates, _ = steps_of(tx, small_params(), 2)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("options", [{}, {"momentum": 0.9}, {"clip_value": 1.0},
                                     {"momentum": 0.5, "clip_value": 2.0}, {"momentum": 0.0}])
def test_amos_always_returns_the_same_kind(options):
    tx = amos(0.1, eta_fn=1.0, **options)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    state = tx.init(small_params())
    assert isinstance(state, tuple) and len(state) == 3
    assert isinstance(state[1], ScaleByAmosState)


def test_momentum_zero_is_momentum_off():
    with_zero, _ = steps_of(amos(0.1, 1.0, momentum=0.0), small_params(), 3)
    without, _ = steps_of(amos(0.1, 1.0), small_params(), 3)
    assert_trees_close(with_zero, without, rtol=0)


# ------------------------------------------------------------------------------------------------
# Names from any pytree


class Pair(NamedTuple):
    first: jax.Array
    second: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Module:  # stands in for an equinox module: a registered dataclass of arrays
    weight: jax.Array
    layers: list


def recorded_names(params):
    seen = []

    def eta_fn(name, shape):
        seen.append(name)
        return 1.0

    amos(0.1, eta_fn).init(params)
    return sorted(seen)


@pytest.mark.parametrize("params,names", [
    ({"a": {"kernel": jnp.ones(2)}, "b": jnp.ones(1)}, [("a", "kernel"), ("b",)]),
    ([jnp.ones(2), {"x": jnp.ones(1)}], [("0",), ("1", "x")]),
    ((jnp.ones(2), jnp.ones(3)), [("0",), ("1",)]),
    (Pair(jnp.ones(2), jnp.ones(2)), [("first",), ("second",)]),
    (Module(jnp.ones(2), [jnp.ones(1), jnp.ones(1)]),
     [("layers", "0"), ("layers", "1"), ("weight",)]),
    (jnp.ones(3), [()]),
])
def test_names_from_key_paths(params, names):
    assert recorded_names(params) == names


def test_names_equal_jestimator_for_nested_dicts_and_lists():
    from tests.oracles import jestimator_amos

    params = {"enc": {"layers": [{"w": jnp.ones((2, 2))}, {"w": jnp.ones((2, 2))}]},
              "head": {"bias": jnp.ones(2)}}
    seen = []

    def shape_fn(name, shape):
        seen.append(tuple(name))
        return shape

    jestimator_amos().scale_by_amos(0.1, lambda n, s: 1.0, shape_fn).init(params)
    assert recorded_names(params) == sorted(seen)


def test_flax_linen_and_nnx_names():
    nn = pytest.importorskip("flax.linen")
    nnx = pytest.importorskip("flax.nnx")
    linen_params = nn.Dense(3).init(jax.random.key(0), jnp.ones((1, 2)))["params"]
    assert recorded_names(linen_params) == [("bias",), ("kernel",)]
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    assert recorded_names(nnx.state(model, nnx.Param)) == [("bias",), ("kernel",)]


def test_param_names_helper():
    assert param_names({"a": [jnp.ones(1)]}) == {"a": [("a", "0")]}


# ------------------------------------------------------------------------------------------------
# Bad input: a clear ValueError naming the argument, before anything is computed


@pytest.mark.parametrize("kwargs,match", [
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(learning_rate="0.1"), "learning_rate"),
    (dict(beta=1.0), "beta"),
    (dict(beta=-0.1), "beta"),
    (dict(momentum=1.0), "momentum"),
    (dict(momentum=-0.5), "momentum"),
    (dict(clip_value=0.0), "clip_value"),
    (dict(clip_value=-1.0), "clip_value"),
    (dict(extra_l2=-1e-3), "extra_l2"),
    (dict(c_coef=-0.25), "c_coef"),
    (dict(d_coef=float("inf")), "d_coef"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(eta_fn=-1.0), "eta"),
    (dict(eta_fn=0.0), "eta"),
    (dict(eta_fn=float("inf")), "eta"),
    (dict(eta_fn="big"), "eta"),
    (dict(shape_fn=42), "slot_shape"),
])
def test_invalid_arguments_raise_at_construction(kwargs, match):
    args = {"learning_rate": 0.1, "eta_fn": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        amos(**args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(shape_fn=lambda name, shape: (3, 3)), r"slot shape \(3, 3\) for parameter 'b'"),
    (dict(shape_fn=lambda name, shape: (1,)), "slot shape"),
    (dict(shape_fn={"b": ()}), "No rule matches parameter 'w'"),
    (dict(eta_fn=lambda name, shape: -1.0), "Invalid eta for parameter"),
    (dict(eta_fn=lambda name, shape: float("nan")), "Invalid eta for parameter"),
    (dict(eta_fn=lambda name, shape: jnp.asarray(0.0)), "Invalid eta for parameter"),
    (dict(eta_fn={"w": 1.0, "b": -2.0}), r"Invalid eta for parameter 'b'"),
])
def test_invalid_rules_raise_at_init(kwargs, match):
    tx = amos(**{"learning_rate": 0.1, "eta_fn": 1.0, **kwargs})
    with pytest.raises(ValueError, match=match):
        tx.init({"w": jnp.ones((2, 4)), "b": jnp.ones(4)})


def test_integer_parameters_are_rejected_at_init():
    with pytest.raises(ValueError, match="'step' has dtype int32"):
        amos(0.1, 1.0).init({"step": jnp.zeros((), jnp.int32)})


def test_update_without_params_raises_optax_error():
    tx = amos(0.1, 1.0)
    params = small_params()
    with pytest.raises(ValueError, match="requires the current value of parameters"):
        tx.update(params, tx.init(params))


def test_jax_scalar_eta_from_a_user_function_is_accepted():
    tx = amos(0.1, eta_fn=lambda name, shape: jnp.sqrt(jnp.asarray(0.25)))
    expected = amos(0.1, eta_fn=0.5)
    assert_trees_close(steps_of(tx, small_params(), 2)[0],
                       steps_of(expected, small_params(), 2)[0], rtol=0)


# ------------------------------------------------------------------------------------------------
# The docstring examples run


@pytest.mark.parametrize("module", [transform_module, sharding_module])
def test_docstring_examples(module):
    with jax.enable_x64(False):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_public_api():
    assert set(amosopt.optax.__all__) >= {"amos", "scale_by_amos", "ScaleByAmosState",
                                          "state_sharding"}
    assert math.isclose(
        float(scale_by_amos(0.1, 1.0).init(jnp.ones(2)).count), 0.0)


def test_apply_if_finite_guards_the_state_against_a_nan_gradient():
    """The documented guard: a NaN step is skipped and leaves Amos's state exactly as it was."""
    tx = optax.apply_if_finite(amos(0.1, eta_fn=0.5, momentum=0.9), max_consecutive_errors=3)
    params = {"w": jnp.ones((2, 3))}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full((2, 3), 0.3)}, state, params)
    updates, after = tx.update({"w": jnp.array([[1.0, jnp.nan, 2.0], [0.0, 1.0, 2.0]])}, state,
                               params)
    assert int(after.notfinite_count) == 1
    assert not jnp.any(updates["w"])
    for x, y in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(after.inner_state)):
        assert jnp.array_equal(x, y)
