"""``compensated_rounding()``: after ``amos``, 16-bit parameters follow the float32 run to within
their rounding where plain ``apply_updates`` loses every update below half a unit in the last
place; other dtypes pass through unchanged; jit-safe; the same as the PyTorch option."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amosopt.optax import amos, compensated_rounding

STEPS = 30


def run(dtype, compensated: bool, steps: int = STEPS):
    """``steps`` jitted steps of momentum Amos from all-ones parameters with a constant
    gradient: updates of about 1e-3 and less, under half a unit in the last place of 1.0 in
    bfloat16 (2**-8)."""
    params = {"w": jnp.ones((64, 32), dtype), "b": jnp.ones((32,), dtype)}
    solver = amos(0.01, 0.1, shape_fn={"w": "(SHAPE[0], 1)", "b": "()"}, momentum=0.9)
    if compensated:
        solver = optax.chain(solver, compensated_rounding())
    state = solver.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
        updates, state = solver.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_follows_float32(dtype) -> None:
    want, _ = run(jnp.float32, False)
    nearest, _ = run(dtype, False)
    got, state = run(dtype, True)
    compensation = state[-1].compensation
    eps = float(jnp.finfo(dtype).eps)
    for key in want:
        w = np.asarray(want[key], np.float64)
        if dtype == jnp.bfloat16:
            assert np.all(np.asarray(nearest[key], np.float64) == 1.0)  # all rounded away
        g = np.asarray(got[key], np.float64)
        c = np.asarray(compensation[key], np.float64)
        assert got[key].dtype == dtype and compensation[key].dtype == dtype
        assert np.max(np.abs(g - w)) <= eps
        assert np.max(np.abs(g + c - w)) <= 1e-2 * np.max(np.abs(1 - w))


def test_other_dtypes_pass_through() -> None:
    plain, _ = run(jnp.float32, False, steps=5)
    got, state = run(jnp.float32, True, steps=5)
    for key in plain:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(plain[key]))
        assert state[-1].compensation[key].shape == ()  # no buffer for float32


def test_needs_params() -> None:
    transform = compensated_rounding()
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    with pytest.raises(ValueError, match="needs the parameters"):
        transform.update(params, transform.init(params))


def test_matches_the_torch_option() -> None:
    """The same 30 steps in PyTorch with ``rounding="compensated"``: the same parameters to
    within one unit in the last place (the backends differ in float32 rounding order)."""
    torch = pytest.importorskip("torch")
    from amosopt.torch import Amos

    got, _ = run(jnp.bfloat16, True)
    w = torch.nn.Parameter(torch.ones(64, 32, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.ones(32, dtype=torch.bfloat16))
    opt = Amos([("w", w), ("b", b)], lr=0.01, eta=0.1, momentum=0.9, rounding="compensated",
               slot_shape={"w": "(SHAPE[0], 1)", "b": "()"})
    for _ in range(STEPS):
        for p in (w, b):
            p.grad = torch.full_like(p, 0.5)
        opt.step()
    eps = float(jnp.finfo(jnp.bfloat16).eps)
    for key, p in (("w", w), ("b", b)):
        diff = np.abs(np.asarray(got[key], np.float64) - p.detach().double().numpy())
        assert diff.max() <= eps


def test_state_is_sharded_like_the_parameters() -> None:
    from jax.sharding import PartitionSpec as P

    from amosopt.optax import state_sharding

    params = {"w": jnp.ones((8, 4), jnp.bfloat16), "b": jnp.ones(4, jnp.float32)}
    tx = optax.chain(amos(0.01, 1.0, shape_fn={"w": "(SHAPE[0], 1)", "b": "()"}),
                     compensated_rounding())
    specs = state_sharding(jax.eval_shape(tx.init, params), {"w": P("x", "y"), "b": P("y")})
    assert specs[-1].compensation == {"w": P("x", "y"), "b": P()}  # float32 b: no buffer
