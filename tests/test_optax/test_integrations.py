"""Amos in flax nnx: ``nnx.Optimizer(model, amosopt.optax.amos(...), wrt=nnx.Param)`` with
automatic scales traced from the model trains, and equals the plain optax loop on the same
parameter tree."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
nnx = pytest.importorskip("flax.nnx")
import jax.numpy as jnp  # noqa: E402

import amosopt.optax as amos_optax  # noqa: E402


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(8, 32, rngs=rngs)
        self.out = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.gelu(self.hidden(x)))


def data():
    x = jax.random.normal(jax.random.key(1), (64, 8))
    return x, jnp.sin(x.sum(axis=1, keepdims=True))


def make_tx(model, x):
    scales = amos_optax.auto_scales(nnx.state(model, nnx.Param), model, x[:2])
    schedule = amos_optax.wsd_schedule(0.05, total_steps=40, warmup_steps=4)
    return scales, amos_optax.amos(schedule, eta_fn=scales.eta,
                                   shape_fn=scales.slot_shape, momentum=0.9, clip_value=1.0)


def test_nnx_optimizer_trains_and_equals_the_optax_loop():
    x, y = data()

    # nnx: the model and its optimizer as objects
    model = MLP(nnx.Rngs(0))
    scales, tx = make_tx(model, x)
    assert scales[("out", "kernel")].eta == pytest.approx((2 / 32) ** 0.5)  # after GELU
    assert scales[("hidden", "kernel")].slot_shape == (1, 32)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    # optax: the same initial parameters as a pytree, a functional loop
    reference = MLP(nnx.Rngs(0))
    graphdef, params = nnx.split(reference, nnx.Param)
    _, tx_ref = make_tx(reference, x)
    state = tx_ref.init(params)

    @jax.jit
    def optax_step(params, state):
        def loss_fn(params):
            return jnp.mean((nnx.merge(graphdef, params)(x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx_ref.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    first = None
    for _ in range(40):
        loss = nnx_step(model, optimizer)
        params, state, ref_loss = optax_step(params, state)
        first = loss if first is None else first
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    assert float(loss) < 0.3 * float(first)
    trained = nnx.state(model, nnx.Param)
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
