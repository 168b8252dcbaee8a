"""amosopt.torch.wsd_schedule: values, any torch optimizer, state_dict round trips through a file
with torch.load's defaults, and the anytime use (a cooldown branched from a constant-rate
checkpoint equals the uninterrupted run)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from amosopt.schedules import WSD
from amosopt.torch import Amos, WSDSchedule, wsd_schedule
from tests.test_torch.conftest import mlp, train


def rates(opt: torch.optim.Optimizer, sched, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
@pytest.mark.parametrize("make", [
    lambda p: torch.optim.SGD(p, lr=0.3),
    lambda p: torch.optim.AdamW(p, lr=0.3),
    lambda p: Amos(p, lr=0.3, eta=0.5),
])
def test_rate_is_base_times_closed_form_multiplier(make, shape):
    w = torch.zeros(3, requires_grad=True)
    w.grad = torch.ones(3)
    opt = make([w])
    sched = wsd_schedule(opt, 20, warmup_steps=3, cooldown_steps=6, cooldown=shape)
    got = rates(opt, sched, 25)
    # closed form, written independently of amosopt.schedules
    want = []
    for s in range(25):
        if s >= 20:
            want.append(0.0)
        elif s >= 14:
            f = (s - 14) / 6
            want.append(0.3 * (1 - f if shape == "linear" else 1 - f ** 0.5))
        else:
            want.append(0.3 * min(1.0, (s + 1) / 3))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got[-1] == 0.0


def test_every_group_keeps_its_own_base_rate():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}])
    sched = wsd_schedule(opt, 4, cooldown_steps=2)
    for _ in range(3):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])


def test_state_dict_round_trip_through_a_file():
    w = torch.zeros(2, requires_grad=True)
    opt = Amos([w], lr=0.1, eta=1.0)
    sched = wsd_schedule(opt, 10, warmup_steps=2, cooldown_steps=3, cooldown="1-sqrt")
    for _ in range(4):
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)  # weights_only=True, torch's default
    # a scheduler built with other arguments takes the saved ones
    opt2 = Amos([torch.zeros(2, requires_grad=True)], lr=0.1, eta=1.0)
    sched2 = wsd_schedule(opt2, 99)
    sched2.load_state_dict(state)
    assert (sched2.total_steps, sched2.warmup_steps, sched2.cooldown_steps, sched2.cooldown) == (
        10, 2, 3, "1-sqrt")
    assert sched2.last_epoch == 4
    left = [sched.multiplier(s) for s in range(4, 12)]
    assert [sched2.multiplier(s) for s in range(4, 12)] == left


@pytest.mark.parametrize("kwargs,name", [
    ({"total_steps": 0}, "total_steps"),
    ({"total_steps": 10, "warmup_steps": -2}, "warmup_steps"),
    ({"total_steps": 10, "cooldown_steps": 20}, "cooldown_steps"),
    ({"total_steps": 10, "cooldown": "cos"}, "cooldown"),
])
def test_bad_arguments(kwargs, name):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        wsd_schedule(opt, **kwargs)
    assert opt.param_groups[0]["lr"] == 1.0  # nothing touched


def test_cooldown_branched_from_a_constant_rate_checkpoint_equals_the_uninterrupted_run(tmp_path):
    """The anytime recipe: train at a constant rate, save, and later finish the checkpoint with a
    cooldown of its own; equal, bit for bit, to a run scheduled with that cooldown from the
    start."""
    constant, cooldown = 12, 5
    # uninterrupted: one WSD schedule over the whole run
    model_a = mlp()
    opt_a = Amos(model_a.parameters(), lr=0.05, eta=0.5, momentum=0.9)
    sched_a = wsd_schedule(opt_a, constant + cooldown, cooldown_steps=cooldown)
    train(model_a, opt_a, range(constant + cooldown), sched_a)

    # anytime: constant rate, no scheduler, checkpoint to a file
    model_b = mlp()
    opt_b = Amos(model_b.parameters(), lr=0.05, eta=0.5, momentum=0.9)
    train(model_b, opt_b, range(constant))
    torch.save({"model": model_b.state_dict(), "optimizer": opt_b.state_dict()},
               tmp_path / "constant.pt")

    # later: a fresh process loads it and runs the cooldown
    checkpoint = torch.load(tmp_path / "constant.pt")
    model_c = mlp(seed=1)
    model_c.load_state_dict(checkpoint["model"])
    opt_c = Amos(model_c.parameters(), lr=0.05, eta=0.5, momentum=0.9)
    opt_c.load_state_dict(checkpoint["optimizer"])
    sched_c = wsd_schedule(opt_c, constant + cooldown, cooldown_steps=cooldown,
                           last_epoch=constant - 1)
    assert opt_c.param_groups[0]["lr"] == pytest.approx(0.05)  # the cooldown's first step: m=1
    train(model_c, opt_c, range(constant, constant + cooldown), sched_c)

    assert opt_c.param_groups[0]["lr"] == 0.0
    for pa, pc in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(pa, pc)
    # and the cooldown mattered: without it the run ends elsewhere
    model_d = mlp()
    opt_d = Amos(model_d.parameters(), lr=0.05, eta=0.5, momentum=0.9)
    train(model_d, opt_d, range(constant + cooldown))
    assert not all(torch.equal(pa, pd) for pa, pd in
                   zip(model_a.parameters(), model_d.parameters(), strict=True))


def test_multiplier_method_agrees_with_the_shared_rule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = WSDSchedule(opt, 30, warmup_steps=4, cooldown_steps=9, cooldown="1-sqrt")
    wsd = WSD(30, 4, 9, "1-sqrt")
    assert [sched.multiplier(s) for s in range(35)] == [
        float(wsd.multiplier(s, np)) for s in range(35)]


def test_warmup_schedule_holds_after_the_warmup_and_round_trips():
    from amosopt.torch import warmup_schedule

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    sched = warmup_schedule(opt, 4)
    assert rates(opt, sched, 10) == pytest.approx([0.05, 0.1, 0.15, 0.2] + [0.2] * 6)
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer)["last_epoch"] == 10  # weights_only=True: plain data
    assert rates(opt, warmup_schedule(opt, 0), 3) == pytest.approx([0.2] * 3)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="Invalid warmup_steps"):
            warmup_schedule(opt, bad)
