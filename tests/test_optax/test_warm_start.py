"""The warm start from pretrained weights in optax (``b0``, ``auto_scales(pretrained=True)``),
against the NumPy transcription of the paper's update and the PyTorch ``Amos``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from amosopt.hyperparameters import WARM_START_B0, WARM_START_ETA_FLOOR  # noqa: E402
from amosopt.optax import amos, auto_scales  # noqa: E402
from amosopt.scales import ScaleTable  # noqa: E402
from tests.oracles import NumpyAmos  # noqa: E402
from tests.test_optax.paths import optax_path  # noqa: E402

SHAPES = {"w": (6, 5), "emb": (7, 4), "b": (5,)}
ETA = {"w": 0.3, "emb": 1.0, "b": 0.5}
SLOTS = {"w": (1, 5), "emb": (7, 1), "b": ()}
B0 = {"w": 60.0, "emb": 3.0, "b": 0.0}
STEPS = 25


def _stream(seed: int = 0):
    rng = np.random.default_rng(seed)
    theta0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    noises = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(STEPS)]
    return theta0, noises


def test_b0_matches_the_numpy_transcription() -> None:
    theta0, noises = _stream()
    with jax.enable_x64(True):
        path, state = optax_path(amos(0.03, ETA, SLOTS, beta=0.99, momentum=0.9, b0=B0),
                                  theta0, noises)
    oracles = {k: NumpyAmos(ETA[k], SLOTS[k], beta=0.99, momentum=0.9, b0=B0[k]) for k in SHAPES}
    theta = dict(theta0)
    for noise, got in zip(noises, path):
        for k in SHAPES:
            theta[k] = oracles[k].step(theta[k], 2.0 * (theta[k] - 0.3) + noise[k], 0.03)
            np.testing.assert_allclose(got[k], theta[k], rtol=1e-10, atol=1e-12)
    for k in SHAPES:
        np.testing.assert_allclose(np.asarray(state[1].b[k]),
                                   np.broadcast_to(oracles[k].b, SLOTS[k]), rtol=1e-10)


def test_b0_torch_equals_optax() -> None:
    torch = pytest.importorskip("torch")
    from amosopt.torch import Amos

    theta0, noises = _stream(1)
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in theta0.items()}
    opt = Amos(list(params.items()), lr=0.03, eta=ETA, slot_shape=SLOTS, b0=B0, momentum=0.9)
    torch_path = []
    for noise in noises:
        for k, p in params.items():
            p.grad = 2.0 * (p.detach() - 0.3) + torch.from_numpy(noise[k])
        opt.step()
        torch_path.append({k: p.detach().numpy().copy() for k, p in params.items()})
    with jax.enable_x64(True):
        path, _ = optax_path(amos(0.03, ETA, SLOTS, momentum=0.9, b0=B0), theta0, noises)
    for got, want in zip(path, torch_path):
        for k in SHAPES:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-11, atol=1e-13)


def test_pretrained_scales() -> None:
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(16, 8)) * 0.5, jnp.float32),
                        "bias": jnp.zeros(8)},
              "out": {"kernel": jnp.asarray(rng.normal(size=(8, 2)) * 1e-4, jnp.float32),
                      "bias": jnp.asarray([0.4, -0.2], jnp.float32)}}
    auto = auto_scales(params)
    table = auto_scales(params, pretrained=True)

    def rms(x):
        x = np.asarray(x, np.float64)
        return float(np.sqrt(np.mean(x * x)))

    assert table["dense/kernel"].eta == pytest.approx(rms(params["dense"]["kernel"]), rel=1e-5)
    assert table["dense/kernel"].b0 == WARM_START_B0
    assert table["dense/bias"].eta == 0.5 and table["dense/bias"].b0 == 0.0  # zero: automatic
    floor = WARM_START_ETA_FLOOR * math.sqrt(1 / 8)
    assert table["out/kernel"].eta == pytest.approx(floor, rel=1e-12)
    assert table["out/bias"].eta == pytest.approx(rms(params["out"]["bias"]), rel=1e-5)
    assert all(table[n].slot_shape == auto[n].slot_shape for n in auto)
    state = amos(0.02, table.eta, table.slot_shape, b0=table.b0).init(params)
    assert float(state[1].b["dense"]["kernel"][0, 0]) == WARM_START_B0
    assert float(state[1].b["dense"]["bias"]) == 0.0
    with pytest.raises(ValueError, match="not an array"):
        auto_scales(jax.eval_shape(lambda: params), pretrained=True)


@pytest.mark.filterwarnings("ignore:amosopt auto_scales. no rule")  # bare names: the fallback
def test_resume_is_exact() -> None:
    """k steps, the state and the table saved (the table as JSON: optax keeps b in the state
    but not eta, which a warm start read from the weights it started from), a fresh optimizer
    from them, continue: equal to the uninterrupted run."""
    theta0, noises = _stream(2)
    with jax.enable_x64(True):
        params = {k: jnp.asarray(v) for k, v in theta0.items()}
        table = auto_scales(params, pretrained=True)

        def build(t):
            return amos(0.03, t.eta, t.slot_shape, b0=t.b0, momentum=0.9)

        straight, _ = optax_path(build(table), theta0, noises)
        first, state = optax_path(build(table), theta0, noises[:10])
        saved_state = jax.tree.map(np.asarray, state)
        saved_table = json.loads(json.dumps(table.as_dict()))
        restored = ScaleTable.from_dict(saved_table)
        assert [(n, s) for n, _, s in restored.items_with_shapes()] == \
               [(n, s) for n, _, s in table.items_with_shapes()]
        rest, _ = optax_path(build(restored), first[-1], noises[10:],
                              state=jax.tree.map(jnp.asarray, saved_state))
    for got, want in zip(first + rest, straight):
        for k in SHAPES:
            np.testing.assert_array_equal(got[k], want[k])
