"""amosopt.compare.summary.summarize on hand-made runs: the tuning rule, grid-edge flags, the
reference, steps to reach it, and the paired test against its closed form."""

import math
import statistics

import pytest

pytest.importorskip("scipy")

from amosopt.compare import summary  # noqa: E402


def _record(optimizer, value, seed, losses, budget=100, diverged=None, complete=True):
    steps = [round(budget * i / (len(losses) - 1)) for i in range(len(losses))]
    return {"key": f"{optimizer}_{value:g}_b{budget}_s{seed}", "optimizer": optimizer,
            "value": value, "budget": budget, "seed": seed, "eval_steps": steps,
            "val": [{"loss": x} for x in losses], "complete": complete,
            "diverged_at": diverged, "final_val_loss": None if diverged else losses[-1],
            "seconds_per_step": 0.1, "state_bytes": 50 if optimizer.startswith("amos") else 100}


def _results(runs, optimizers=("amos", "adamw", "adamw-wsd"), seeds=(0, 1, 2)):
    return {"config": {"budgets": [100], "seeds": list(seeds), "optimizers": list(optimizers),
                       "xi_multipliers": [0.5, 1.0, 2.0],
                       "grids": {"adamw": [1e-3, 3e-3, 1e-2], "adamw-wsd": [1e-3, 3e-3, 1e-2]}},
            "runs": runs}


def _study():
    runs = []
    # amos: multiplier 2 is best on average; its curves reach 2.4 at different evaluations
    amos = {0.5: [3.0, 3.1, 2.9], 1.0: [2.5, 2.6, 2.45], 2.0: [2.3, 2.35, 2.2]}
    for value, finals in amos.items():
        for seed, final in enumerate(finals):
            runs.append(_record("amos", value, seed, [5, 3, 2.5 - 0.01 * seed, 2.39, final]))
    # adamw: 3e-3 best (mean 2.4); 1e-2 diverges on seed 1
    adamw = {1e-3: [2.8, 2.9, 2.7], 3e-3: [2.4, 2.45, 2.35], 1e-2: [2.5, None, 2.5]}
    for value, finals in adamw.items():
        for seed, final in enumerate(finals):
            runs.append(_record("adamw", value, seed, [5, 4, 3, 2.6, final or 9],
                                diverged=60 if final is None else None))
    # adamw-wsd: its best (1e-3, mean 2.6) is worse than adamw's, and at the grid's edge
    for value, final in {1e-3: 2.6, 3e-3: 2.7, 1e-2: 2.8}.items():
        for seed in range(3):
            runs.append(_record("adamw-wsd", value, seed, [5, 4, 3, 2.8, final]))
    return runs


def test_tuned_values_edges_and_reference():
    s = summary.summarize(_results(_study()))["budgets"]["100"]
    amos, adamw, wsd = (s["optimizers"][k] for k in ("amos", "adamw", "adamw-wsd"))
    assert amos["tuned_value"] == 2.0 and amos["tuned_at_grid_edge"] is True
    assert adamw["tuned_value"] == 3e-3 and adamw["tuned_at_grid_edge"] is False
    assert adamw["mean_by_value"]["0.01"] is None  # a diverged seed makes the value infinite
    assert wsd["tuned_value"] == 1e-3 and wsd["tuned_at_grid_edge"] is True
    assert s["reference"] == "adamw (tuned)"
    labels = [e["label"] for e in s["entries"]]
    assert labels == ["amos (suggested xi)", "amos (tuned)", "adamw (tuned)",
                      "adamw-wsd (tuned)"]
    tuned = amos["tuned"]
    assert tuned["mean"] == pytest.approx(statistics.fmean([2.3, 2.35, 2.2]))
    assert tuned["sd"] == pytest.approx(statistics.stdev([2.3, 2.35, 2.2]))
    assert amos["suggested"]["value"] == 1.0 and amos["suggested"]["n"] == 3


def test_reach_is_per_seed_against_the_references_loss_of_that_seed():
    s = summary.summarize(_results(_study()))["budgets"]["100"]
    tuned = s["optimizers"]["amos"]["tuned"]
    # reference losses per seed: 2.4, 2.45, 2.35; amos curve [5, 3, 2.5 - 0.01 s, 2.39, final]
    # seed 0: 2.39 <= 2.4 at step 75; seed 1: 2.49 > 2.45, 2.39 at 75; seed 2: 2.48, 2.39 > 2.35,
    # the final 2.2 at 100
    assert tuned["reach"] == {"seeds": 3, "reached": 3,
                              "percent_mean": pytest.approx((75 + 75 + 100) / 3)}
    suggested = s["optimizers"]["amos"]["suggested"]  # finals 2.5, 2.6, 2.45
    assert suggested["reach"]["reached"] == 2  # seed 0 and 1 reach at 75; seed 2 never


def test_paired_test_matches_the_closed_form():
    s = summary.summarize(_results(_study()))["budgets"]["100"]
    test = s["optimizers"]["amos"]["tuned"]["paired_test"]
    d = [2.3 - 2.4, 2.35 - 2.45, 2.2 - 2.35]
    t = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(3))
    assert test["n"] == 3 and test["mean_difference"] == pytest.approx(statistics.fmean(d))
    assert test["t"] == pytest.approx(t)
    # two-sided p of Student's t with 2 degrees of freedom: 1 - |t| / sqrt(t^2 + 2)
    assert test["p"] == pytest.approx(1 - abs(t) / math.sqrt(t * t + 2))
    assert "paired t-test" in test["test"]


def test_a_value_counts_only_with_every_seed_done():
    runs = [r for r in _study() if not (r["optimizer"] == "amos" and r["value"] == 2.0
                                        and r["seed"] == 2)]
    amos = summary.summarize(_results(runs))["budgets"]["100"]["optimizers"]["amos"]
    assert amos["seeds"] == [0, 1]  # seed 2 lacks one grid value: judged on seeds 0 and 1
    assert amos["tuned"]["n"] == 2


def test_a_value_never_run_at_a_budget_leaves_its_grid():
    runs = [r for r in _study() if not (r["optimizer"] == "amos" and r["value"] == 2.0)]
    amos = summary.summarize(_results(runs))["budgets"]["100"]["optimizers"]["amos"]
    assert amos["grid"] == [0.5, 1.0] and amos["seeds"] == [0, 1, 2]
    assert amos["tuned_value"] == 1.0 and amos["tuned_at_grid_edge"] is True


def test_no_reference_without_adamw():
    runs = [r for r in _study() if r["optimizer"] == "amos"]
    s = summary.summarize(_results(runs, optimizers=("amos",)))["budgets"]["100"]
    assert s["reference"] is None and "reach" not in s["entries"][0]


def test_every_optimizer_has_its_own_colour():
    from amosopt.compare.plots import _COLORS
    from amosopt.compare.registry import OPTIMIZERS

    assert set(OPTIMIZERS) <= set(_COLORS)
    assert len(set(_COLORS.values())) == len(_COLORS)
