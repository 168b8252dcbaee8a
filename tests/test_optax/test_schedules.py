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


def test_drives_amos_unchanged_as_torch_does():
    """``amos(schedule)`` calls the schedule with optax's count (0 at the first update), so a
    WSD schedule gives the trajectory of torch's Amos under the same WSD scheduler, step for
    step, and the same through ``optax.inject_hyperparams``."""
    total, grads = 6, [np.cos(np.arange(6.0) + k).reshape(2, 3) for k in range(8)]
    schedule = amosopt.optax.wsd_schedule(0.1, total, warmup_steps=2, cooldown_steps=3)
    w = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.float64))
    opt = amosopt.torch.Amos([w], lr=0.1, eta=0.5, beta=0.9)
    sched = amosopt.torch.wsd_schedule(opt, total, warmup_steps=2, cooldown_steps=3)
    expected = []
    for g in grads:
        w.grad = torch.as_tensor(g)
        opt.step()
        sched.step()
        expected.append(w.detach().numpy().copy())
    with jax.enable_x64(True):
        for tx in (amosopt.optax.amos(schedule, eta_fn=0.5, beta=0.9),
                   optax.inject_hyperparams(amosopt.optax.amos)(learning_rate=schedule,
                                                                eta_fn=0.5, beta=0.9)):
            params = jnp.ones((2, 3), jnp.float64)
            state = tx.init(params)
            for k, g in enumerate(grads):
                updates, state = tx.update(jnp.asarray(g), state, params)
                params = optax.apply_updates(params, updates)
                np.testing.assert_allclose(np.asarray(params), expected[k], rtol=1e-12,
                                           err_msg=f"update {k}")
    # the last update of the budget still moves (xi = m(total - 1) > 0); after it, nothing does
    assert not np.allclose(expected[total - 1], expected[total - 2])
    np.testing.assert_array_equal(expected[total], expected[total - 1])


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
