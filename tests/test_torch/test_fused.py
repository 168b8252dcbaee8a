"""``Amos(fused=True)``: the whole step compiled as one graph, and the per-tensor kernels of
large parameters (the way of DTensor parameters and of param groups that mix ``fused``). Both
must follow the eager path (to rounding) and the NumPy oracle, be taken where they should, keep
the non-finite policies, and fail early and clearly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from amosopt.torch import Amos
from amosopt.torch import _fused as fused_lib
from tests.test_torch.conftest import (LARGE, TABLE_ETA, TABLE_SLOT, assert_same, batch,
                                       check_large_tensors_against_numpy, mlp, snapshot, train)

pytestmark = pytest.mark.slow  # every new layout and dtype compiles a kernel (seconds)


@pytest.mark.parametrize("shape, slot_shape, want", [
    ((4, 5), (4, 1), ((4, 5), 1)),  # Linear kernel (out, in): one slot per row
    ((4, 5), (1, 5), ((4, 5), 0)),  # HF Conv1D (in, out): one slot per column
    ((4, 5), (), ((1, 20), -1)),  # scalar slot
    ((4, 5), (1, 1), ((1, 20), -1)),
    ((8, 3, 3, 3), (8, 1, 1, 1), ((8, 27), 1)),  # Conv2d kernel
    ((2, 3, 4), (2, 3, 1), ((6, 4), 1)),  # kept axes merge into rows
    ((2, 3, 4), (1, 3, 4), ((2, 12), 0)),
    ((1, 8, 5), (1, 8, 1), ((8, 5), 1)),  # size-1 axes are either kind
    ((7,), (), ((1, 7), -1)),
    ((4, 5), (4, 5), None),  # full-size slots: eager (blocked) path
    ((7,), (7,), None),
    ((3, 4, 5), (1, 4, 1), None),  # kept axis between reduced ones
    ((3, 4, 5), (3, 1, 5), None),
])
def test_matrix_shape(shape: tuple, slot_shape: tuple, want) -> None:
    assert fused_lib.matrix_shape(shape, slot_shape) == want


# name -> (shape, slot shape); the first four are taken by the kernels whatever the options
LAYOUTS = {
    "rows": ((1100, 1000), (1100, 1)),
    "cols": ((1000, 1100), (1, 1100)),
    "conv": ((1024, 64, 4, 4), (1024, 1, 1, 1)),
    "full": ((1200, 1000), (1200, 1000)),  # full-size slots: the slot update in the kernel too
    "scalar": ((600, 1000), ()),  # 6e5 entries: fused only with clipping or momentum
    "middle": ((30, 100, 100), (1, 100, 1)),  # not a matrix layout: eager
    "small": ((10, 3), (10, 1)),  # too small: eager
}


def _params(dtype: torch.dtype) -> list[tuple[str, torch.nn.Parameter]]:
    torch.manual_seed(0)
    params = [(name, torch.nn.Parameter(torch.randn(shape, dtype=torch.float64).to(dtype)))
              for name, (shape, _) in LAYOUTS.items()]
    # a non-contiguous parameter (a transposed layout) stays on the eager path
    params.append(("transposed", torch.nn.Parameter(
        torch.randn(1000, 1100, dtype=torch.float64).to(dtype).t())))
    return params


def _run(fused: bool, dtype: torch.dtype, steps: int = 4, **kwargs) -> Amos:
    params = _params(dtype)
    slots = {name: slot for name, (_, slot) in LAYOUTS.items()}
    opt = Amos(params, lr=0.05, eta=0.5, fused=fused, **kwargs,
               slot_shape=lambda name, shape: slots.get(name, (shape[0], 1)))
    for t in range(steps):
        gen = torch.Generator().manual_seed(t)
        for _, p in params:
            p.grad = (2.0 * torch.randn(p.shape, generator=gen, dtype=torch.float64)).to(dtype)
        opt.step()
    return opt


@pytest.fixture
def fused_calls(monkeypatch) -> dict[str, list[tuple]]:
    """The per-tensor kernels (as for DTensor parameters or mixed groups, not the whole
    compiled step): records the shapes of the tensors that went through each of them."""
    monkeypatch.setattr(Amos, "_compiles_whole_step", lambda self, plan: False)
    calls: dict[str, list[tuple]] = {}
    for name in ("update", "full_slot_update", "clipped_mean_square"):
        calls[name] = []

        def counted(x, *args, _name=name, _kernel=getattr(fused_lib, name), **kwargs):
            calls[_name].append(tuple(x.shape))
            return _kernel(x, *args, **kwargs)

        monkeypatch.setattr(fused_lib, name, counted)
    return calls


OPTIONS = {
    "plain": {},
    "clip": dict(clip_value=1.0),
    "momentum": dict(momentum=0.9),
    "clip+momentum+maximize": dict(clip_value=1.0, momentum=0.5, maximize=True, extra_l2=0.01),
}


@pytest.mark.parametrize("option", OPTIONS)
def test_fused_follows_the_eager_path_in_float64(option: str, fused_calls) -> None:
    kwargs = OPTIONS[option]
    eager = snapshot(_run(False, torch.float64, **kwargs))
    fused = snapshot(_run(True, torch.float64, **kwargs))

    taken = {LAYOUTS[n][0] for n in ("rows", "cols", "conv")}
    if kwargs:  # with clipping or momentum the 6e5-entry scalar-slot tensor is worth it too
        taken.add(LAYOUTS["scalar"][0])
    assert set(fused_calls["update"]) == taken
    assert len(fused_calls["update"]) == 4 * len(taken)
    assert fused_calls["full_slot_update"] == [LAYOUTS["full"][0]] * 4
    assert bool(fused_calls["clipped_mean_square"]) == ("clip_value" in kwargs)

    for a, b in zip(eager[0], fused[0], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-13, atol=1e-15)
    for k, state in eager[1].items():
        for key in ("v", "b", "momentum_buffer"):
            if key in state:
                torch.testing.assert_close(fused[1][k][key], state[key], rtol=1e-12, atol=1e-15)


def test_fused_matches_the_numpy_oracle(fused_calls) -> None:
    """Independent of the eager code: the NumPy transcription of the paper's update."""
    check_large_tensors_against_numpy(fused=True)
    taken = {LARGE[n][0] for n in ("f", "h")}  # the others: too small, or not a matrix layout
    assert set(fused_calls["update"]) == set(fused_calls["clipped_mean_square"]) == taken
    assert set(fused_calls["full_slot_update"]) == {LARGE["e"][0]}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_low_precision_parameters(dtype: torch.dtype, fused_calls) -> None:
    """float32 slots and momentum for bfloat16 parameters; results within rounding."""
    eager = snapshot(_run(False, dtype, clip_value=1.0, momentum=0.9))
    fused_opt = _run(True, dtype, clip_value=1.0, momentum=0.9)
    fused = snapshot(fused_opt)
    assert fused_calls["update"]
    for state in fused_opt.state.values():
        assert state["v"].dtype == state["momentum_buffer"].dtype == torch.float32
    # bfloat16: the rounding of the stored parameter dominates (one ulp, at unit scale);
    # float32: some twenty re-associated operations per step of the full-slot kernel
    ulp = torch.finfo(dtype).eps
    rtol, atol = (2 * ulp, ulp) if dtype == torch.bfloat16 else (10 * ulp, 10 * ulp)
    for a, b in zip(eager[0], fused[0], strict=True):
        assert b.dtype == dtype
        torch.testing.assert_close(b.double(), a.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name, value, clip", [
    ("rows", float("nan"), 1.0),
    ("full", float("nan"), 1.0),  # the full-slot kernel's M(g^2) is checked by its peak
    ("full", -float("inf"), None),
    ("full", 1e200, None),  # finite, but its square overflows
])
def test_non_finite_gradient_raises_before_any_change(name, value, clip) -> None:
    opt = _run(True, torch.float64, steps=1, clip_value=clip, momentum=0.9)
    before = snapshot(opt)
    params = dict(zip(opt.param_groups[0]["param_names"], opt.param_groups[0]["params"]))
    params[name].grad[3, 7] = value
    with pytest.raises(FloatingPointError, match=f"'{name}'"):
        opt.step()
    after = snapshot(opt)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    for k, state in before[1].items():
        assert all(torch.equal(v, after[1][k][key]) for key, v in state.items()
                   if isinstance(v, torch.Tensor))


