"""``amos(..., second_moment="row-col")``: the column factor against the NumPy transcription.

``tests.oracles.NumpyAmos`` writes the factored estimate from the equations (Adafactor's rank-1
estimate, Shazeer & Stern 2018, over the slot's kept and reduced axes); here the optax backend
must follow it under ``jax.jit`` in float64, on every slot shape the automatic scales produce.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from amosopt.optax import amos, scale_by_amos, state_sharding  # noqa: E402
from amosopt.rules import column_shape  # noqa: E402
from tests.oracles import FACTORED_LEAVES, NumpyAmos  # noqa: E402
from tests.test_optax.paths import gradient, optax_path  # noqa: E402

LEAVES = FACTORED_LEAVES
ETA = {k: eta for k, (_, _, eta) in LEAVES.items()}
SLOTS = {k: slot for k, (_, slot, _) in LEAVES.items()}
STEPS = 60


def warmup(count):
    return 0.05 * jnp.minimum(1.0, count / 10.0)


CASES = {
    "plain": dict(learning_rate=0.03),
    "schedule-momentum-clip": dict(learning_rate=warmup, momentum=0.9, clip_value=0.8),
    "beta-l2-coefs": dict(learning_rate=0.02, beta=0.9, extra_l2=0.01, c_coef=0.5, d_coef=0.1),
}


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def initial(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=shape) for k, (shape, _, _) in LEAVES.items()}


def noise_stream(steps: int = STEPS, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Noise with a different scale per column and row, which a column factor can see."""
    rng = np.random.default_rng(seed)
    scales = {k: np.exp(rng.normal(size=shape)) for k, (shape, _, _) in LEAVES.items()}
    return [{k: s * rng.normal(size=s.shape) for k, s in scales.items()} for _ in range(steps)]


def oracle_path(kwargs, theta0, noises, second_moment) -> list[dict[str, np.ndarray]]:
    kwargs = dict(kwargs)
    xi = kwargs.pop("learning_rate")
    # optax calls a schedule with the number of updates done, t - 1 at the 1-based step t
    schedule = (lambda t: float(xi(t - 1))) if callable(xi) else xi
    oracles = {k: NumpyAmos(eta=ETA[k], slot_shape=SLOTS[k], second_moment=second_moment,
                            **kwargs) for k in LEAVES}
    theta, path = dict(theta0), []
    for noise in noises:
        theta = {k: oracles[k].step(theta[k], gradient(theta[k], noise[k]), schedule)
                 for k in LEAVES}
        path.append(theta)
    return path


def relative_error(ours, reference, keys=tuple(LEAVES)) -> float:
    worst = 0.0
    for a, b in zip(ours, reference):
        for k in keys:
            assert np.all(np.isfinite(a[k]))
            worst = max(worst, float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))))
    return worst


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_numpy_transcription(case):
    theta0, noises = initial(), noise_stream()
    tx = amos(eta_fn=ETA, shape_fn=SLOTS, second_moment="row-col", **CASES[case])
    ours, _ = optax_path(tx, theta0, noises)
    reference = oracle_path(CASES[case], theta0, noises, "row-col")
    assert relative_error(ours, reference) <= 1e-12
    # the column factor changes the factored leaves, and only those
    paper = oracle_path(CASES[case], theta0, noises, "slot")
    factored = [k for k in LEAVES if column_shape(LEAVES[k][0], SLOTS[k]) is not None]
    assert factored == ["linear", "kernel", "embedding", "conv", "interleaved"]
    for k in factored:
        assert relative_error(reference, paper, [k]) > 1e-3, k
    assert relative_error(reference, paper, ["bias", "ones", "full"]) == 0.0


