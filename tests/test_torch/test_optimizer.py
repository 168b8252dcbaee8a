"""Behaviour of amosopt.torch.Amos: toy problems, foreach vs loop, resume, dtypes, groups, names,
schedulers, closure. Numbers are checked against closed-form optima or against the loop path."""

from __future__ import annotations

import copy
import io
import math
import pickle

import numpy as np
import pytest
import torch

from amosopt.torch import Amos
from tests.test_torch.conftest import (
    TABLE_ETA,
    TABLE_SLOT,
    assert_same,
    batch,
    check_large_tensors_against_numpy,
    mlp,
    snapshot,
    train,
)
from tests.test_torch.parity import run_torch

# ---- the reference's toy problems (jestimator's amos_test.py) --------------------------------


def test_parabola_converges() -> None:
    target = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    theta = torch.nn.Parameter(torch.tensor([-1.0, 10.0, 1.0], dtype=torch.float64))
    opt = Amos([("theta", theta)], lr=1.0, eta=1.0, slot_shape=lambda n, s: ())
    for _ in range(10_000):
        theta.grad = 2.0 * (theta.detach() - target)
        opt.step()
    torch.testing.assert_close(theta.detach(), target, atol=1e-3, rtol=0)


def test_rosenbrock_converges() -> None:
    theta = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = Amos([("xy", theta)], lr=0.5, eta=1.0, slot_shape={".*": "()"}, beta=0.5,
               clip_value=1.0, momentum=0.9)
    a, b = 1.0, 100.0
    for _ in range(10_000):
        x, y = theta.detach()
        theta.grad = torch.stack([-2 * (a - x) - 4 * b * x * (y - x * x), 2 * b * (y - x * x)])
        opt.step()
    torch.testing.assert_close(theta.detach(), torch.ones(2, dtype=torch.float64), atol=1e-3,
                               rtol=0)


# ---- foreach == loop ---------------------------------------------------------------------------

FOREACH_CASES = [
    dict(),
    dict(momentum=0.9, clip_value=1.5, extra_l2=0.01),
    dict(maximize=True, c_coef=0.4, d_coef=0.1, beta=0.9, lr=0.3),
]


@pytest.mark.parametrize("slot", ["full", "rows", "cols", "scalar"])
@pytest.mark.parametrize("case", range(len(FOREACH_CASES)))
def test_foreach_equals_loop(slot: str, case: int) -> None:
    kwargs = FOREACH_CASES[case]
    _, loop = run_torch(30, slot, foreach=False, **kwargs)
    _, multi = run_torch(30, slot, foreach=True, **kwargs)
    assert_same(snapshot(loop), snapshot(multi))
    assert all("momentum_buffer" in s for s in multi.state.values()) == ("momentum" in kwargs)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_foreach_equals_loop_with_large_and_small_tensors(momentum: float) -> None:
    """The multi-tensor path updates large tensors one by one and small ones together."""
    def run(foreach: bool):
        torch.manual_seed(0)
        params = [("big", torch.nn.Parameter(torch.randn(300, 256, dtype=torch.float64))),
                  ("small", torch.nn.Parameter(torch.randn(30, 4, dtype=torch.float64))),
                  ("bias", torch.nn.Parameter(torch.randn(300, dtype=torch.float64))),
                  # full-size slots, updated block by block: two and a half blocks
                  ("full", torch.nn.Parameter(torch.randn(5, 65536, dtype=torch.float64))),
                  # large with factored slots
                  ("rows", torch.nn.Parameter(torch.randn(1000, 300, dtype=torch.float64))),
                  ("cols", torch.nn.Parameter(torch.randn(1000, 300, dtype=torch.float64)))]
        opt = Amos(params, lr=0.1, eta=0.5, momentum=momentum, clip_value=2.0, foreach=foreach,
                   slot_shape={"big|rows": "(SHAPE[0], 1)", "small|cols": "(1, SHAPE[1])",
                               "full": "SHAPE", ".*": "()"})
        for t in range(5):
            gen = torch.Generator().manual_seed(t)
            for _, p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            opt.step()
        return opt

    assert_same(snapshot(run(False)), snapshot(run(True)))
    assert_same(snapshot(run(False)), snapshot(run(None)))


