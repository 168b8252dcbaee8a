"""amosopt.optax.amos against the authors' jestimator.amos and the NumPy transcription, float64.

Both oracles are independent of our code: jestimator (PyPI 0.3.3) is the reference
implementation; ``tests.oracles.NumpyAmos`` is Algorithm 1 written from the equations.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
if importlib.util.find_spec("jestimator") is None:  # imported through tests.oracles (its shim)
    pytest.skip("needs jestimator==0.3.3", allow_module_level=True)
import jax.numpy as jnp  # noqa: E402

from amosopt.optax import amos  # noqa: E402
from tests.oracles import NumpyAmos, jestimator_amos, jestimator_amos_helper  # noqa: E402

STEPS = 200
TOLERANCE = 1e-12  # measured ~5e-16 (float64 rounding)

SHAPES = {  # nested tree: every slot-shape kind appears below
    "dense": {"kernel": (6, 5), "bias": (5,)},
    "embed": {"embedding": (7, 4)},
    "conv": {"kernel": (3, 3, 2, 4)},
    "norm": {"scale": ()},
}


def slots_mixed(name: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Full, by columns (one slot per output), by rows, and scalar slots."""
    joined = "/".join(name)
    if joined == "dense/kernel":
        return (1, shape[1])  # by columns: fan-in axis reduced
    if joined == "embed/embedding":
        return (shape[0], 1)  # by rows: hidden axis reduced
    if joined == "conv/kernel":
        return (1, 1, 1, shape[3])
    if joined == "dense/bias":
        return ()  # scalar
    return shape  # full


def slots_scalar(name, shape):
    return ()


def eta_by_shape(name: tuple[str, ...], shape: tuple[int, ...]) -> float:
    if name[-1] == "kernel":
        return math.sqrt(1.0 / math.prod(shape[:-1]))
    return 0.5 if name[-1] == "bias" else 1.0


def warmup(count):
    return 0.05 * jnp.minimum(1.0, count / 20.0)


CASES = {
    "defaults-full-slots": dict(learning_rate=0.01, eta_fn=eta_by_shape),
    "mixed-slots": dict(learning_rate=0.02, eta_fn=eta_by_shape, shape_fn=slots_mixed),
    "scalar-slots-beta": dict(learning_rate=0.05, eta_fn=1.0, shape_fn=slots_scalar, beta=0.9),
    "schedule-momentum-clip": dict(learning_rate=warmup, eta_fn=eta_by_shape,
                                   shape_fn=slots_mixed, momentum=0.9, clip_value=0.3),
    "extra-l2-coefs-epsilon": dict(learning_rate=0.03, eta_fn=eta_by_shape, shape_fn=slots_mixed,
                                   extra_l2=0.01, c_coef=0.5, d_coef=0.1, epsilon=1e-30,
                                   beta=0.99),
}


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def make_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float64), SHAPES,
                        is_leaf=lambda x: isinstance(x, tuple))


def gradient(params: dict, noise: dict) -> dict:
    """A gradient that depends on the parameters: a quadratic pull to 0.3 plus noise."""
    return jax.tree.map(lambda theta, n: 2.0 * (theta - 0.3) + n, params, noise)


def noise_stream(steps: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda shape: jnp.asarray(rng.normal(size=shape)), SHAPES,
                         is_leaf=lambda x: isinstance(x, tuple)) for _ in range(steps)]


def trajectory(tx, params, noises) -> list[dict]:
    @jax.jit
    def step(params, state, noise):
        updates, state = tx.update(gradient(params, noise), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    out = []
    for noise in noises:
        params, state = step(params, state, noise)
        out.append(params)
    return out


def relative_error(ours: list[dict], reference: list[dict]) -> float:
    """max over steps and leaves of max|ours - ref| / max|ref| (norm-wise, no 0/0 blow-ups)."""
    worst = 0.0
    for a, b in zip(ours, reference):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            assert x.dtype == np.float64 and np.all(np.isfinite(x))
            worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-300)))
    return worst