def test_clipped_inf_in_the_full_slot_kernel_is_clip_value(fused_calls) -> None:
    """As in the reference (and the eager path): clipping turns an inf into clip_value."""
    runs = []
    for fused in (False, True):
        opt = _run(fused, torch.float64, steps=1, clip_value=1.0)
        params = dict(zip(opt.param_groups[0]["param_names"], opt.param_groups[0]["params"]))
        for p in params.values():
            p.grad = torch.full_like(p, 0.5)
        params["full"].grad[3, 7] = float("inf")
        opt.step()
        runs.append(params["full"].detach().clone())
    assert fused_calls["full_slot_update"]
    assert torch.isfinite(runs[1]).all()
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-13, atol=1e-15)


def test_fused_state_dict_round_trip() -> None:
    opt = _run(True, torch.float64, steps=1, momentum=0.9)
    state = opt.state_dict()
    assert all(group["fused"] is True for group in state["param_groups"])
    for group in state["param_groups"]:  # a state saved before the option existed
        del group["fused"]
    # the saver's slot_shape (a callable, so not in the state_dict); another one would raise
    fresh = Amos(_params(torch.float64), lr=0.05, eta=0.5,
                 slot_shape=opt.param_groups[0]["slot_shape"])
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["fused"] is False


@pytest.mark.parametrize("kwargs, message", [
    (dict(fused="yes"), r"Invalid fused: 'yes'; it must be a bool"),
    (dict(fused=True, foreach=False), r"Invalid foreach: False; fused=True runs on the "
                                      r"multi-tensor path"),
])
def test_bad_fused_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Amos([torch.nn.Parameter(torch.zeros(3))], lr=0.1, eta=0.5, **kwargs)