@pytest.mark.parametrize("foreach", [False, True])
def test_clipping_of_several_large_tensors_matches_numpy(foreach: bool) -> None:
    """Large clipped gradients, on every route of the multi-tensor step and in the loop."""
    check_large_tensors_against_numpy(foreach=foreach)


@pytest.mark.parametrize("shape, slot_shape", [((3, 70001), None), ((1000, 300), (1000, 1))])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_large_updates_equal_the_loop(dtype: torch.dtype, shape: tuple, slot_shape) -> None:
    """Large parameters with full-size slots are updated block by block on the default path,
    others one by one; low-precision ones through float32 slots: the same bits as the loop."""
    def run(foreach: bool):
        torch.manual_seed(0)
        params = [("w", torch.nn.Parameter(torch.randn(shape).to(dtype)))]
        opt = Amos(params, lr=0.1, eta=0.5, momentum=0.9, clip_value=1.0, foreach=foreach,
                   slot_shape=None if slot_shape is None else (lambda n, s: slot_shape))
        for t in range(3):
            params[0][1].grad = torch.randn(shape, generator=torch.Generator().manual_seed(t)
                                            ).to(dtype)
            opt.step()
        return opt

    loop, blocked = run(False), run(True)
    assert blocked.state[blocked.param_groups[0]["params"][0]]["v"].dtype == torch.float32
    assert_same(snapshot(loop), snapshot(blocked))


@pytest.mark.parametrize("foreach", [False, True])
def test_mixed_dtypes_in_one_group(foreach: bool) -> None:
    """foreach buckets by dtype; each bucket must match the loop."""
    def run(fe: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, 3, dtype=dt))
                  for dt in (torch.float64, torch.float32, torch.bfloat16)]
        opt = Amos(params, lr=0.1, eta=0.5, foreach=fe, momentum=0.5)
        for t in range(5):
            for p in params:
                gen = torch.Generator().manual_seed(t)
                p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            opt.step()
        return params

    for a, b in zip(run(False), run(foreach)):
        assert torch.equal(a, b)


