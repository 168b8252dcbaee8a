"""``Amos(..., second_moment="row-col")`` against the NumPy transcription, on every route.

``tests.oracles.NumpyAmos`` writes the column factor and the rank-1 estimate from the equations
(Adafactor's factorisation, Shazeer & Stern 2018). Each way a tensor can take through the step
(``amosopt.torch._routes``: the loop, flat coefficients with a batched update, one by one with
the clipping scratch buffer, ``fused=True``) must follow it in float64; checkpoints resume
exactly.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from amosopt.rules import column_shape
from amosopt.torch import Amos
from amosopt.torch._routes import _LARGE, Route, Update, route
from tests.oracles import FACTORED_LEAVES as LEAVES
from tests.oracles import NumpyAmos

ETA = {k: eta for k, (_, _, eta) in LEAVES.items()}
SLOTS = {k: slot for k, (_, slot, _) in LEAVES.items()}
FACTORED = [k for k, (shape, slot, _) in LEAVES.items() if column_shape(shape, slot)]
STEPS = 30

CASES = {
    "plain": dict(lr=0.03),
    "schedule-momentum-clip": dict(lr=0.05, momentum=0.9, clip_value=0.8, warmup=10),
    "beta-l2-coefs": dict(lr=0.02, beta=0.9, extra_l2=0.01, c_coef=0.5, d_coef=0.1),
}


def initial(shapes: dict[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=shape) for k, shape in shapes.items()}


def noise_stream(shapes: dict[str, tuple], steps: int, seed: int = 1) -> list[dict]:
    """Noise whose scale differs per entry (so per row and per column), which the column
    factor sees and the slot alone does not."""
    rng = np.random.default_rng(seed)
    scales = {k: np.exp(rng.normal(size=shape)) for k, shape in shapes.items()}
    return [{k: s * rng.normal(size=s.shape) for k, s in scales.items()} for _ in range(steps)]


def gradient(theta: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return 2.0 * (theta - 0.3) + noise


def split(case: dict) -> tuple[dict, float, int]:
    options = dict(case)
    return options, options.pop("lr"), options.pop("warmup", 0)


def schedule(lr: float, warmup: int):
    """xi_t of the 1-based step t: a linear warm-up over ``warmup`` steps, then ``lr``."""
    return lambda t: lr * min(1.0, t / warmup) if warmup else lr


def torch_path(leaves: dict, theta0: dict, noises: list, case: dict, dtype=torch.float64,
               **options) -> tuple[list[dict], Amos]:
    hyper, lr, warmup = split(case)
    params = {k: torch.nn.Parameter(torch.tensor(theta0[k], dtype=dtype)) for k in leaves}
    opt = Amos(list(params.items()), lr=lr, eta=lambda n, s: leaves[n][2],
               slot_shape=lambda n, s: leaves[n][1], second_moment="row-col",
               **hyper, **options)
    xi = schedule(lr, warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: xi(k + 1) / lr)
    path = []
    for noise in noises:
        for k, p in params.items():
            p.grad = torch.tensor(gradient(p.detach().double().numpy(), noise[k]), dtype=dtype)
        opt.step()
        sched.step()
        path.append({k: p.detach().double().numpy().copy() for k, p in params.items()})
    return path, opt


def oracle_path(leaves: dict, theta0: dict, noises: list, case: dict,
                second_moment: str = "row-col") -> list[dict]:
    hyper, lr, warmup = split(case)
    oracles = {k: NumpyAmos(eta=eta, slot_shape=slot, second_moment=second_moment, **hyper)
               for k, (_, slot, eta) in leaves.items()}
    theta, path = dict(theta0), []
    for noise in noises:
        theta = {k: oracles[k].step(theta[k], gradient(theta[k], noise[k]),
                                    schedule(lr, warmup)) for k in leaves}
        path.append(theta)
    return path


def relative_error(ours: list[dict], reference: list[dict]) -> float:
    worst = 0.0
    for a, b in zip(ours, reference):
        for k in b:
            assert np.all(np.isfinite(a[k])), k
            worst = max(worst, float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))))
    return worst


def shapes_of(leaves: dict) -> dict:
    return {k: shape for k, (shape, _, _) in leaves.items()}


@pytest.mark.parametrize("foreach", [False, None])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_numpy_transcription(case, foreach):
    """Small tensors: the loop (foreach=False), or flat coefficients and a batched update."""
    theta0 = initial(shapes_of(LEAVES))
    noises = noise_stream(shapes_of(LEAVES), STEPS)
    ours, opt = torch_path(LEAVES, theta0, noises, CASES[case], foreach=foreach)
    reference = oracle_path(LEAVES, theta0, noises, CASES[case])
    assert relative_error(ours, reference) <= 1e-12
    paper = oracle_path(LEAVES, theta0, noises, CASES[case], "slot")
    only = lambda path, keys: [{k: x[k] for k in keys} for x in path]  # noqa: E731
    for k in FACTORED:  # the column factor moved these, and only these
        assert relative_error(only(reference, [k]), only(paper, [k])) > 1e-3, k
    others = [k for k in LEAVES if k not in FACTORED]
    assert relative_error(only(reference, others), only(paper, others)) == 0.0
    group = opt.param_groups[0]
    params = dict(zip(group["param_names"], group["params"]))
    for k in LEAVES:
        state = opt.state[params[k]]
        want = column_shape(*LEAVES[k][:2])
        assert (("u" not in state) if want is None else tuple(state["u"].shape) == want), k


#: large enough (>= _LARGE entries) to go one by one, clipped into the scratch buffer
LARGE = {"rows": ((300, 256), (300, 1), 0.06), "cols": ((256, 300), (1, 300), 0.06),
         "middle": ((4, 200, 90), (4, 1, 90), 0.07),
         "conv": ((128, 64, 3, 3), (128, 1, 1, 1), 0.05)}


@pytest.mark.parametrize("fused", [False, True])
def test_large_tensors_one_by_one_and_fused(fused):
    """Large factored tensors with clipping (scratch buffer) and momentum; with fused=True the
    route keeps them off the compiled kernels (which know no column factor), so the result is
    the eager one."""
    if fused:
        from amosopt.torch._fused import check_available

        try:
            check_available("cpu")
        except RuntimeError as error:
            pytest.skip(str(error))
    assert all(math.prod(shape) >= _LARGE for shape, _, _ in LARGE.values())
    case = dict(lr=0.05, momentum=0.5, clip_value=1.0)
    theta0 = initial(shapes_of(LARGE))
    noises = noise_stream(shapes_of(LARGE), 4)
    ours, opt = torch_path(LARGE, theta0, noises, case, fused=fused)
    assert relative_error(ours, oracle_path(LARGE, theta0, noises, case)) <= 1e-12
    group = opt.param_groups[0]
    for p, (shape, slot, _) in zip(group["params"], LARGE.values()):
        r = route(p, slot, group, opt.state[p])
        assert not r.compiled and not r.batched and r.scratch, r
        assert r.columns == tuple(i for i, (s, n) in enumerate(zip(slot, shape)) if s == n)


def test_routes_give_columns_only_where_there_is_a_column_factor():
    def route_of(shape, slot, second_moment="row-col", **options):
        p = torch.nn.Parameter(torch.zeros(shape))
        p.grad = torch.zeros_like(p)
        group = Amos([p], lr=0.1, eta=0.5, second_moment=second_moment,
                     **options).param_groups[0]
        return route(p, slot, group, {})

    assert route_of((64, 32), (64, 1)) == Route(axes=(1,), flat=True, batched=True,
                                                columns=(0,))
    assert route_of((64, 32), (64, 1), "slot").columns is None
    assert route_of((64, 32), (64, 1), foreach=False) == Route(axes=(1,), update=Update.LOOP,
                                                               columns=(0,))
    assert route_of((8, 3, 3, 3), (1, 3, 3, 3)).columns == (1, 2, 3)
    for shape, slot in [((64, 32), (64, 32)), ((64,), ()), ((64, 32), (1, 1)),
                        ((3, 70001), (3, 70001))]:
        assert route_of(shape, slot).columns is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_parameters(dtype):
    """u is float32 for 16-bit parameters, like v and b; the update follows the oracle to the
    precision of the parameter's dtype."""
    case = dict(lr=0.05, momentum=0.5)
    theta0 = {k: np.asarray(torch.tensor(x, dtype=dtype).double())
              for k, x in initial(shapes_of(LEAVES)).items()}
    noises = noise_stream(shapes_of(LEAVES), 3)
    ours, opt = torch_path(LEAVES, theta0, noises, case, dtype=dtype)
    for state in opt.state.values():
        assert all(state[k].dtype == torch.float32 for k in ("v", "b", "u") if k in state)
    # one step at a time against the oracle from the same parameters
    reference = oracle_path(LEAVES, theta0, noises[:1], case)[0]
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for k in LEAVES:
        moved = reference[k] - theta0[k]
        np.testing.assert_allclose(ours[0][k] - theta0[k], moved, rtol=tolerance,
                                   atol=tolerance * np.max(np.abs(moved)) + 1e-2 * float(
                                       np.max(np.abs(theta0[k]))) * (dtype != torch.float32))


