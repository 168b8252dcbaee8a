"""``benchmarks/study.py``'s targets on hand-made runs: Amos without momentum against Adafactor
tuned and paired on the same seeds, where Amos finished its grid on two seeds of three."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

pytest.importorskip("scipy")

from scipy import stats  # noqa: E402

from amosopt.compare import summary  # noqa: E402
from tests.test_compare.test_report import _record  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "study.py"
NOMOM = "amos-recipe-nomom"


def _load():
    spec = importlib.util.spec_from_file_location("study_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _lm(nomom_seeds_done: int) -> dict:
    """Adafactor on seeds 0-2 (0.02 best on average, seed 2 far lower than the others);
    Amos without momentum on seeds 0-2, its 2 x run missing on the seeds from
    ``nomom_seeds_done`` on."""
    runs = []
    adafactor = {0.01: [2.6, 2.7, 2.0], 0.02: [2.3, 2.5, 1.5], 0.04: [2.4, 2.6, 1.8]}
    for value, finals in adafactor.items():
        runs += [_record("adafactor", value, seed, [5, 3, final]) for seed, final in
                 enumerate(finals)]
    nomom = {0.5: [2.45, 2.52, 2.4], 1.0: [2.5, 2.6, 2.5], 2.0: [2.9, 3.0, 2.9]}
    for value, finals in nomom.items():
        runs += [_record(NOMOM, value, seed, [5, 3, final]) for seed, final in enumerate(finals)
                 if value != 2.0 or seed < nomom_seeds_done]
    results = {"config": {"budgets": [100], "seeds": [0, 1, 2],
                          "optimizers": [NOMOM, "adafactor"], "xi_multipliers": [0.5, 1.0, 2.0],
                          "grids": {"adafactor": list(adafactor)}},
               "runs": runs}
    results["summary"] = summary.summarize(results)
    return results


@pytest.mark.parametrize("seeds_done", [2, 3])
def test_against_adafactor_pairs_the_seeds_amos_finished(seeds_done: int) -> None:
    study = _load()
    lm = _lm(seeds_done)
    (row,) = study._against_adafactor(lm, lm, NOMOM, "without momentum")
    amos = [2.45, 2.52, 2.4][:seeds_done]
    adafactor = [2.3, 2.5, 1.5][:seeds_done]  # 0.02 stays the best on either set of seeds
    assert row["n"] == seeds_done
    assert row["amos"] == pytest.approx(statistics.fmean(amos))
    assert row["reference"] == pytest.approx(statistics.fmean(adafactor))
    assert row["difference"] == pytest.approx(statistics.fmean(amos) - statistics.fmean(adafactor))
    assert row["p"] == pytest.approx(stats.ttest_rel(amos, adafactor).pvalue)
    assert row["met"] is False


def _stage(tmp_path: Path, folder: str, optimizers: dict[str, dict[float, list[float]]]) -> None:
    """A stage's results.json with one run per optimizer, grid value and seed."""
    runs = [_record(name, value, seed, [5, 3, final])
            for name, grid in optimizers.items() for value, finals in grid.items()
            for seed, final in enumerate(finals)]
    config = {"budgets": [100], "seeds": [0, 1], "optimizers": list(optimizers),
              "xi_multipliers": [0.5, 1.0],
              "grids": {name: list(grid) for name, grid in optimizers.items()
                        if not name.startswith("amos")}}
    results = {"config": config, "runs": runs}
    results["summary"] = summary.summarize(results)
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "results.json").write_text(json.dumps(results))


def test_past_onset_against_the_best_adamw(tmp_path: Path) -> None:
    study = _load()
    _stage(tmp_path, study.EPOCHS, {
        "amos": {0.5: [2.0, 2.2], 1.0: [1.9, 2.1]},
        "amos-wsd": {0.5: [1.7, 1.9], 1.0: [1.8, 1.8]},
        "adamw-wsd": {1e-3: [1.6, 1.7], 3e-3: [1.55, 1.85]},  # 1e-3 best: 1.65 against 1.7
        "adamw": {1e-3: [1.9, 1.9], 3e-3: [1.7, 1.8]}})
    assert study.past_onset(tmp_path) == []  # the short-recipe stage has not run
    # its 1 x is best (1.6 against 1.65)
    _stage(tmp_path, f"{study.EPOCHS_SHORT}-b100",
           {"amos-wsd": {0.5: [1.55, 1.75], 1.0: [1.5, 1.7]}})
    rows = {row["setting"].split(":")[0]: row for row in study.past_onset(tmp_path)}
    assert list(rows) == ["amos", "amos-wsd", "amos-wsd with the short-budget recipe's settings",
                          "the reference"]
    assert rows["amos"]["value"] == 1.0 and rows["amos-wsd"]["value"] == 0.5
    reference = rows["the reference"]
    assert reference["value"] == 1e-3 and reference["minus_reference"] == {"0": 0.0, "1": 0.0}
    short = rows["amos-wsd with the short-budget recipe's settings"]
    assert short["value"] == 1.0
    assert list(short["minus_reference"].values()) == pytest.approx([1.5 - 1.6, 1.7 - 1.7])
    assert list(rows["amos"]["minus_reference"].values()) == pytest.approx([0.3, 0.4])
    study.write_summary(tmp_path)
    assert ("| lm-epochs, 100, 0,1 | amos-wsd with the short-budget recipe's settings | "
            "1.6000 ± 0.1414 (n=2) | 1 | -0.100, +0.000 |") in (tmp_path / "summary.md").read_text()


def test_short_recipe_flags_are_suggests_short_budget_settings() -> None:
    from amosopt.suggest import _short_budget

    study = _load()
    for xi, beta, steps in [(0.0884, 0.91, 1000), (0.149, 0.9, 400), (0.149, 0.9, 1500)]:
        flags = study.short_recipe_flags(steps)
        value = dict(zip(flags[::2], flags[1::2]))
        recipe = _short_budget(xi, beta, 1.0, 100.0, ("", "", ""), 10.0, "", steps)
        assert float(value["--amos-beta"]) == pytest.approx(recipe.beta)
        assert int(value["--amos-warmup"]) == recipe.warmup_steps
        assert float(value["--amos-decay-ratio"]) == recipe.decay_ratio
        assert value["--amos-second-moment"] == recipe.second_moment
