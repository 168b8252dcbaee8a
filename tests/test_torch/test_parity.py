"""amosopt.torch.Amos against the authors' jestimator and the NumPy transcription, float64."""

from __future__ import annotations

import pytest

from tests.test_torch.parity import max_relative_error, run_jestimator, run_numpy, run_torch

STEPS = 200
TOL = 1e-9

OPTIONS = {
    "defaults": {},
    "momentum": dict(momentum=0.9),
    "clip": dict(clip_value=1.5),
    "extra_l2": dict(extra_l2=0.01),
    "coefs_beta": dict(c_coef=0.4, d_coef=0.1, beta=0.95),
    "large_lr": dict(lr=0.3, beta=0.9),  # xi^2 t >> 1: b grows, so c_t and d_t decay hard
    "everything": dict(momentum=0.8, clip_value=2.0, extra_l2=0.003, c_coef=0.3, d_coef=0.2,
                       beta=0.98, epsilon=1e-30),
    "warmup": dict(schedule=lambda count: 0.1 * _min1(count / 50)),  # LambdaLR vs optax count
}


def _min1(x):
    """min(1, x) written so that it also works on a traced jax count (jestimator jits it)."""
    return (1.0 + x - abs(1.0 - x)) / 2.0


@pytest.mark.parametrize("slot", ["full", "rows", "cols", "scalar"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_matches_jestimator_and_numpy(slot: str, option: str) -> None:
    kwargs = OPTIONS[option]
    got, _ = run_torch(STEPS, slot, foreach=False, **kwargs)
    want = run_jestimator(STEPS, slot, **kwargs)
    assert max_relative_error(got, want) <= TOL
    assert max_relative_error(got, run_numpy(STEPS, slot, **kwargs)) <= TOL


@pytest.mark.parametrize("slot", ["rows", "scalar"])
def test_foreach_matches_jestimator(slot: str) -> None:
    kwargs = OPTIONS["everything"]
    got, _ = run_torch(STEPS, slot, foreach=True, **kwargs)
    assert max_relative_error(got, run_jestimator(STEPS, slot, **kwargs)) <= TOL


def test_the_problem_moves_the_decay_state() -> None:
    """Guards the parity tests against a vacuous problem: b must grow well past 0 (so c_t and d_t
    matter) and the parameters must move."""
    got, opt = run_torch(STEPS, "rows", foreach=False, **OPTIONS["large_lr"])
    b_max = max(float(s["b"].max()) for s in opt.state.values())
    assert b_max > 1.0
    from tests.test_torch.parity import initial_params

    start = initial_params()
    assert all(abs(got[n] - start[n]).max() > 1e-2 for n in start)