def test_checkpoint_round_trip_resumes_exactly():
    """save after 10 steps, load into a fresh optimizer, 10 more: the same as 20 at once."""
    theta0 = initial(shapes_of(LEAVES))
    noises = noise_stream(shapes_of(LEAVES), 20)
    case = dict(lr=0.05, momentum=0.9, clip_value=0.8)
    whole, _ = torch_path(LEAVES, theta0, noises, case)
    first, opt = torch_path(LEAVES, theta0, noises[:10], case)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["param_groups"][0]["second_moment"] == "row-col"
    params = {k: torch.nn.Parameter(torch.tensor(first[-1][k])) for k in LEAVES}
    resumed = Amos(list(params.items()), lr=0.05, eta=lambda n, s: LEAVES[n][2],
                   slot_shape=lambda n, s: LEAVES[n][1], momentum=0.9, clip_value=0.8)
    resumed.load_state_dict(saved)  # the saved second_moment wins, as torch's hyper-parameters
    assert resumed.param_groups[0]["second_moment"] == "row-col"
    for noise, want in zip(noises[10:], whole[10:]):
        for k, p in params.items():
            p.grad = torch.tensor(gradient(p.detach().numpy(), noise[k]))
        resumed.step()
        for k, p in params.items():
            np.testing.assert_array_equal(p.detach().numpy(), want[k])


