"""``decay_ratio`` in amosopt.optax: the decay runs on the rate rho * xi. Checked against the NumPy
transcription (float64, under jit) and against the PyTorch optimizer on the same gradients."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
torch = pytest.importorskip("torch")
import jax.numpy as jnp  # noqa: E402

from amosopt.optax import amos  # noqa: E402
from amosopt.optax.diagnostics import diagnostics  # noqa: E402
from tests.oracles import NumpyAmos  # noqa: E402

SHAPES = {"w": (6, 4), "bias": (5,)}
SLOTS = {"w": (6, 1), "bias": ()}
XI, ETA = 0.05, 0.5


def _start() -> dict[str, np.ndarray]:
    return {k: np.linspace(-1.0, 1.0, int(np.prod(s))).reshape(s) for k, s in SHAPES.items()}


def _grad(theta: np.ndarray, t: int) -> np.ndarray:
    return np.sin(3.0 * theta + t) + 0.1 * t * theta


@pytest.mark.parametrize("rho", [0.25, 1.0, 2.0])
def test_matches_the_numpy_transcription_and_torch(rho: float) -> None:
    with jax.enable_x64(True):
        tx = amos(XI, eta_fn=ETA, shape_fn=lambda name, shape: SLOTS[name[0]], momentum=0.9,
                  clip_value=1.5, decay_ratio=rho)
        params = {k: jnp.asarray(x) for k, x in _start().items()}
        state = tx.init(params)
        update = jax.jit(tx.update)
        oracle = {k: NumpyAmos(eta=ETA, slot_shape=SLOTS[k], momentum=0.9, clip_value=1.5,
                               decay_ratio=rho) for k in SHAPES}
        want = _start()
        tensors = {k: torch.nn.Parameter(torch.tensor(x)) for k, x in _start().items()}
        from amosopt.torch import Amos

        opt = Amos(list(tensors.items()), lr=XI, eta=ETA, slot_shape=lambda n, s: SLOTS[n],
                   momentum=0.9, clip_value=1.5, decay_ratio=rho)
        for t in range(1, 30):
            grads = {k: _grad(np.asarray(p), t) for k, p in params.items()}
            updates, state = update({k: jnp.asarray(g) for k, g in grads.items()}, state, params)
            params = optax.apply_updates(params, updates)
            for k in SHAPES:
                want[k] = oracle[k].step(want[k], _grad(want[k], t), XI)
                tensors[k].grad = torch.tensor(_grad(tensors[k].detach().numpy(), t))
            opt.step()
        for k in SHAPES:
            np.testing.assert_allclose(np.asarray(params[k]), want[k], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(tensors[k].detach().numpy(), want[k], rtol=1e-12,
                                       atol=1e-14)
        numbers = diagnostics(state, params, learning_rate=XI, eta_fn=ETA, decay_ratio=rho,
                              per_parameter=True)
        assert np.isfinite(float(numbers["decay_onset/w"]))


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan")])
def test_invalid_values_name_the_argument(bad: float) -> None:
    with pytest.raises(ValueError, match="decay_ratio"):
        amos(XI, eta_fn=ETA, decay_ratio=bad)
