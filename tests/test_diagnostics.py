"""amosopt.diagnostics: each number against the NumPy transcription of Algorithm 1 and closed
forms (a constant gradient, where v_hat = g^2 exactly and b follows its recursion)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from amosopt import diagnostics
from tests.oracles import NumpyAmos

XI, ETA, BETA = 0.05, 0.3, 0.9


def constant_gradient_run(steps: int, g: float = 0.7) -> NumpyAmos:
    amos = NumpyAmos(eta=ETA, slot_shape=(), beta=BETA)
    theta = np.zeros(5)
    for _ in range(steps):
        theta = amos.step(theta, np.full(5, g), XI)
    return amos


def test_numbers_of_a_constant_gradient():
    g = 0.7
    amos = constant_gradient_run(200, g)
    got = diagnostics.variable(xi=XI, eta=ETA, beta=BETA, count=amos.t, v=amos.v, b=amos.b,
                               c_coef=0.25, d_coef=0.25, extra_l2=0.01, epsilon=2**-125, xp=np,
                               grad=np.array([0.5, -2.0, 1.5, 0.1]), clip_value=1.0)
    b = float(amos.b)
    d = 1 / (1 + 0.25 * math.sqrt(XI * ETA) * b)
    c = (1 + 0.25 * math.sqrt(XI) * b) ** -0.5
    assert float(amos.v) / (1 - BETA**200) == pytest.approx(g * g, rel=1e-12)  # v_hat = g^2
    assert got["lr"] == pytest.approx(XI * ETA * d / g, rel=1e-12)
    assert got["step"] == pytest.approx(XI * ETA * d, rel=1e-12)
    assert got["d_t"] == pytest.approx(d, rel=1e-12) and got["c_t"] == pytest.approx(c)
    assert got["weight_decay"] == pytest.approx(0.5 * c * XI**2 + 0.01, rel=1e-12)
    assert got["decay"] == pytest.approx(1 - d, rel=1e-12) and got["b"] == pytest.approx(b)
    assert got["clip_fraction"] == 0.5  # 2 of 4 entries beyond 1
    assert 0 < got["decay"] < 0.2


@pytest.mark.parametrize("steps_done", [0, 300, 1500])
def test_decay_onset_is_when_the_step_has_dropped_another_tenth(steps_done):
    # continue the constant-gradient run until d has fallen by 10% from now: the recursion
    # itself, in discrete steps, is the oracle of the closed form
    amos = constant_gradient_run(steps_done)
    b_now = float(amos.b) if steps_done else 0.0
    d_now = 1 / (1 + 0.25 * math.sqrt(XI * ETA) * b_now)
    onset = diagnostics.steps_until_drop(XI, ETA, b_now)
    theta, more = np.zeros(5), 0
    while True:
        theta = amos.step(theta, np.full(5, 0.7), XI)
        more += 1
        if 1 / (1 + 0.25 * math.sqrt(XI * ETA) * float(amos.b)) <= 0.9 * d_now:
            break
    assert onset == pytest.approx(more, rel=0.02, abs=2)


def test_flatten_keys_and_summaries():
    per_name = {"a": {"lr": 1.0, "b": 0.0}, "b.c": {"lr": 3.0, "b": 2.0},
                "d": {"lr": 2.0, "b": 1.0}}
    flat = diagnostics.flatten(per_name)
    assert flat["lr/a"] == 1.0 and flat["lr/b.c"] == 3.0
    assert (flat["lr/min"], flat["lr/median"], flat["lr/max"]) == (1.0, 2.0, 3.0)
    assert all(isinstance(v, float) for v in flat.values())
    summary = diagnostics.flatten(per_name, per_parameter=False)
    assert set(summary) == {f"{k}/{s}" for k in ("lr", "b") for s in ("min", "median", "max")}


def test_a_finished_cooldown_gives_finite_numbers_and_an_infinite_onset():
    amos = constant_gradient_run(50)
    with np.errstate(all="raise"):
        got = diagnostics.variable(xi=0.0, eta=ETA, beta=BETA, count=amos.t, v=amos.v,
                                   b=amos.b, c_coef=0.25, d_coef=0.25, extra_l2=0.0,
                                   epsilon=2**-125, xp=np)
    assert got["step"] == 0.0 and got["lr"] == 0.0 and got["weight_decay"] == 0.0
    assert got["decay_onset"] == math.inf
    assert all(not np.isnan(value) for value in got.values())