def test_column_factor_of_another_shape_raises_on_load():
    theta0 = initial(shapes_of(LEAVES))
    _, opt = torch_path(LEAVES, theta0, noise_stream(shapes_of(LEAVES), 1), dict(lr=0.05))
    state = opt.state_dict()
    index = list(LEAVES).index("linear")
    state["state"][index]["u"] = torch.zeros(6, 1)
    _, fresh = torch_path(LEAVES, theta0, [], dict(lr=0.05))
    with pytest.raises(ValueError, match=r"'linear'.*u of shape \(6, 1\)"):
        fresh.load_state_dict(state)
    state["state"][index]["u"] = torch.zeros(1, 5)
    state["state"][list(LEAVES).index("bias")]["u"] = torch.zeros(5)  # none belongs there
    with pytest.raises(ValueError, match=r"'bias'.*u of shape \(5,\)"):
        fresh.load_state_dict(state)


def test_switched_on_mid_run_the_column_factor_starts_at_mean_v():
    """A run of the paper's update, then second_moment="row-col" on its param group: u starts
    at mean(v_{t-1}), so u_t = beta mean(v_{t-1}) + (1 - beta) M_K(g_t^2), and w starts near 1."""
    rng = np.random.default_rng(0)
    p = torch.nn.Parameter(torch.tensor(rng.normal(size=(6, 5))))
    opt = Amos([("w", p)], lr=0.05, eta=0.5, slot_shape={"w": (6, 1)}, beta=0.9)
    for _ in range(5):
        p.grad = torch.tensor(rng.normal(size=(6, 5)))
        opt.step()
    mean_v = opt.state[p]["v"].mean()
    opt.param_groups[0]["second_moment"] = "row-col"
    p.grad = torch.tensor(rng.normal(size=(6, 5)))
    opt.step()
    want = 0.9 * mean_v + 0.1 * p.grad.square().mean(0, keepdim=True)
    torch.testing.assert_close(opt.state[p]["u"], want, rtol=1e-12, atol=0)
    opt.param_groups[0]["second_moment"] = "slot"  # and off again: u is dropped
    opt.step()
    assert "u" not in opt.state[p]


def test_a_non_finite_gradient_raises_before_anything_changes():
    p = torch.nn.Parameter(torch.ones(6, 5, dtype=torch.float64))
    opt = Amos([("w", p)], lr=0.05, eta=0.5, slot_shape={"w": (6, 1)}, second_moment="row-col")
    p.grad = torch.ones_like(p)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
    theta = p.detach().clone()
    p.grad[2, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="'w'"):
        opt.step()
    assert torch.equal(p.detach(), theta)
    assert all(torch.equal(v, opt.state[p][k]) for k, v in before.items())


@pytest.mark.parametrize("value", ["row", "columns", None, 2])
def test_invalid_second_moment_raises_naming_it(value):
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="second_moment"):
        Amos([p], lr=0.1, eta=0.5, second_moment=value)
    with pytest.raises(ValueError, match=r"second_moment \(param group 1\)"):
        Amos([{"params": [p]}, {"params": [torch.nn.Parameter(torch.ones(2))],
                                "second_moment": value}], lr=0.1, eta=0.5)


def test_auto_amos_passes_it_through():
    """The automatic scales give a Linear weight an (out, 1) slot: u is (1, in); none for the
    bias's scalar slot."""
    from amosopt.torch import auto_amos

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    opt = auto_amos(model, lr=0.05, example_inputs=torch.randn(2, 4), second_moment="row-col")
    model(torch.randn(8, 4)).square().mean().backward()
    opt.step()
    assert {n: tuple(opt.state[p]["u"].shape) for n, p in model.named_parameters()
            if "u" in opt.state[p]} == {"0.weight": (1, 4), "2.weight": (1, 3)}


def test_column_factor_stays_float32_after_loading_for_bfloat16():
    p = torch.nn.Parameter(torch.ones(6, 5, dtype=torch.bfloat16))
    opt = Amos([("w", p)], lr=0.05, eta=0.5, slot_shape={"w": (6, 1)}, second_moment="row-col")
    p.grad = torch.full_like(p, 0.5)
    opt.step()
    state = opt.state_dict()
    q = torch.nn.Parameter(torch.ones(6, 5, dtype=torch.bfloat16))
    fresh = Amos([("w", q)], lr=0.05, eta=0.5, slot_shape={"w": (6, 1)})
    fresh.load_state_dict(state)  # torch would cast u to bfloat16
    assert fresh.state[q]["u"].dtype == torch.float32
    torch.testing.assert_close(fresh.state[q]["u"], opt.state[p]["u"], rtol=0, atol=0)