def test_maximize_is_minimize_of_negated_gradient() -> None:
    def run(maximize: bool) -> torch.Tensor:
        theta = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3))
        opt = Amos([theta], lr=0.1, eta=0.5, maximize=maximize, momentum=0.5)
        for t in range(10):
            g = torch.randn(2, 3, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
            theta.grad = -g if maximize else g
            opt.step()
        return theta.detach()

    assert torch.equal(run(True), run(False))


# ---- state_dict resume -------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
def test_resume_is_bit_for_bit(foreach: bool) -> None:
    def fresh():
        model = mlp()
        opt = Amos(model.named_parameters(), lr=0.2, eta=TABLE_ETA, slot_shape=TABLE_SLOT,
                   momentum=0.9, clip_value=1.0, foreach=foreach)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 10))
        return model, opt, sched

    model, opt, sched = fresh()
    train(model, opt, range(40), sched)

    model1, opt1, sched1 = fresh()
    train(model1, opt1, range(20), sched1)
    buffer = io.BytesIO()
    torch.save({"model": model1.state_dict(), "opt": opt1.state_dict(),
                "sched": sched1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    model2, opt2, sched2 = fresh()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    train(model2, opt2, range(20, 40), sched2)

    assert_same(snapshot(opt), snapshot(opt2))


def test_state_dict_with_lambda_specs_pickles_and_keeps_the_loaders_specs() -> None:
    model = mlp()
    opt = Amos(model.named_parameters(), lr=0.1, eta=lambda n, s: 0.5,
               slot_shape=lambda n, s: ())
    train(model, opt, range(3))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # a lambda in param_groups would not pickle
    buffer.seek(0)
    model2 = mlp()
    eta_fn = lambda n, s: 0.25  # noqa: E731
    # the same slot shapes as the saver's (other ones raise: tests/test_torch/test_checkpoints.py)
    shape_fn = lambda n, s: ()  # noqa: E731
    opt2 = Amos(model2.named_parameters(), lr=0.1, eta=eta_fn, slot_shape=shape_fn)
    opt2.load_state_dict(torch.load(buffer, weights_only=False))
    assert opt2.param_groups[0]["eta"] is eta_fn  # unpicklable spec kept from the loader
    assert opt2.param_groups[0]["slot_shape"] is shape_fn
    assert all(s["eta"] == 0.5 and s["v"].shape == () for s in opt2.state.values())


# ---- low precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("foreach", [False, True])
def test_low_precision_params_keep_float32_slots(dtype: torch.dtype, foreach: bool) -> None:
    model = mlp(dtype=dtype)
    opt = Amos(model.named_parameters(), lr=0.1, eta=TABLE_ETA, slot_shape=TABLE_SLOT,
               momentum=0.9, foreach=foreach)
    train(model, opt, range(5))
    slots = ("v", "b", "momentum_buffer")
    assert all(s[k].dtype == torch.float32 for s in opt.state.values() for k in slots)
    assert all(p.dtype == dtype for p in model.parameters())

    saved = copy.deepcopy(opt.state_dict())
    model2 = mlp(dtype=dtype)
    opt2 = Amos(model2.named_parameters(), lr=0.1, eta=TABLE_ETA, slot_shape=TABLE_SLOT,
                momentum=0.9, foreach=foreach)
    opt2.load_state_dict(saved)
    for i, state in enumerate(opt2.state.values()):
        for k in slots:
            assert state[k].dtype == torch.float32
            assert torch.equal(state[k], saved["state"][i][k])  # not rounded through bf16
    train(model2, opt2, range(5, 6))
    assert all(s[k].dtype == torch.float32 for s in opt2.state.values() for k in slots)


def test_bfloat16_tracks_float32_run() -> None:
    """bf16 parameters with float32 slots follow the float32 trajectory to bf16 precision."""
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        got, _ = run_torch(50, "rows", dtype=dtype, foreach=False, momentum=0.5)
        results[dtype] = got
    for name, want in results[torch.float32].items():
        np.testing.assert_allclose(results[torch.bfloat16][name], want, atol=0.05)


# ---- names, groups, schedules, closure ----------------------------------------------------------


def test_rule_tables_resolve_per_parameter() -> None:
    model = mlp()
    opt = Amos(model.named_parameters(), lr=0.1, eta=TABLE_ETA, slot_shape=TABLE_SLOT)
    train(model, opt, range(1))
    state = {n: opt.state[p] for n, p in model.named_parameters()}
    assert state["0.weight"]["eta"] == pytest.approx(math.sqrt(1 / 5))
    assert state["2.weight"]["eta"] == pytest.approx(math.sqrt(1 / 7))
    assert state["0.bias"]["eta"] == 0.5
    assert state["0.weight"]["v"].shape == (7, 1) and state["0.weight"]["slot_shape"] == (7, 1)
    assert state["2.weight"]["v"].shape == (1, 7)
    assert state["0.bias"]["v"].shape == () and state["2.bias"]["b"].shape == ()
    assert isinstance(state["0.weight"]["eta"], float)
    assert state["0.weight"]["step"].dtype == torch.float32
    assert state["0.weight"]["step"].device.type == "cpu" and state["0.weight"]["step"] == 1


def test_unnamed_params_with_float_eta_work() -> None:
    model = mlp()
    opt = Amos(model.parameters(), lr=0.1, eta=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    train(model, opt, range(2))
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("spec", [dict(eta=TABLE_ETA), dict(eta=lambda n, s: 0.5),
                                  dict(eta=0.5, slot_shape=TABLE_SLOT)])
def test_name_based_specs_without_names_are_rejected(spec: dict) -> None:
    model = mlp()
    with pytest.raises(ValueError, match=r"named_parameters\(\)"):
        Amos(model.parameters(), lr=0.1, **spec)


def test_per_group_overrides() -> None:
    model = mlp()
    named = dict(model.named_parameters())
    opt = Amos(
        [{"params": [("0.weight", named["0.weight"]), ("0.bias", named["0.bias"])],
          "eta": {r".*weight": 0.2, r".*bias": 0.1}, "slot_shape": {".*": "()"}, "lr": 0.05},
         {"params": [("2.weight", named["2.weight"]), ("2.bias", named["2.bias"])]}],
        lr=0.1, eta=0.7, momentum=0.5,
    )
    train(model, opt, range(2))
    assert opt.state[named["0.weight"]]["eta"] == 0.2
    assert opt.state[named["0.bias"]]["eta"] == 0.1
    assert opt.state[named["0.weight"]]["v"].shape == ()
    assert opt.state[named["2.weight"]]["eta"] == 0.7
    assert opt.state[named["2.weight"]]["v"].shape == (3, 7)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[1]["lr"] == 0.1


def test_lr_is_read_every_step() -> None:
    """xi = 0 makes init_lr and gamma zero: parameters stay, v still tracks the gradient."""
    model = mlp()
    opt = Amos(model.parameters(), lr=0.1, eta=0.5)
    train(model, opt, range(2))
    before = [p.detach().clone() for p in model.parameters()]
    opt.param_groups[0]["lr"] = 0.0
    train(model, opt, range(2, 4))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(s["step"] == 4 for s in opt.state.values())


def test_closure_and_params_without_grad() -> None:
    model = mlp()
    frozen = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = Amos(list(model.parameters()) + [frozen], lr=0.1, eta=0.5)
    x, y = batch(0)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(20)]
    assert losses[-1] < losses[0]
    assert frozen not in opt.state and torch.equal(frozen, torch.ones(3, dtype=torch.float64))
    assert opt.step() is None  # gradients still there: a normal step without closure


def test_group_without_gradients_and_empty_parameters_are_skipped() -> None:
    model = mlp()
    empty = torch.nn.Parameter(torch.zeros(0, 3, dtype=torch.float64))
    opt = Amos([{"params": list(model[0].parameters()) + [empty]},
                {"params": list(model[2].parameters())}], lr=0.1, eta=0.5)
    model[2].requires_grad_(False)
    train(model, opt, range(2))
    empty.grad = torch.zeros(0, 3, dtype=torch.float64)
    opt.step()
    assert set(opt.state) == set(model[0].parameters())


def test_deepcopy_and_pickle_keep_working() -> None:
    model = mlp()
    opt = Amos(model.named_parameters(), lr=0.1, eta=TABLE_ETA, slot_shape=TABLE_SLOT)
    train(model, opt, range(2))
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.param_groups[0]["eta"] == TABLE_ETA
    assert all(torch.equal(a["v"], b["v"]) for a, b in zip(opt.state.values(),
                                                             clone.state.values()))


def test_zero_dim_parameter() -> None:
    theta = torch.nn.Parameter(torch.tensor(3.0, dtype=torch.float64))
    opt = Amos([theta], lr=0.5, eta=1.0)
    for _ in range(500):
        theta.grad = 2 * theta.detach()
        opt.step()
    assert abs(float(theta)) < 0.05 and opt.state[theta]["v"].shape == ()


@pytest.mark.slow
def test_torch_compile_training_step() -> None:
    model = mlp(dtype=torch.float32)
    opt = Amos(model.named_parameters(), lr=0.1, eta=TABLE_ETA, slot_shape=TABLE_SLOT)

    @torch.compile
    def step(x, y):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    eager_model = mlp(dtype=torch.float32)
    eager_opt = Amos(eager_model.named_parameters(), lr=0.1, eta=TABLE_ETA, slot_shape=TABLE_SLOT)
    for t in range(3):
        step(*batch(t, torch.float32))
    train(eager_model, eager_opt, range(3))
    for a, b in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
