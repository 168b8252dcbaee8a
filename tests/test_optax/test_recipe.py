"""amosopt.optax.recipe follows amosopt.torch.recipe step for step (float64), schedule and all."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
torch = pytest.importorskip("torch")
import jax.numpy as jnp  # noqa: E402

from amosopt.optax import recipe as optax_recipe  # noqa: E402
from amosopt.suggest import Suggestion, suggest  # noqa: E402
from amosopt.torch import recipe as torch_recipe  # noqa: E402

SHAPES = {"w": (6, 5), "b": (5,)}


class Net(torch.nn.Module):
    def __init__(self, theta0: dict) -> None:
        super().__init__()
        for k, v in theta0.items():
            setattr(self, k, torch.nn.Parameter(torch.tensor(v)))

    def forward(self, x):
        return x @ self.w + self.b


@pytest.mark.parametrize("suggestion", [
    suggest(10**7, 32, steps=60),  # short-budget recipe: warm-up, cooldown, rho, row-col
    suggest(1000, 10),  # the paper's, no budget
    Suggestion(0.05, 0.95, 1.0, 400.0, (), warmup_steps=7),  # warm-up, no budget
])
def test_optax_recipe_follows_torch_recipe(suggestion):
    rng = np.random.default_rng(0)
    theta0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    noises = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(70)]
    model = Net(theta0).double()
    optimizer, scheduler = torch_recipe(model, suggestion, torch.zeros(1, 6, dtype=torch.float64))
    table = optimizer.scales
    torch_path = []
    for noise in noises:
        for k, p in model.named_parameters():
            p.grad = 2.0 * (p.detach() - 0.3) + torch.from_numpy(noise[k])
        optimizer.step()
        scheduler.step()
        torch_path.append({k: p.detach().numpy().copy() for k, p in model.named_parameters()})

    with jax.enable_x64(True):
        tx = optax_recipe(suggestion, {k: table[k].eta for k in SHAPES},
                          {k: table[k].slot_shape for k in SHAPES})
        params = {k: jnp.asarray(v) for k, v in theta0.items()}
        state = tx.init(params)
        worst = 0.0
        for noise, expected in zip(noises, torch_path):
            grads = jax.tree.map(lambda t, n: 2.0 * (t - 0.3) + n, params,
                                 {k: jnp.asarray(v) for k, v in noise.items()})
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            for k in SHAPES:  # relative to the tensor's largest entry, as test_cross_backend
                worst = max(worst, float(np.max(np.abs(np.asarray(params[k]) - expected[k]))
                                         / np.max(np.abs(expected[k]))))
    # float64: the two backends round a few products differently
    assert worst <= 1e-10, f"torch vs optax max relative error {worst:.3g}"
    assert np.max(np.abs(torch_path[-1]["w"] - theta0["w"])) > 1e-2  # it moved


def test_optax_recipe_refuses_what_is_not_a_suggestion():
    with pytest.raises(TypeError, match="amosopt.suggest.Suggestion"):
        optax_recipe({"xi": 0.1}, 0.1)
