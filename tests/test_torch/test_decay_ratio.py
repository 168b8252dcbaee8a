"""``decay_ratio`` (rho): the decay of Amos runs on the global rate rho * xi. Checked against the
NumPy transcription of the paper's update with rho in gamma_t and c_t, on every path of the
optimizer, and against the closed-form equivalence rho = 1/k <=> eta x k with xi / k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amosopt.torch import Amos
from tests.test_torch.conftest import check_large_tensors_against_numpy
from tests.test_torch.parity import (ETAS, max_relative_error, resolved_slot_shape, run_numpy,
                                     run_torch)

RHOS = [0.25, 2.0]


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("slot", ["full", "rows", "cols", "scalar"])
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_the_numpy_transcription(rho: float, slot: str, foreach: bool) -> None:
    options = dict(decay_ratio=rho, momentum=0.9, clip_value=1.5, beta=0.9)
    got, _ = run_torch(30, slot, foreach=foreach, **options)
    want = run_numpy(30, slot, **options)
    assert max_relative_error(got, want) < 1e-12
    # and it changes the result: rho is not ignored
    assert max_relative_error(run_numpy(30, slot, **{**options, "decay_ratio": 1.0}), want) > 1e-6


@pytest.mark.parametrize("foreach", [False, True])
def test_large_tensors_match_the_numpy_transcription(foreach: bool) -> None:
    check_large_tensors_against_numpy(foreach=foreach, decay_ratio=0.25)


def test_compiled_kernels_match_the_numpy_transcription() -> None:
    pytest.importorskip("torch._inductor")
    check_large_tensors_against_numpy(fused=True, decay_ratio=0.25)


@pytest.mark.parametrize("k", [2.0, 4.0])
@pytest.mark.parametrize("slot", ["rows", "scalar"])
def test_one_over_k_is_eta_times_k_with_xi_over_k(k: float, slot: str) -> None:
    """The step xi * eta * d_t and sqrt(xi * eta) in d_t are unchanged by (eta k, xi / k);
    xi^2 in gamma_t and sqrt(xi) in c_t become (xi / k)^2 and sqrt(xi / k): rho = 1/k."""
    def run(lr: float, eta_scale: float, rho: float) -> dict[str, np.ndarray]:
        params = {n: torch.nn.Parameter(torch.tensor(np.linspace(-1, 1, max(1, int(np.prod(s))))
                                                     .reshape(s))) for n, s in
                  {"w": (6, 4), "bias": (5,)}.items()}
        opt = Amos(list(params.items()), lr=lr, eta=lambda n, s: eta_scale * ETAS[n],
                   slot_shape=lambda n, s: resolved_slot_shape(slot, s), decay_ratio=rho,
                   momentum=0.9)
        for t in range(1, 40):
            for n, p in params.items():
                p.grad = torch.sin(3.0 * p.detach() + t) + 0.1 * t * p.detach()
            opt.step()
        return {n: p.detach().numpy() for n, p in params.items()}

    assert max_relative_error(run(0.05, 1.0, 1.0 / k), run(0.05 / k, k, 1.0)) < 1e-12


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "x"])
def test_invalid_values_name_the_argument(bad) -> None:
    with pytest.raises(ValueError, match="decay_ratio"):
        Amos([torch.nn.Parameter(torch.ones(2))], lr=0.1, eta=1.0, decay_ratio=bad)


def test_a_checkpoint_from_before_the_option_loads_with_the_papers_value() -> None:
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = Amos([p], lr=0.1, eta=1.0)
    p.grad = torch.ones_like(p)
    opt.step()
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["decay_ratio"]
    fresh = Amos([p], lr=0.1, eta=1.0, decay_ratio=0.5)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["decay_ratio"] == 1.0
    fresh.step()  # runs


def test_diagnostics_see_the_slower_decay() -> None:
    """The onset of the step's decay (steps until d_t drops 10%) is that of (xi / k, eta k)."""
    from amosopt.diagnostics import steps_until_drop

    xi, eta, k = 0.02, 0.3, 4.0
    slow = steps_until_drop(xi, eta, 0.0, decay_ratio=1.0 / k)
    assert slow == pytest.approx(steps_until_drop(xi / k, eta * k, 0.0), rel=1e-12)
    assert slow > 10 * steps_until_drop(xi, eta, 0.0)
    p = torch.nn.Parameter(torch.ones(4, 3, dtype=torch.float64))
    opts = {rho: Amos([("w", p)], lr=xi, eta=eta, decay_ratio=rho) for rho in (1.0, 1.0 / k)}
    for opt in opts.values():
        p.grad = torch.ones_like(p)
        opt.step()
    onset = {rho: opt.diagnostics()["decay_onset/w"] for rho, opt in opts.items()}
    assert onset[1.0 / k] > 10 * onset[1.0]
