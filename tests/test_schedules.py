"""amosopt.schedules.WSD: the warmup-stable-decay multiplier against its closed form, and the
argument checks shared by both backends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from amosopt.schedules import WSD


def closed_form(s: int, total: int, warmup: int, cooldown: int, shape: str) -> float:
    """The multiplier written out case by case (Hägele et al. 2024, arXiv 2405.18392, eq. 1)."""
    if s >= total:
        return 0.0
    if s >= total - cooldown:
        fraction = (s - (total - cooldown)) / cooldown
        return 1.0 - fraction if shape == "linear" else 1.0 - math.sqrt(fraction)
    return min(1.0, (s + 1) / warmup) if warmup else 1.0


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
@pytest.mark.parametrize("total,warmup,cooldown", [
    (10, 0, 0), (10, 2, 4), (10, 0, 10), (10, 3, 7), (37, 5, None), (1, 0, 1), (1000, 100, 200)])
def test_multiplier_matches_closed_form(total, warmup, cooldown, shape):
    wsd = WSD(total, warmup, cooldown, shape)
    expected_cooldown = round(0.2 * total) if cooldown is None else cooldown
    assert wsd.cooldown_steps == expected_cooldown
    steps = np.arange(total + 5)
    got = wsd.multiplier(steps, np)
    want = [closed_form(int(s), total, warmup, wsd.cooldown_steps, shape) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert got[total - 1] > 0 or wsd.cooldown_steps == 0 or total == 1
    assert np.all(got[total:] == 0.0)  # exactly zero from the budget on, never negative


def test_scalar_step_gives_a_scalar():
    wsd = WSD(10, 2, 4)
    assert float(wsd.multiplier(0, np)) == 0.5
    assert float(wsd.multiplier(8, np)) == 0.5


def test_default_cooldown_is_capped_by_the_warmup():
    assert WSD(10, warmup_steps=9).cooldown_steps == 1
    assert WSD(10, warmup_steps=10).cooldown_steps == 0


@pytest.mark.parametrize("kwargs,name", [
    ({"total_steps": 0}, "total_steps"),
    ({"total_steps": -5}, "total_steps"),
    ({"total_steps": 2.5}, "total_steps"),
    ({"total_steps": True}, "total_steps"),
    ({"total_steps": 10, "warmup_steps": -1}, "warmup_steps"),
    ({"total_steps": 10, "warmup_steps": 11}, "warmup_steps"),
    ({"total_steps": 10, "cooldown_steps": -1}, "cooldown_steps"),
    ({"total_steps": 10, "cooldown_steps": 11}, "cooldown_steps"),
    ({"total_steps": 10, "warmup_steps": 4, "cooldown_steps": 7}, "cooldown_steps"),
    ({"total_steps": 10, "cooldown": "cosine"}, "cooldown"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}:"):
        WSD(**kwargs)
