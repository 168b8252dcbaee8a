"""``Amos(rounding=...)`` for 16-bit parameters. ``"stochastic"``: bfloat16 rounded up or down
at random, with the probabilities of the closed form, so that updates below half a unit in the
last place survive in expectation. ``"compensated"``: what rounding lost is kept and added back
(Kahan summation), so that the parameter follows the float32 run to within its rounding. On
every way through the step; no effect on other dtypes; invalid values named."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from amosopt.torch import Amos
from amosopt.torch._functional import stochastic_round

ULP_AT_1 = 2.0**-7  # bfloat16 keeps 8 significant bits


def within(mean: float, want: float, p: float, n: int, spread: float) -> bool:
    """``mean`` of ``n`` roundings, each ``spread`` apart with probability ``p`` up: five
    standard deviations of a binomial mean."""
    return abs(mean - want) <= 5 * spread * math.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("fraction", [1 / 16, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("base", [1.0, 3.0e-5, 6.0e4])
def test_rounds_up_with_the_distance_as_probability(fraction: float, sign: float,
                                                    base: float) -> None:
    low = torch.tensor(base, dtype=torch.bfloat16).float()
    high = torch.nextafter(low.bfloat16(), torch.tensor(math.inf, dtype=torch.bfloat16)).float()
    x = sign * (low + fraction * (high - low))  # exactly representable in float32
    n = 100_000
    torch.manual_seed(0)
    rounded = stochastic_round(x.expand(n).contiguous())
    assert rounded.dtype == torch.bfloat16
    values = rounded.float()
    up = (values.abs() == high).double().mean().item()
    assert set(values.abs().unique().tolist()) <= {low.item(), high.item()}
    assert within(up, fraction, fraction, n, 1.0)
    assert within(values.double().mean().item(), x.item(), fraction, n, (high - low).item())


def test_representable_values_and_specials_are_kept() -> None:
    x = torch.cat([torch.randn(10_000).bfloat16().float(),
                   torch.tensor([0.0, -0.0, math.inf, -math.inf])])
    assert torch.equal(stochastic_round(x).float(), x)


def steps(dtype: torch.dtype, rounding: str, shape: tuple, slot_shape, foreach, fused=False,
          seed: int = 0, n: int = 1, **options) -> tuple[torch.Tensor, Amos]:
    """``n`` steps from all-ones parameters with a constant gradient: the first Amos step moves
    each entry by about ``lr * eta`` = 1e-3, under half a unit in the last place of 1.0 in
    bfloat16 (2**-8), and later ones by less."""
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.ones(shape, dtype=dtype))
    rules = None if slot_shape is None else {r".*": repr(tuple(slot_shape))}
    opt = Amos([("w", p)], lr=0.01, eta=0.1, slot_shape=rules, foreach=foreach, fused=fused,
               rounding=rounding, **options)
    for _ in range(n):
        p.grad = torch.full(shape, 0.5, dtype=dtype)
        opt.step()
    return p.detach(), opt


def one_step(dtype: torch.dtype, sr: bool, shape: tuple, slot_shape, foreach, fused=False,
             seed: int = 0) -> torch.Tensor:
    return steps(dtype, "stochastic" if sr else "nearest", shape, slot_shape, foreach, fused,
                 seed)[0]


#: (shape, slot shape): the batched update of small tensors, one by one (large, factored),
#: the full step in blocks (large, full-size slots)
WAYS = [((1000,), ()), ((300, 300), (300, 1)), ((300, 300), None)]


@pytest.mark.parametrize("shape, slot_shape", WAYS, ids=["batched", "one-by-one", "full-step"])
@pytest.mark.parametrize("foreach", [None, False], ids=["foreach", "loop"])
def test_updates_below_half_an_ulp_survive_in_expectation(shape, slot_shape, foreach) -> None:
    want = one_step(torch.float32, False, shape, slot_shape, foreach)
    assert 0 < (1 - want).abs().max() < ULP_AT_1 / 2  # the premise: to nearest loses it
    assert torch.equal(one_step(torch.bfloat16, False, shape, slot_shape, foreach),
                       torch.ones(shape, dtype=torch.bfloat16))
    got = one_step(torch.bfloat16, True, shape, slot_shape, foreach).float()
    step = (1 - want.double().mean()).item()  # each entry moves down by this, in float32
    p = step / ULP_AT_1 * 2  # below 1.0 the spacing of bfloat16 is 2**-8
    assert set(got.unique().tolist()) <= {1.0, 1.0 - ULP_AT_1 / 2}
    assert within(got.double().mean().item(), 1 - step, p, got.numel(), ULP_AT_1 / 2)


@pytest.mark.slow
def test_fused_kernels_round_stochastically_too() -> None:
    shape, slot_shape = (1024, 1024), (1024, 1)  # large enough for the compiled kernel
    got = one_step(torch.bfloat16, True, shape, slot_shape, None, fused=True).float()
    want = one_step(torch.float32, False, shape, slot_shape, None)
    step = (1 - want.double().mean()).item()
    assert within(got.double().mean().item(), 1 - step, step / ULP_AT_1 * 2, got.numel(),
                  ULP_AT_1 / 2)


def test_reproducible_from_the_seed_and_no_effect_on_other_dtypes() -> None:
    a = one_step(torch.bfloat16, True, (300, 300), (300, 1), None, seed=3)
    b = one_step(torch.bfloat16, True, (300, 300), (300, 1), None, seed=3)
    assert torch.equal(a, b)
    for dtype in (torch.float32, torch.float64, torch.float16):
        assert torch.equal(one_step(dtype, True, (300, 300), (300, 1), None),
                           one_step(dtype, False, (300, 300), (300, 1), None))


def test_invalid_value_names_the_argument() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="rounding.*one of .nearest., .stochastic., .compensated."):
        Amos([p], lr=0.1, eta=1.0, rounding="up")
    with pytest.raises(ValueError, match=r"rounding \(param group 1\)"):
        Amos([{"params": [p]}, {"params": [torch.nn.Parameter(torch.ones(2))],
                                "rounding": True}], lr=0.1, eta=1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape, slot_shape", WAYS, ids=["batched", "one-by-one", "full-step"])
@pytest.mark.parametrize("foreach", [None, False], ids=["foreach", "loop"])
def test_compensated_follows_float32(dtype, shape, slot_shape, foreach) -> None:
    """After 30 steps of updates below half a unit in the last place, to nearest has not moved
    at all; compensated, parameter plus buffer equals the float32 run to about 16 bits."""
    n = 30
    want, _ = steps(torch.float32, "nearest", shape, slot_shape, foreach, n=n, momentum=0.9)
    nearest, _ = steps(dtype, "nearest", shape, slot_shape, foreach, n=n, momentum=0.9)
    got, opt = steps(dtype, "compensated", shape, slot_shape, foreach, n=n, momentum=0.9)
    if dtype == torch.bfloat16:
        assert torch.equal(nearest, torch.ones_like(nearest))  # every update rounded away
    c = opt.state[opt.param_groups[0]["params"][0]]["compensation"]
    assert c.dtype == dtype and c.shape == got.shape
    ulp = torch.finfo(dtype).eps  # at 1.0
    assert (got.float() - want).abs().max() <= ulp  # the parameter: within its rounding
    total = got.float() + c.float()
    assert (total - want).abs().max() <= 1e-2 * (1 - want).abs().max()  # p + c: the update


def test_compensated_resumes_exactly_and_is_checked_on_load() -> None:
    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 4).to(torch.bfloat16)
        return model, Amos(model.named_parameters(), lr=0.05, eta=0.5, momentum=0.9,
                           slot_shape={r".*weight": "(SHAPE[0], 1)", r".*": "()"},
                           rounding="compensated")

    def train(model, opt, ts):
        for t in ts:
            x = torch.randn(8, 6, generator=torch.Generator().manual_seed(t)).bfloat16()
            opt.zero_grad()
            model(x).float().square().mean().backward()
            opt.step()

    model, opt = make()
    train(model, opt, range(10))
    saved = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    train(model, opt, range(10, 20))
    other, other_opt = make()
    other.load_state_dict(saved[1])
    other_opt.load_state_dict(saved[0])
    state = other_opt.state[other.weight]
    assert state["compensation"].dtype == torch.bfloat16 and state["v"].dtype == torch.float32
    train(other, other_opt, range(10, 20))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))

    broken = copy.deepcopy(saved[0])
    broken["state"][0]["compensation"] = torch.zeros(4, 1, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"'weight'.*compensation of shape \(4, 1\)"):
        make()[1].load_state_dict(broken)


def test_compensated_skips_the_compiled_kernels() -> None:
    """``fused=True``'s kernels have no buffer: compensated tensors take the eager way."""
    p = torch.nn.Parameter(torch.ones(1024, 1024, dtype=torch.bfloat16))
    opt = Amos([("w", p)], lr=0.01, eta=0.1, slot_shape={r".*": "(1024, 1)"}, fused=True,
               rounding="compensated")
    p.grad = torch.full_like(p, 0.5)
    opt.step()
    record = opt._records[0, 0]
    assert not record.route.compiled and "compensation" in opt.state[p]
