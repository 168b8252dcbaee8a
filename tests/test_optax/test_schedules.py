"""amosopt.optax.wsd_schedule: jit-safe, equal to the torch scheduler's rate at every step."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
torch = pytest.importorskip("torch")
import jax.numpy as jnp  # noqa: E402

import amosopt.optax  # noqa: E402
import amosopt.torch  # noqa: E402


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
@pytest.mark.parametrize("total,warmup,cooldown", [(20, 3, 6), (50, 0, None), (7, 7, 0)])
def test_equals_the_torch_rate_at_every_step(total, warmup, cooldown, shape):
    schedule = amosopt.optax.wsd_schedule(0.25, total, warmup_steps=warmup,
                                          cooldown_steps=cooldown, cooldown=shape)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.25)
    sched = amosopt.torch.wsd_schedule(opt, total, warmup_steps=warmup,
                                       cooldown_steps=cooldown, cooldown=shape)
    torch_rates = []
    for _ in range(total + 3):
        torch_rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    counts = jnp.arange(total + 3)
    jitted = jax.jit(jax.vmap(schedule))(counts)
    np.testing.assert_allclose(np.asarray(jitted), torch_rates, rtol=1e-6, atol=1e-9)
    assert float(schedule(total + 100)) == 0.0


def test_drives_an_optax_optimizer():
    schedule = amosopt.optax.wsd_schedule(0.1, 10, cooldown_steps=4)
    tx = optax.sgd(schedule)
    params = jnp.zeros(2)
    state = tx.init(params)
    seen = []
    for _ in range(12):
        updates, state = tx.update(jnp.ones(2), state, params)
        seen.append(-float(updates[0]))
    np.testing.assert_allclose(seen, [0.1] * 6 + [0.1, 0.075, 0.05, 0.025, 0.0, 0.0], rtol=1e-6)


def test_drives_amos_with_its_one_based_count():
    schedule = amosopt.optax.wsd_schedule(0.1, 5, cooldown_steps=2)
    tx = amosopt.optax.amos(lambda t: schedule(t - 1), eta_fn=lambda *_: 1.0, beta=0.98)
    params = jnp.ones(3)
    state = tx.init(params)
    moved = []
    for _ in range(6):
        updates, state = tx.update(jnp.ones(3), state, params)
        moved.append(float(jnp.abs(updates).max()))
    # update s (0-based) is called with t = s + 1 and so uses m(s): m(4) = 0.5, m(5) = 0
    assert moved[4] > 0 and moved[5] == 0.0
    assert moved[4] == pytest.approx(0.5 * moved[3], rel=0.1)


@pytest.mark.parametrize("kwargs,name", [
    ({"learning_rate": -1.0, "total_steps": 10}, "learning_rate"),
    ({"learning_rate": float("nan"), "total_steps": 10}, "learning_rate"),
    ({"learning_rate": 1.0, "total_steps": -1}, "total_steps"),
    ({"learning_rate": 1.0, "total_steps": 10, "cooldown_steps": 11}, "cooldown_steps"),
    ({"learning_rate": 1.0, "total_steps": 10, "cooldown": "step"}, "cooldown"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        amosopt.optax.wsd_schedule(**kwargs)