def as_callables(kwargs: dict) -> dict:
    """The same optimizer for jestimator: eta_fn as a function (amosopt also takes a number),
    and a schedule shifted by one, since jestimator calls it with the 1-based step t and
    amosopt, as optax does, with the count of updates done, t - 1."""
    eta, xi = kwargs["eta_fn"], kwargs["learning_rate"]
    return {**kwargs, "eta_fn": eta if callable(eta) else (lambda name, shape: eta),
            "learning_rate": (lambda t: xi(t - 1)) if callable(xi) else xi}


@pytest.fixture(scope="module")
def noises():
    with jax.enable_x64(True):
        return noise_stream(STEPS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_jestimator(case, noises):
    kwargs = CASES[case]
    ours = trajectory(amos(**kwargs), make_params(), noises)
    theirs = trajectory(jestimator_amos().amos(**as_callables(kwargs)), make_params(), noises)
    error = relative_error(ours, theirs)
    assert error <= TOLERANCE, f"{case}: max relative error {error:.3g} vs jestimator"
    # the trajectory moved: a do-nothing optimizer would not pass
    assert relative_error(ours[-1:], [make_params()]) > 1e-3


def test_rule_tables_match_jestimator_assign_maps(noises):
    eta_map = {r".*/kernel": "sqrt(1 / prod(SHAPE[:-1]))", r".*/bias": 0.5, r".*": 1.0}
    shape_map = {r"dense/kernel": "(1, SHAPE[1])", r"embed/.*": "(SHAPE[0], 1)",
                 r"conv/.*": "(1, 1, 1, SHAPE[3])", r".*": ()}
    helper = jestimator_amos_helper()
    ours = trajectory(amos(0.02, eta_map, shape_map, momentum=0.5), make_params(), noises)
    theirs = trajectory(
        jestimator_amos().amos(
            0.02, helper.params_fn_from_assign_map(eta_map, eval_str_value=True),
            helper.params_fn_from_assign_map(shape_map, eval_str_value=True), momentum=0.5),
        make_params(), noises)
    assert relative_error(ours, theirs) <= TOLERANCE


def test_single_array_params_match_jestimator(noises):
    theta = jnp.linspace(-1.0, 2.0, 12, dtype=jnp.float64).reshape(3, 4)
    stream = [jnp.asarray(n["dense"]["kernel"][:3, :4]) for n in noises[:50]]
    kwargs = dict(learning_rate=0.1, eta_fn=0.7, shape_fn=lambda name, shape: (3, 1))
    results = []
    for tx in (amos(**kwargs), jestimator_amos().amos(**as_callables(kwargs))):
        params, state = theta, tx.init(theta)
        for n in stream:
            updates, state = tx.update(params - n, state, params)
            params = params + updates
        results.append(params)
    assert relative_error([results[0]], [results[1]]) <= TOLERANCE


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_numpy_transcription(case, noises):
    kwargs = dict(CASES[case])
    ours = trajectory(amos(**kwargs), make_params(), noises)
    xi = kwargs.pop("learning_rate")
    eta_fn, shape_fn = kwargs.pop("eta_fn"), kwargs.pop("shape_fn", None)
    theta = jax.tree.map(np.asarray, make_params())
    names = {("dense", "kernel"), ("dense", "bias"), ("embed", "embedding"), ("conv", "kernel"),
             ("norm", "scale")}
    oracles = {}
    for name in names:
        shape = SHAPES[name[0]][name[1]]
        eta = eta_fn(name, shape) if callable(eta_fn) else eta_fn
        slot = None if shape_fn is None else shape_fn(name, shape)
        oracles[name] = NumpyAmos(eta=eta, slot_shape=slot, **kwargs)
    schedule = (lambda t: float(xi(t - 1))) if callable(xi) else xi  # the oracle's t is 1-based
    reference = []
    for noise in noises:
        g = gradient(theta, noise)
        theta = {a: {b: oracles[(a, b)].step(theta[a][b], np.asarray(g[a][b]), schedule)
                     for b in theta[a]} for a in theta}
        reference.append(theta)
    error = relative_error(ours, reference)
    assert error <= TOLERANCE, f"{case}: max relative error {error:.3g} vs NumPy transcription"