def test_state_has_a_column_factor_per_factored_leaf():
    params = {k: jnp.zeros(shape) for k, (shape, _, _) in LEAVES.items()}
    state = scale_by_amos(0.01, ETA, SLOTS, second_moment="row-col").init(params)
    for k, (shape, slot, _) in LEAVES.items():
        want = column_shape(shape, slot)
        assert (state.u[k] is None) if want is None else state.u[k].shape == want, k
    assert scale_by_amos(0.01, ETA, SLOTS).init(params).u is None  # off: no extra state


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_low_precision_parameters_keep_float32_columns(dtype):
    tx = amos(0.05, ETA, SLOTS, second_moment="row-col", momentum=0.5)
    params = {k: jnp.asarray(v, dtype) for k, v in initial().items()}
    state = tx.init(params)
    for u in jax.tree.leaves(state[1].u):
        assert u.dtype == jnp.float32
    oracles = {k: NumpyAmos(eta=ETA[k], slot_shape=SLOTS[k], momentum=0.5,
                            second_moment="row-col") for k in LEAVES}
    step = jax.jit(tx.update)
    for noise in noise_stream(3):
        grads = {k: jnp.asarray(gradient(np.asarray(params[k], np.float64), noise[k]), dtype)
                 for k in LEAVES}
        updates, state = step(grads, state, params)
        for k in LEAVES:
            assert updates[k].dtype == dtype
            theta = np.asarray(params[k], np.float64)
            expected = oracles[k].step(theta, np.asarray(grads[k], np.float64), 0.05) - theta
            tolerance = 1e-5 if dtype == jnp.float32 else 1e-2
            np.testing.assert_allclose(np.asarray(updates[k], np.float64), expected,
                                       rtol=tolerance, atol=tolerance * np.max(np.abs(expected)))
        assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(state[1].u))


def test_inject_hyperparams_passes_it_through():
    params = {k: jnp.asarray(v) for k, v in initial().items()}
    plain = amos(0.03, ETA, SLOTS, second_moment="row-col")
    injected = optax.inject_hyperparams(amos)(  # a string: static without being told
        learning_rate=0.03, eta_fn=ETA, shape_fn=SLOTS, second_moment="row-col")
    grads = {k: gradient(v, 0.1) for k, v in params.items()}
    a, _ = plain.update(grads, plain.init(params), params)
    b, _ = injected.update(grads, injected.init(params), params)
    for k in LEAVES:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-12)


@pytest.mark.parametrize("value", ["row", "column", None, True])
def test_invalid_second_moment_raises_at_construction(value):
    with pytest.raises(ValueError, match="second_moment"):
        amos(0.01, 1.0, second_moment=value)


def test_state_sharding_partitions_the_column_factor():
    from jax.sharding import PartitionSpec as P

    params = {"w": jnp.zeros((8, 16)), "emb": jnp.zeros((16, 8)), "b": jnp.zeros(16)}
    tx = amos(0.01, 1.0, {"w": (1, 16), "emb": (16, 1), "b": ()}, momentum=0.9,
              second_moment="row-col")
    specs = state_sharding(jax.eval_shape(tx.init, params),
                           {"w": P("x", "y"), "emb": P("y", None), "b": P("y")})
    assert specs[1].v == {"w": P(None, "y"), "emb": P("y", None), "b": P()}
    # u keeps the axes that v reduces: (8, 1) and (1, 8), partitioned where those are split
    assert specs[1].u == {"w": P("x", None), "emb": P(None, None), "b": None}
    assert specs[2].ema == {"w": P("x", "y"), "emb": P("y", None), "b": P("y")}


def test_state_round_trips_through_flax_serialization():
    """``None`` leaves (no column factor) survive a checkpoint; resumed, the next step is the
    same."""
    serialization = pytest.importorskip("flax.serialization")
    tx = amos(0.03, ETA, SLOTS, second_moment="row-col", momentum=0.9)
    params = {k: jnp.asarray(v) for k, v in initial().items()}
    grads = {k: gradient(v, 0.1) for k, v in params.items()}
    _, state = tx.update(grads, tx.init(params), params)
    restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(state))
    assert restored[1].u["bias"] is None and restored[1].u["linear"].shape == (1, 5)
    a, _ = tx.update(grads, state, params)
    b, _ = tx.update(grads, restored, params)
    for k in LEAVES:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