def test_unavailable_compiler_fails_at_construction(monkeypatch) -> None:
    monkeypatch.setattr(fused_lib, "_probe", lambda device_type: "CompilerError: no cc")
    param = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(RuntimeError, match=r"fused=True.*'cpu'.*no cc.*use fused=False"):
        Amos([param], lr=0.1, eta=0.5, fused=True)
    Amos([param], lr=0.1, eta=0.5)  # the default needs no compiler


def test_inside_a_compiled_training_step(fused_calls) -> None:
    """A user's ``torch.compile`` of the whole step traces the kernels' Python instead of
    calling them compiled, and gives the eager numbers."""
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(1024, 600), torch.nn.ReLU(),
                                    torch.nn.Linear(600, 4))
        opt = Amos(model.named_parameters(), lr=0.01, eta=0.5, clip_value=1.0, fused=True,
                   slot_shape={r".*weight": "(SHAPE[0], 1)", r".*": "()"})
        return model, opt

    def step(model, opt, x, y):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    (model, opt), (eager_model, eager_opt) = make(), make()
    compiled = torch.compile(step)
    for t in range(3):
        gen = torch.Generator().manual_seed(t)
        x, y = torch.randn(16, 1024, generator=gen), torch.randn(16, 4, generator=gen)
        compiled(model, opt, x, y)
        step(eager_model, eager_opt, x, y)
    assert fused_calls["update"]  # the eager optimizer ran the compiled kernels
    for a, b in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_group_switched_to_the_loop_still_steps(fused_calls) -> None:
    """Setting ``foreach=False`` on a fused group after construction runs the eager loop."""
    opt = _run(True, torch.float64, steps=1, clip_value=1.0)
    opt.param_groups[0]["foreach"] = False
    calls = len(fused_calls["full_slot_update"])
    opt.step()
    assert len(fused_calls["full_slot_update"]) == calls
    assert all(torch.isfinite(p).all() for p in opt.param_groups[0]["params"])


# ------------------------------------------------------------------------------------------------
# The whole step as one compiled graph (every param group fused, no DTensor)


