"""``Amos(nonfinite="skip")``: a step with a non-finite gradient changes no parameter and no state
tensor, bit for bit, on every way the router can pick (forced by size, layout and options, as in
``test_routes.py``); it is counted, reported without a host sync in the step, survives a
``state_dict`` round trip; and on finite steps "skip" computes exactly what "raise" does."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch

from amosopt.torch import Amos
from amosopt.torch._routes import Update

#: name -> (shape, slot shape or None for full size), each forcing a way (comment) with the
#: default options; ``foreach=False`` takes the loop way for all, ``fused=True`` the kernels
PARAMS = {
    "small_rows": ((64, 256), (64, 1)),  # flat coefficients, batched update
    "small_full": ((64, 64), None),  # flat, batched (full-size slots)
    "scalar": ((), ()),  # a 0-d parameter: flat, batched
    "mid_full": ((64, 256), None),  # one by one (full-size slots, not flat)
    "batched": ((20000, 3), (20000, 1)),  # batched, slots not flat
    "big_full": ((3, 70001), None),  # full step in blocks (fused: the compiled full step)
    "big_full_t": ((256, 300), None),  # transposed: full step, not in blocks
    "big_rows": ((1100, 1000), (1100, 1)),  # one by one, flat (fused: the compiled update)
    "tall": ((50000, 8), (50000, 1)),  # one by one, slots not flat
}

WAYS = {
    "default": {Update.BATCHED, Update.ALONE, Update.FULL_STEP, Update.FULL_STEP_BLOCKS},
    "loop": {Update.LOOP},
    "fused": {Update.BATCHED, Update.ALONE, Update.FULL_STEP, Update.FULL_STEP_KERNEL,
              Update.KERNEL},
}


def make(dtype: torch.dtype = torch.float64, names=tuple(PARAMS), **options) -> Amos:
    gen = torch.Generator().manual_seed(0)
    params = []
    for name in names:
        shape, _ = PARAMS[name]
        x = torch.randn(shape[::-1] if name == "big_full_t" else shape, generator=gen,
                        dtype=torch.float64)
        p = torch.nn.Parameter(x.to(dtype))
        if name == "big_full_t":
            p = torch.nn.Parameter(x.to(dtype).t())  # non-contiguous
            assert not p.is_contiguous()
        params.append((name, p))
    slots = {rf"{name}$": ("SHAPE" if slot is None else str(slot))
             for name, (_, slot) in PARAMS.items()}
    return Amos(params, lr=0.05, eta=0.5, slot_shape=slots, **options)


def set_grads(opt: Amos, t: int, bad: str | None = None, value: float = float("nan")) -> None:
    gen = torch.Generator().manual_seed(100 + t)
    for name, p in zip(opt.param_groups[0]["param_names"], opt.param_groups[0]["params"]):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        if name == bad:
            g.view(-1)[g.numel() // 2] = value
        p.grad = g


def step(opt: Amos, t: int, **bad) -> None:
    set_grads(opt, t, **bad)
    torch.manual_seed(t)  # stochastic rounding draws the same numbers in every run
    opt.step()


def state_of(opt: Amos, drop=("skipped",)) -> tuple[list[torch.Tensor], list[dict]]:
    params = opt.param_groups[0]["params"]
    return ([p.detach().clone() for p in params],
            [{k: v for k, v in copy.deepcopy(opt.state[p]).items() if k not in drop}
             for p in params])


def assert_identical(a: tuple, b: tuple) -> None:
    """Bit for bit (torch.equal; NaN would fail), dtypes included."""
    for x, y in zip(a[0], b[0], strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)
    for s, u in zip(a[1], b[1], strict=True):
        assert s.keys() == u.keys()
        for key, value in s.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == u[key].dtype and torch.equal(value, u[key]), key
            else:
                assert value == u[key], key


CASES = {
    "default": ({}, "default"),
    "loop": ({"foreach": False}, "loop"),
    "momentum-clip": ({"momentum": 0.9, "clip_value": 0.5}, "default"),
    "loop-momentum-maximize": ({"momentum": 0.9, "maximize": True, "foreach": False}, "loop"),
    "bf16-compensated": ({"dtype": torch.bfloat16, "rounding": "compensated",
                          "momentum": 0.9}, "default"),
    "bf16-stochastic": ({"dtype": torch.bfloat16, "rounding": "stochastic"}, "default"),
}
FUSED = {"fused": ({"fused": True, "clip_value": 0.5, "momentum": 0.9}, "fused")}


def check_skip(options: dict, ways: str, bad: str, value: float) -> Amos:
    options = dict(options)
    dtype = options.pop("dtype", torch.float64)
    opt = make(dtype, nonfinite="skip", **options)
    for t in range(2):
        step(opt, t)
    assert {r.route.update for r in opt._records.values()} == WAYS[ways]
    before = state_of(opt)
    step(opt, 2, bad=bad, value=value)
    assert_identical(state_of(opt), before)
    for p in opt.param_groups[0]["params"]:
        assert opt.state[p]["skipped"].item() == 1 and opt.state[p]["step"].item() == 2
    step(opt, 3)
    # the skipped step is as if it had not been: the same as a run without it
    reference = make(dtype, nonfinite="skip", **options)
    for t in (0, 1, 3):
        step(reference, t)
    assert_identical(state_of(opt), state_of(reference))
    return opt


@pytest.mark.parametrize("bad, value", [("small_rows", float("nan")), ("big_full", float("inf")),
                                        ("scalar", float("-inf"))])
@pytest.mark.parametrize("case", list(CASES))
def test_a_non_finite_step_changes_nothing_on_every_way(case: str, bad: str, value: float
                                                        ) -> None:
    options, ways = CASES[case]
    if "clip_value" in options:  # clipping turns an inf into clip_value (see below)
        value = float("nan")
    check_skip(options, ways, bad, value)


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["big_rows", "big_full"])
def test_a_non_finite_step_changes_nothing_on_the_compiled_ways(bad: str) -> None:
    options, ways = FUSED["fused"]
    check_skip(options, ways, bad, float("nan"))


#: the column factor ``u`` of ``second_moment="row-col"``: the parameter's shape with the slot's
#: kept axes set to 1 (Adafactor's column mean), for the factored parameters of ``PARAMS``;
#: full-size and one-entry slots have none
COLUMN_SHAPES = {"small_rows": (1, 256), "batched": (1, 3), "big_rows": (1, 1000), "tall": (1, 8)}


@pytest.mark.parametrize("bad, value", [("small_rows", float("nan")), ("tall", float("inf"))])
@pytest.mark.parametrize("case", ["default", "loop", "momentum-clip"])
def test_a_non_finite_step_leaves_the_column_factors_unchanged(case: str, bad: str, value: float
                                                               ) -> None:
    """``second_moment="row-col"`` adds ``u``, which the skip keeps without naming it: the
    skipped step leaves it (and all else) bit for bit, and a finite step does change it."""
    options, ways = CASES[case]
    if "clip_value" in options:
        value = float("nan")
    opt = check_skip({**options, "second_moment": "row-col"}, ways, bad, value)
    names = opt.param_groups[0]["param_names"]
    for name, p in zip(names, opt.param_groups[0]["params"], strict=True):
        state = opt.state[p]
        assert ("u" in state) == (name in COLUMN_SHAPES), name
        if name in COLUMN_SHAPES:
            assert tuple(state["u"].shape) == COLUMN_SHAPES[name]
    before = state_of(opt)
    step(opt, 4)
    after = state_of(opt)
    for name, s, u in zip(names, before[1], after[1], strict=True):
        if name in COLUMN_SHAPES:
            assert not torch.equal(s["u"], u["u"]), name


def test_init_group_makes_the_column_factors() -> None:
    """The state that ``_init_group`` makes before a compiled "skip" step is traced includes
    ``u`` (zero, column-shaped, the slots' dtype) where row-col gives one, and the step on that
    state equals the eager one's."""
    opt = make(nonfinite="skip", second_moment="row-col")
    set_grads(opt, 0)
    opt._init_group()
    names = opt.param_groups[0]["param_names"]
    for name, p in zip(names, opt.param_groups[0]["params"], strict=True):
        state = opt.state[p]
        assert ("u" in state) == (name in COLUMN_SHAPES), name
        assert "skipped" in state and state["step"].device == p.device
        if name in COLUMN_SHAPES:
            u = state["u"]
            assert tuple(u.shape) == COLUMN_SHAPES[name] and u.dtype == torch.float64
            assert not u.any()
    reference = make(nonfinite="skip", second_moment="row-col")
    for run in (opt, reference):
        for t in range(2):
            step(run, t, bad="tall" if t == 1 else None)
    assert_identical(state_of(opt), state_of(reference))
    assert opt.skipped_steps() == 1


def test_clipped_inf_is_a_step_in_both_policies() -> None:
    """With clip_value an inf gradient is clipped (as in the reference): not skipped."""
    runs = {}
    for policy in ("raise", "skip"):
        opt = runs[policy] = make(nonfinite=policy, clip_value=0.5)
        for t in range(3):
            step(opt, t, bad="small_rows" if t == 1 else None, value=float("inf"))
    assert_identical(state_of(runs["skip"]), state_of(runs["raise"]))
    assert runs["skip"].skipped_steps() == 0


@pytest.mark.parametrize("case", [*CASES, pytest.param("fused", marks=pytest.mark.slow)])
def test_finite_steps_equal_raise_exactly(case: str) -> None:
    options, _ = {**CASES, **FUSED}[case]
    options = dict(options)
    dtype = options.pop("dtype", torch.float64)
    runs = {policy: make(dtype, nonfinite=policy, **options) for policy in ("raise", "skip")}
    for opt in runs.values():
        for t in range(4):
            step(opt, t)
    assert_identical(state_of(runs["skip"]), state_of(runs["raise"]))
    for p in runs["skip"].param_groups[0]["params"]:
        assert runs["skip"].state[p]["skipped"].item() == 0


def test_a_skipped_first_step_leaves_fresh_state() -> None:
    opt = make(nonfinite="skip", momentum=0.9)
    before = state_of(opt)
    step(opt, 0, bad="big_full")
    assert_identical((state_of(opt)[0], []), (before[0], []))
    for p in opt.param_groups[0]["params"]:
        s = opt.state[p]
        assert s["step"].item() == 0 and s["skipped"].item() == 1
        assert all(not s[k].any() for k in ("v", "b", "momentum_buffer"))
    step(opt, 1)
    reference = make(nonfinite="skip", momentum=0.9)
    step(reference, 1)
    assert_identical(state_of(opt), state_of(reference))


def test_raise_still_raises_and_names_the_parameter() -> None:
    opt = make(names=("small_rows", "tall"))
    step(opt, 0)
    before = state_of(opt)
    with pytest.raises(FloatingPointError, match="'tall'"):
        step(opt, 1, bad="tall")
    assert_identical(state_of(opt), before)
    assert "skipped" not in opt.state[opt.param_groups[0]["params"][0]]


def test_skips_are_reported_when_read_not_in_the_step() -> None:
    opt = make(names=("small_rows", "scalar"), nonfinite="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from the step itself
        step(opt, 0)
        step(opt, 1, bad="scalar")
        step(opt, 2, bad="small_rows")
        step(opt, 3)
    assert opt.skipped_steps() == 2
    with pytest.warns(RuntimeWarning, match=r"skipped 2 step\(s\).*2 in all"):
        numbers = opt.diagnostics()
    assert numbers["skipped"] == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # told already
        opt.diagnostics()
        opt.state_dict()
    step(opt, 4, bad="small_rows")
    with pytest.warns(RuntimeWarning, match=r"skipped 1 step\(s\).*3 in all"):
        opt.state_dict()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_state_dict_round_trip_and_resume(dtype: torch.dtype) -> None:
    names = ("small_rows", "scalar", "big_full", "tall")
    opt = make(dtype, names, nonfinite="skip", momentum=0.9)
    step(opt, 0)
    step(opt, 1, bad="big_full")
    with pytest.warns(RuntimeWarning):
        saved = opt.state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    resumed = make(dtype, names, nonfinite="skip", momentum=0.9)
    for p, q in zip(resumed.param_groups[0]["params"], opt.param_groups[0]["params"]):
        p.data.copy_(q.data)
    resumed.load_state_dict(loaded)
    assert_identical(state_of(resumed, drop=()), state_of(opt, drop=()))
    for p in resumed.param_groups[0]["params"]:
        assert resumed.state[p]["skipped"].dtype == torch.float32
    assert resumed.skipped_steps() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported before it was saved
        resumed.diagnostics()
    for run in (opt, resumed):
        step(run, 2)
        step(run, 3, bad="tall")
        step(run, 4)
    assert_identical(state_of(resumed, drop=()), state_of(opt, drop=()))


def test_a_checkpoint_without_the_option_loads_and_keeps_the_policy() -> None:
    """A state_dict written before ``nonfinite`` existed (no key, no ``skipped``) loads into a
    "skip" optimizer, which stays "skip"; the loading optimizer's policy wins either way."""
    names = ("small_rows", "scalar")
    old = make(names=names)
    step(old, 0)
    saved = copy.deepcopy(old.state_dict())  # torch's state_dict shares the state tensors
    for group in saved["param_groups"]:
        del group["nonfinite"]
    new = make(names=names, nonfinite="skip")
    for p, q in zip(new.param_groups[0]["params"], old.param_groups[0]["params"]):
        p.data.copy_(q.data)
    new.load_state_dict(saved)
    assert new.param_groups[0]["nonfinite"] == "skip"
    step(new, 1, bad="scalar")
    step(new, 2)
    step(old, 2)
    assert_identical(state_of(new), state_of(old))
    assert new.skipped_steps() == 1
    back = make(names=names)  # a "skip" checkpoint into a "raise" optimizer
    with pytest.warns(RuntimeWarning):
        back.load_state_dict(copy.deepcopy(new.state_dict()))
    assert back.param_groups[0]["nonfinite"] == "raise"
    with pytest.raises(FloatingPointError):
        step(back, 3, bad="scalar")


def test_bad_policies_are_rejected() -> None:
    with pytest.raises(ValueError, match="Invalid nonfinite.*'raise', 'skip'"):
        make(nonfinite="ignore")
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"nonfinite \(param group 1\).*every param group"):
        Amos([{"params": [p]}, {"params": [q], "nonfinite": "skip"}], lr=0.1, eta=1.0)


# ------------------------------------------------------------------------------------------------
# torch.amp.GradScaler


def amp_model(dtype: torch.dtype) -> tuple[torch.nn.Module, Amos]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    model = model.to(dtype)
    opt = Amos(model.named_parameters(), lr=0.05, eta=0.5, nonfinite="skip", momentum=0.9,
               slot_shape={r"0\.weight": "(SHAPE[0], 1)", r".*": "()"})
    return model, opt


def amp_loss(model: torch.nn.Module, t: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(t)
    dtype = next(model.parameters()).dtype
    x, y = (torch.randn(16, n, generator=gen).to(dtype) for n in (5, 3))
    return torch.nn.functional.mse_loss(model(x), y).float()


def test_grad_scaler_passes_its_scale_and_overflow_flag_to_the_step() -> None:
    """GradScaler takes its path for optimizers that unscale and skip themselves (no
    ``.item()`` of its overflow flag): the step gets ``grad_scale`` and ``found_inf``. Scaled by
    a power of 2 and unscaled, float32 gradients are exact, so the steps equal unscaled ones
    bit for bit; a forced overflow is skipped and halves the scale."""
    model, opt = amp_model(torch.float32)
    plain_model, plain = amp_model(torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    seen = []
    step = opt.step

    def recording_step(*args, **kwargs):
        seen.append((getattr(opt, "grad_scale", None), getattr(opt, "found_inf", None)))
        return step(*args, **kwargs)

    opt.step = recording_step
    assert opt._step_supports_amp_scaling and not make(names=("scalar",))._step_supports_amp_scaling
    for t in range(3):
        for m, o in ((model, opt), (plain_model, plain)):
            o.zero_grad()
            loss = amp_loss(m, t)
            if o is opt:
                scaler.scale(loss).backward()
                if t == 2:
                    model[2].weight.grad[0, 0] = float("inf")  # an overflow
                    before, scale = state_of(opt), scaler.get_scale()
                scaler.step(opt)
                scaler.update()
            elif t < 2:
                loss.backward()
                o.step()
        if t < 2:
            assert_identical(state_of(opt), state_of(plain))
    assert_identical(state_of(opt), before)
    assert scaler.get_scale() == scale / 2
    assert opt.skipped_steps() == 1
    assert all(s is not None and f is not None for s, f in seen) and len(seen) == 3
    assert seen[0][0].item() == 2.0**10 and seen[2][1].item() == 1.0


def test_grad_scaler_with_float16_parameters_skips_overflows() -> None:
    """Float16 parameters and gradients: a scale of 2**24 overflows float16 gradients at once;
    those steps are skipped, the scale halves each time, and training then proceeds."""
    model, opt = amp_model(torch.float16)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    start = state_of(opt)
    scales = []
    for t in range(12):
        opt.zero_grad()
        scaler.scale(amp_loss(model, t)).backward()
        overflow = any(not torch.isfinite(p.grad).all() for p in model.parameters())
        scaler.step(opt)
        scaler.update()
        scales.append((scaler.get_scale(), overflow))
        if t == 0:
            assert overflow
            assert_identical((state_of(opt)[0], []), (start[0], []))
            assert all(s["step"].item() == 0 for s in opt.state.values())
    skipped = sum(overflow for _, overflow in scales)
    assert 0 < skipped < 12 and opt.skipped_steps() == skipped
    assert scales[0][0] == 2.0**23
    for p, p0 in zip(model.parameters(), start[0], strict=True):
        assert opt.state[p]["step"].item() == 12 - skipped
        assert opt.state[p]["v"].dtype == torch.float32
        assert torch.isfinite(p).all() and not torch.equal(p, p0)


def test_grad_scaler_with_raise_takes_its_own_path() -> None:
    """With "raise", GradScaler unscales and checks on the host itself (its default path), and
    skips an overflowed step without calling it: nothing raises, nothing changes."""
    model, _ = amp_model(torch.float32)
    opt = Amos(model.parameters(), lr=0.05, eta=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(amp_loss(model, 0)).backward()
    scaler.step(opt)
    scaler.update()
    before = state_of(opt, drop=())
    opt.zero_grad()
    scaler.scale(amp_loss(model, 1)).backward()
    model[0].bias.grad[0] = float("nan")
    scaler.step(opt)
    scaler.update()
    assert_identical(state_of(opt, drop=()), before)
    assert scaler.get_scale() == 2.0**9
