"""amosopt.optax.diagnostics: equal to the shared formulas on the NumPy oracle's state, jit-able,
found inside chains and inject_hyperparams states."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from amosopt import diagnostics as shared  # noqa: E402
from amosopt.optax import amos, diagnostics  # noqa: E402
from tests.oracles import NumpyAmos  # noqa: E402

ETA = {"w": 0.2, "b": 0.5}
SLOTS = {"w": (1, 3), "b": ()}


def run(steps: int = 30):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=3))}
    schedule = lambda t: 0.05 * jnp.minimum(1.0, jnp.asarray(t).astype(float) / 10)  # noqa: E731
    tx = amos(schedule, eta_fn=lambda name, shape: ETA[name[0]],
              shape_fn=lambda name, shape: SLOTS[name[0]], beta=0.9, momentum=0.9,
              clip_value=1.0, extra_l2=0.01)
    state = tx.init(params)
    oracles = {k: NumpyAmos(eta=ETA[k], slot_shape=SLOTS[k], beta=0.9, momentum=0.9,
                            clip_value=1.0, extra_l2=0.01) for k in params}
    numpy_params = {k: np.asarray(v) for k, v in params.items()}
    for t in range(steps):
        grads = {k: jnp.asarray(rng.normal(size=v.shape) * 1.5) for k, v in params.items()}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for k in params:
            numpy_params[k] = oracles[k].step(numpy_params[k], np.asarray(grads[k]),
                                              lambda t: 0.05 * min(1.0, (t - 1) / 10))
    return tx, state, params, grads, oracles, schedule


def test_equals_the_shared_formulas_on_the_oracles_state():
    with jax.enable_x64(True):
        tx, state, params, grads, oracles, schedule = run()
        got = diagnostics(state, params, learning_rate=schedule,
                          eta_fn=lambda name, shape: ETA[name[0]], beta=0.9, extra_l2=0.01,
                          clip_value=1.0, grads=grads)
        for name, oracle in oracles.items():
            want = shared.variable(xi=0.05, eta=ETA[name], beta=0.9, count=oracle.t,
                                   v=oracle.v, b=oracle.b, c_coef=0.25, d_coef=0.25,
                                   extra_l2=0.01, epsilon=2**-125, xp=np,
                                   grad=np.asarray(grads[name]), clip_value=1.0)
            for key, value in want.items():
                np.testing.assert_allclose(float(got[f"{key}/{name}"]), value, rtol=1e-9,
                                           err_msg=f"{key}/{name}")
        lrs = [float(got["lr/w"]), float(got["lr/b"])]
        assert float(got["lr/min"]) == min(lrs) and float(got["lr/max"]) == max(lrs)
        assert 0 < float(got["clip_fraction/w"]) < 1


def test_is_jit_able_and_found_in_wrapped_states():
    tx, state, params, grads, _, schedule = run(5)

    @jax.jit
    def numbers(state, params):
        return diagnostics(state, params, learning_rate=schedule, eta_fn=0.3, beta=0.9)

    out = numbers(state, params)
    assert set(out) >= {"lr/w", "lr/b", "decay_onset/median", "weight_decay/max"}
    assert all(np.isfinite(float(v)) for v in out.values())
    wrapped = optax.inject_hyperparams(amos, static_args=("eta_fn",))(0.05, eta_fn=0.3)
    wstate = wrapped.init(params)
    _, wstate = wrapped.update(grads, wstate, params)
    assert float(diagnostics(wstate, params, learning_rate=0.05, eta_fn=0.3)["b/w"]) > 0
    with pytest.raises(ValueError, match="Invalid state"):
        diagnostics(optax.adam(0.1).init(params), params, learning_rate=0.1, eta_fn=0.3)


def test_decay_onset_counterpart():
    from amosopt.optax import decay_onset

    tx, state, params, grads, _, schedule = run(5)
    onsets = decay_onset(state, params, learning_rate=schedule, eta_fn=0.3, beta=0.9)
    numbers = diagnostics(state, params, learning_rate=schedule, eta_fn=0.3, beta=0.9)
    assert set(onsets) == {"w", "b"}
    assert all(float(onsets[k]) == float(numbers[f"decay_onset/{k}"]) > 0 for k in onsets)