@pytest.fixture
def graphs():
    """Counts the graphs dynamo compiles (a fresh cache: compiled steps of other tests are
    keyed by other optimizers, but the counters are global)."""
    torch._dynamo.reset()
    counters.clear()
    yield lambda: counters["stats"]["unique_graphs"]
    torch._dynamo.reset()


def _mlp_run(fused: bool, steps: range, model=None, opt=None, **kwargs):
    """The conftest MLP with a LambdaLR schedule (a float lr that changes every step)."""
    if model is None:
        model = mlp()
        opt = Amos(model.named_parameters(), lr=0.1, eta=TABLE_ETA, slot_shape=TABLE_SLOT,
                   fused=fused, **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.1 * t),
                                              last_epoch=steps.start - 1)
    train(model, opt, steps, sched)
    return model, opt


@pytest.mark.parametrize("options", [
    {},
    {"momentum": 0.9, "clip_value": 0.5, "maximize": True, "extra_l2": 0.01},
    {"second_moment": "row-col", "decay_ratio": 0.5, "b0": 3.0},
    {"nonfinite": "skip", "momentum": 0.9},
], ids=["plain", "momentum-clip-maximize", "row-col-decay-b0", "skip"])
def test_whole_step_follows_eager_and_compiles_at_most_twice(options: dict, graphs) -> None:
    """20 steps with a scheduler's float lr: the eager numbers (float64, 1e-12), and two
    graphs at most (the first step's, and the steady state's once the slots exist)."""
    eager = snapshot(_mlp_run(False, range(20), **options)[1])
    model, opt = _mlp_run(True, range(20), **options)
    assert opt._compiled not in (None, False)
    assert graphs() <= 2
    fused = snapshot(opt)
    for a, b in zip(eager[0], fused[0], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    for k, state in eager[1].items():
        assert state.keys() == fused[1][k].keys()
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(fused[1][k][key], value, rtol=1e-12, atol=1e-14)
    assert isinstance(opt.param_groups[0]["lr"], float)  # the user's float, given back


def test_whole_step_matches_the_numpy_oracle() -> None:
    """Independent of the eager code: every factored layout of the large tensors (one
    non-contiguous), compiled as a whole."""
    opt = check_large_tensors_against_numpy("abdfgh", fused=True)
    assert opt._compiled not in (None, False)


def test_full_size_slots_take_the_per_tensor_kernels() -> None:
    """Full-size slots (measured several times faster per tensor): the whole step is not
    compiled, and the result still follows the oracle."""
    opt = check_large_tensors_against_numpy("cef", fused=True)
    assert opt._compiled is None


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_whole_step_non_finite(nonfinite: str) -> None:
    """"raise": FloatingPointError naming the parameter; "skip": counted. Either way nothing
    else changes."""
    model, opt = _mlp_run(True, range(3), momentum=0.9, nonfinite=nonfinite)
    x, _ = torch.randn(4, 5, dtype=torch.float64), None
    opt.zero_grad()
    model(x).square().sum().backward()
    model[2].weight.grad[1, 2] = float("nan")
    before = snapshot(opt)
    if nonfinite == "raise":
        with pytest.raises(FloatingPointError, match=r"'2\.weight'"):
            opt.step()
        assert_same(snapshot(opt), before)
        return
    opt.step()
    after = snapshot(opt)
    for k, state in before[1].items():
        assert after[1][k].pop("skipped").item() == state.pop("skipped").item() + 1
    assert_same(after, before)


def test_whole_step_resumes_exactly(tmp_path) -> None:
    """A state_dict saved after 3 steps, loaded into a fresh model and optimizer, gives the
    uninterrupted run's numbers 3 steps later."""
    whole_model, whole_opt = _mlp_run(True, range(6), momentum=0.9)
    model, opt = _mlp_run(True, range(3), momentum=0.9)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed_model = mlp(seed=1)
    resumed_model.load_state_dict(saved["model"])
    resumed = Amos(resumed_model.named_parameters(), lr=0.1, eta=TABLE_ETA,
                   slot_shape=TABLE_SLOT, fused=True, momentum=0.9)
    resumed.load_state_dict(saved["opt"])
    _mlp_run(True, range(3, 6), model=resumed_model, opt=resumed)
    for a, b in zip(snapshot(whole_opt)[0], snapshot(resumed)[0], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


def test_mixed_groups_take_the_per_tensor_kernels(monkeypatch) -> None:
    """A group without ``fused`` is not compiled for the user: the fused group's large
    tensors take the per-tensor kernels, and the numbers are the eager ones."""
    calls = []
    kernel = fused_lib.update
    monkeypatch.setattr(fused_lib, "update",
                        lambda p, *a, **k: calls.append(tuple(p.shape)) or kernel(p, *a, **k))

    def run(fused: bool) -> Amos:
        torch.manual_seed(0)
        big = torch.nn.Parameter(torch.randn(1100, 1000, dtype=torch.float64))
        small = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
        opt = Amos([{"params": [("big", big)], "fused": fused},
                    {"params": [("small", small)]}], lr=0.05, eta=0.5, clip_value=1.0,
                   slot_shape={"big": "(SHAPE[0], 1)", "small": "()"})
        for t in range(2):
            gen = torch.Generator().manual_seed(t)
            for p in (big, small):
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            opt.step()
        return opt

    eager, mixed = snapshot(run(False)), run(True)
    assert mixed._compiled is None
    assert calls == [(1100, 1000)] * 2
    for a, b in zip(eager[0], snapshot(mixed)[0], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-13, atol=1e-15)


def test_deepcopy_and_pickle_leave_the_compiled_step_behind() -> None:
    """The compiled step is not state: a copy compiles its own."""
    _, opt = _mlp_run(True, range(2))
    assert opt._compiled is not None
    clone = copy.deepcopy(opt)
    assert clone._compiled is None and clone._lr_tensors == {}


@torch._dynamo.config.patch(recompile_limit=1)
def test_at_dynamos_recompile_limit_the_kernels_take_over() -> None:
    """Where the step needs more graphs than dynamo keeps (here one: a step where a parameter
    has no gradient is a second graph), it warns and goes on with the per-tensor kernels,
    with the eager numbers."""

    def run(fused: bool) -> Amos:
        model = mlp()
        opt = Amos(model.named_parameters(), lr=0.1, eta=TABLE_ETA, slot_shape=TABLE_SLOT,
                   fused=fused, momentum=0.9)
        for t in range(4):
            x, y = batch(t)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            if t == 2:
                model[2].bias.grad = None
            opt.step()
        return opt

    eager = snapshot(run(False))
    with pytest.warns(RuntimeWarning, match="recompiled too often"):
        fused = run(True)
    assert fused._compiled is False
    for a, b in zip(eager[0], snapshot(fused)[0], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("slot_shape", [None, (1200, 1)], ids=["full", "rows"])
def test_kernels_shared_by_optimizers_take_each_ones_hyperparameters(slot_shape, fused_calls
                                                                      ) -> None:
    """A per-tensor kernel serves every optimizer of the process: each must step with its own
    momentum, beta and sign, never with the numbers a kernel was first compiled with."""
    shape = (6, 100000) if slot_shape is None else (1200, 1000)
    for momentum, beta, maximize in ((0.9, 0.999, False), (0.5, 0.99, True), (0.7, 0.98, False)):
        stepped = []
        for fused in (True, False):
            generator = torch.Generator().manual_seed(0)
            p = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64, generator=generator))
            opt = Amos([("w", p)], lr=0.05, eta=0.5, clip_value=1.0, momentum=momentum,
                       beta=beta, maximize=maximize, fused=fused,
                       slot_shape=lambda n, s: s if slot_shape is None else slot_shape)
            for _ in range(2):
                p.grad = torch.randn(shape, dtype=torch.float64, generator=generator)
                opt.step()
            stepped.append(p.detach().clone())
        torch.testing.assert_close(stepped[0], stepped[1], rtol=1e-12, atol=1e-14)
    kernel = "full_slot_update" if slot_shape is None else "update"
    assert len(fused_calls[kernel]) == 6  # 3 settings x 2 steps, fused only
