"""amosopt.torch diagnostics: against the shared formulas on the NumPy oracle's state, names or
indices, nothing for parameters not yet stepped, and no change to the optimizer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from amosopt import diagnostics as shared
from amosopt.torch import Amos
from amosopt.torch.diagnostics import decay_onset, diagnostics
from tests.oracles import NumpyAmos


def test_matches_the_oracle_state_and_changes_nothing():
    torch.manual_seed(0)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    opt = Amos([("w", w), ("b", b)], lr=0.05, eta={"w": 0.3, "b": 0.5},
               slot_shape={"w": "(SHAPE[0], 1)", "b": "()"}, beta=0.9, momentum=0.9,
               clip_value=1.0, extra_l2=0.01)
    oracles = {"w": NumpyAmos(eta=0.3, slot_shape=(5, 1), beta=0.9, momentum=0.9,
                              clip_value=1.0, extra_l2=0.01),
               "b": NumpyAmos(eta=0.5, slot_shape=(), beta=0.9, momentum=0.9, clip_value=1.0,
                              extra_l2=0.01)}
    values = {"w": w.detach().numpy().copy(), "b": b.detach().numpy().copy()}
    rng = np.random.default_rng(0)
    for _ in range(25):
        for name, p in (("w", w), ("b", b)):
            g = rng.normal(size=p.shape) * 1.3
            p.grad = torch.from_numpy(g)
            values[name] = oracles[name].step(values[name], g, 0.05)
        opt.step()
    before = copy.deepcopy(opt.state_dict())
    got = diagnostics(opt)
    for name, oracle in oracles.items():
        want = shared.variable(xi=0.05, eta=oracle.eta, beta=0.9, count=oracle.t, v=oracle.v,
                               b=oracle.b, c_coef=0.25, d_coef=0.25, extra_l2=0.01,
                               epsilon=2**-125, xp=np,
                               grad=dict(w=w, b=b)[name].grad.numpy(), clip_value=1.0)
        for key, value in want.items():
            assert got[f"{key}/{name}"] == pytest.approx(value, rel=1e-9), (key, name)
    assert decay_onset(opt) == {n: got[f"decay_onset/{n}"] for n in ("w", "b")}
    after = opt.state_dict()
    assert all(torch.equal(before["state"][i][k], after["state"][i][k])
               for i in before["state"] for k in before["state"][i]
               if torch.is_tensor(before["state"][i][k]))
    summary = diagnostics(opt, per_parameter=False)
    assert "lr/w" not in summary and summary["lr/max"] == max(got["lr/w"], got["lr/b"])


def test_unnamed_parameters_are_indexed_and_unstepped_ones_left_out():
    a = torch.ones(3, requires_grad=True)
    c = torch.ones(2, requires_grad=True)
    opt = Amos([a, c], lr=0.1, eta=1.0)
    assert diagnostics(opt) == {}
    a.grad = torch.ones(3)
    opt.step()
    got = diagnostics(opt)
    assert "lr/0" in got and "lr/1" not in got and "clip_fraction/0" not in got
