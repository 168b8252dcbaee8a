"""``amos(..., nonfinite="skip")`` and ``skip_if_not_finite``: a step with a non-finite gradient
leaves every parameter and every state leaf (counts included) exactly as it was, is counted,
and is as if it had not happened; finite steps are those of ``nonfinite=None``."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from amosopt.optax import SkipState, amos, skip_if_not_finite  # noqa: E402

SLOTS = {r"w": "(SHAPE[0], 1)", r".*": ()}


def make(nonfinite=None, **options):
    return amos(learning_rate=0.05, eta_fn=0.5, shape_fn=SLOTS, nonfinite=nonfinite, **options)


def params0():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    w[0, 0] = -0.0  # a skipped step must keep its sign
    return {"w": jnp.asarray(w), "b": jnp.asarray(rng.normal(size=3).astype(np.float32))}


def grads(t, bad=None):
    rng = np.random.default_rng(100 + t)
    g = {"w": rng.normal(size=(4, 3)).astype(np.float32),
         "b": rng.normal(size=3).astype(np.float32)}
    if bad is not None:
        name, value = bad
        g[name].reshape(-1)[1] = value
    return {k: jnp.asarray(v) for k, v in g.items()}


def run(tx, schedule):
    """Jitted steps; ``schedule``: a list of ``bad`` (None for a finite step)."""
    update = jax.jit(tx.update)
    params = params0()
    state = tx.init(params)
    for t, bad in schedule:
        updates, state = update(grads(t, bad), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def assert_identical(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype
        assert x.tobytes() == y.tobytes()  # bits: -0.0 != 0.0


def inner(state):
    return state[1].inner_state


@pytest.mark.parametrize("options, bad", [
    ({}, ("w", np.nan)),
    ({}, ("b", np.inf)),
    ({}, ("w", 1e20)),  # finite, but its square overflows float32
    ({"momentum": 0.9, "clip_value": 0.5}, ("w", np.nan)),
    ({"momentum": 0.9}, ("b", -np.inf)),
])
def test_a_non_finite_step_changes_nothing(options, bad):
    tx = make("skip", **options)
    params, state = run(tx, [(0, None), (1, None)])
    update = jax.jit(tx.update)
    updates, new_state = update(grads(2, bad), state, params)
    assert_identical(optax.apply_updates(params, updates), params)
    assert_identical(inner(new_state), inner(state))
    assert int(new_state[1].skipped) == int(state[1].skipped) + 1 == 1
    # then as if it had not been
    after = run(tx, [(0, None), (1, None), (2, bad), (3, None)])
    without = run(tx, [(0, None), (1, None), (3, None)])
    assert_identical(after[0], without[0])
    assert_identical(inner(after[1]), inner(without[1]))


def test_a_clipped_inf_is_a_step():
    """As in PyTorch: clipping (before the check) makes an inf finite."""
    tx = make("skip", clip_value=0.5)
    params, state = run(tx, [(0, None), (1, ("w", np.inf))])
    reference = run(make(clip_value=0.5), [(0, None), (1, ("w", np.inf))])
    assert int(state[1].skipped) == 0
    np.testing.assert_allclose(params["w"], reference[0]["w"], rtol=1e-6)


@pytest.mark.parametrize("options", [{}, {"momentum": 0.9, "clip_value": 0.5}])
def test_finite_steps_equal_the_plain_amos(options):
    schedule = [(t, None) for t in range(5)]
    skip_params, skip_state = run(make("skip", **options), schedule)
    params, state = run(make(**options), schedule)
    # inside lax.cond XLA may fuse otherwise: equal to float32 rounding, not bit for bit
    for a, b in zip(jax.tree.leaves((skip_params, inner(skip_state))),
                    jax.tree.leaves((params, state[1:])), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=0)


def test_the_wrapper_alone_and_bad_input():
    tx = skip_if_not_finite(optax.adam(0.1))
    params = params0()
    state = tx.init(params)
    assert isinstance(state, SkipState)
    updates, new_state = tx.update(grads(0, ("b", np.nan)), state, params)
    assert_identical(new_state.inner_state, state.inner_state)  # adam's count included
    assert int(new_state.skipped) == 1
    with pytest.raises(ValueError, match="nonfinite.*'skip'"):
        make("raise")


def test_diagnostics_find_the_state_inside_the_wrapper():
    from amosopt.optax import diagnostics

    tx = make("skip", momentum=0.9)
    params, state = run(tx, [(0, None), (1, ("w", np.nan))])
    plain_params, plain_state = run(make(momentum=0.9), [(0, None)])
    numbers = diagnostics(state, params, learning_rate=0.05, eta_fn=0.5)
    plain = diagnostics(plain_state, plain_params, learning_rate=0.05, eta_fn=0.5)
    assert numbers.keys() == plain.keys()
    for key in numbers:
        np.testing.assert_allclose(numbers[key], plain[key], rtol=1e-5)
