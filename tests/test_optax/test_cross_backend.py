"""The PyTorch and optax Amos give the same float64 trajectory on the same gradient stream."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
torch = pytest.importorskip("torch")
torch_backend = pytest.importorskip("amosopt.torch")
import jax.numpy as jnp  # noqa: E402

from amosopt.optax import amos  # noqa: E402
from tests.test_optax.paths import optax_path  # noqa: E402

SHAPES = {"w": (6, 5), "emb": (7, 4), "b": (5,), "s": ()}
# one table for both backends: torch names ("w") and optax key paths (("w",) -> "w") agree here
ETA = {"w": "sqrt(1 / SHAPE[0])", "emb": 1.0, "b": 0.5, "s": 1.0}
SLOTS = {"w": "(1, SHAPE[1])", "emb": "(SHAPE[0], 1)", "b": (), "s": "SHAPE"}
STEPS = 100


@pytest.mark.parametrize("options", [
    dict(),
    dict(momentum=0.9, clip_value=0.5, beta=0.99, extra_l2=0.01, c_coef=0.5, d_coef=0.1),
    dict(second_moment="row-col"),
    dict(second_moment="row-col", momentum=0.9, clip_value=0.5, beta=0.99, extra_l2=0.01),
])
@pytest.mark.parametrize("foreach", [False, None])
def test_torch_and_optax_trajectories_agree(options, foreach):
    rng = np.random.default_rng(0)
    theta0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    noises = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(STEPS)]

    torch_params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
                    for k, v in theta0.items()}
    optimizer = torch_backend.Amos(list(torch_params.items()), lr=0.03, eta=ETA,
                                   slot_shape=SLOTS, foreach=foreach, **options)
    torch_path = []
    for noise in noises:
        for k, p in torch_params.items():  # gradient 2 (theta - 0.3) + noise
            p.grad = 2.0 * (p.detach() - 0.3) + torch.from_numpy(noise[k])
        optimizer.step()
        torch_path.append({k: p.detach().numpy().copy() for k, p in torch_params.items()})

    with jax.enable_x64(True):
        path, state = optax_path(amos(0.03, ETA, SLOTS, **options), theta0, noises)
    worst = 0.0
    for ours, expected in zip(path, torch_path, strict=True):
        for k in SHAPES:
            assert ours[k].dtype == np.float64
            worst = max(worst, float(np.max(np.abs(ours[k] - expected[k]))
                                     / max(np.max(np.abs(expected[k])), 1e-300)))
    assert worst <= 1e-12, f"torch vs optax max relative error {worst:.3g}"
    assert np.max(np.abs(torch_path[-1]["w"] - theta0["w"])) > 1e-2  # it moved
    if options.get("second_moment") == "row-col":  # the same column factors, where they exist
        for k, p in torch_params.items():
            u = state[1].u[k]
            assert (u is None) == ("u" not in optimizer.state[p]), k
            if u is not None:
                np.testing.assert_allclose(np.asarray(u), optimizer.state[p]["u"].numpy(),
                                           rtol=1e-12)


def test_torch_and_optax_diagnostics_agree():
    """The same numbers (same keys, names) from both backends' states after the same run."""
    from amosopt.optax import diagnostics as optax_diagnostics
    from amosopt.torch.diagnostics import diagnostics as torch_diagnostics

    options = dict(momentum=0.9, clip_value=0.5, beta=0.99, extra_l2=0.01)
    rng = np.random.default_rng(1)
    theta0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    noises = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(40)]

    torch_params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
                    for k, v in theta0.items()}
    optimizer = torch_backend.Amos(list(torch_params.items()), lr=0.03, eta=ETA,
                                   slot_shape=SLOTS, **options)
    for noise in noises:
        for k, p in torch_params.items():
            p.grad = 2.0 * (p.detach() - 0.3) + torch.from_numpy(noise[k])
        optimizer.step()
    ours_torch = torch_diagnostics(optimizer)

    with jax.enable_x64(True):
        tx = amos(0.03, ETA, SLOTS, **options)
        params = {k: jnp.asarray(v) for k, v in theta0.items()}
        state = tx.init(params)
        for noise in noises:
            grads = jax.tree.map(lambda t, n: 2.0 * (t - 0.3) + jnp.asarray(n), params, noise)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        ours_optax = optax_diagnostics(state, params, learning_rate=0.03, eta_fn=ETA,
                                       beta=0.99, extra_l2=0.01, clip_value=0.5, grads=grads)
    assert set(ours_torch) == set(ours_optax)
    assert {"lr/w", "clip_fraction/emb", "decay_onset/median"} <= set(ours_torch)
    for key, value in ours_torch.items():
        np.testing.assert_allclose(float(ours_optax[key]), value, rtol=1e-8, err_msg=key)
