"""amosopt.torch.recipe: a Suggestion as an optimizer and schedule, checked against its fields
and the WSD multiplier written out."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from amosopt.suggest import Suggestion, suggest  # noqa: E402
from amosopt.torch import recipe  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(6, 5) / 6 ** 0.5)
        self.b = torch.nn.Parameter(torch.zeros(5))

    def forward(self, x):
        return x @ self.w + self.b


def multiplier(s: int, total: int, warmup: int, cooldown: int) -> float:
    """The WSD multiplier of update s (0-based), from its definition."""
    if s >= total:
        return 0.0
    if s < warmup:
        return (s + 1) / warmup
    if s >= total - cooldown:
        return (total - s) / cooldown
    return 1.0


@pytest.mark.parametrize("steps", [40, 1000])
def test_short_budget_recipe_sets_every_field(steps):
    torch.manual_seed(0)
    model = Net()
    s = suggest(10**7, 32, steps=steps)
    assert s.recipe == "short-budget"
    optimizer, scheduler = recipe(model, s, torch.randn(2, 6))
    group = optimizer.param_groups[0]
    for key in ("beta", "momentum", "clip_value", "decay_ratio", "second_moment"):
        assert group[key] == getattr(s, key), key
    assert optimizer.scales["w"].eta == pytest.approx((1 / 6) ** 0.5)
    x, y = torch.randn(16, 6), torch.randn(16, 5)
    for step in range(steps + 2):
        expected = s.xi * multiplier(step, steps, s.warmup_steps, s.cooldown_steps)
        assert group["lr"] == pytest.approx(expected, abs=1e-12), step
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_paper_recipe_holds_xi_and_overrides_apply():
    model = Net()
    s = suggest(1000, 10, steps=None)
    optimizer, scheduler = recipe(model, s, momentum=0.0, beta=0.99)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["beta"], group["decay_ratio"]) == (0.0, 0.99, 1.0)
    assert group["second_moment"] == "slot"
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        assert group["lr"] == pytest.approx(s.xi)


def test_a_user_warmup_without_budget():
    s = Suggestion(0.1, 0.9, 1.0, 100.0, (), warmup_steps=4)
    optimizer, scheduler = recipe(Net(), s)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_recipe_refuses_what_is_not_a_suggestion():
    with pytest.raises(TypeError, match="amosopt.suggest.Suggestion"):
        recipe(Net(), {"xi": 0.1})
