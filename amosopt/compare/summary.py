"""The summary of an ``amos compare`` study, computed from its runs (``results.json``'s
``summary``).

Tuning rule: for each budget and optimizer, the grid value with the lowest final validation loss
averaged over the seeds is "tuned" (one value for all seeds, not a pick per seed). Amos is
reported twice: at the suggested ``xi`` (multiplier 1, no tuning) and tuned. The reference is
the better of tuned ``adamw`` and ``adamw-wsd``; "reaches" is the first evaluation at or below
the reference's final loss *of the same seed*, and the paired test compares final losses seed by
seed.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from amosopt.compare.registry import AMOS

__all__ = ["REFERENCES", "grid", "paired_test", "summarize"]

REFERENCES = ("adamw", "adamw-wsd")


def grid(config: dict, name: str) -> list[float]:
    """The grid of optimizer ``name`` in a study's config (as written to results.json)."""
    return config["xi_multipliers"] if name in AMOS else config["grids"][name]


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _final(record: dict) -> float:
    """A run's final loss for ranking: a diverged run counts as infinitely bad."""
    loss = record.get("final_val_loss")
    return math.inf if loss is None else loss


def _finished(record: dict) -> bool:
    return record.get("complete") or record.get("diverged_at") is not None


def _entry(label: str, name: str, value: float, records: dict[int, dict], budget: int) -> dict:
    losses = {seed: r.get("final_val_loss") for seed, r in records.items()}
    finite = [x for x in losses.values() if x is not None]
    mean, sd = _mean_sd(finite)
    steps = [r["seconds_per_step"] for r in records.values() if r.get("seconds_per_step")]
    state = [r["state_bytes"] for r in records.values() if r.get("state_bytes")]
    return {"label": label, "optimizer": name, "value": value, "budget": budget,
            "losses": {str(k): v for k, v in losses.items()}, "mean": mean, "sd": sd,
            "n": len(finite), "diverged": len(losses) - len(finite),
            "median_step_seconds": statistics.median(steps) if steps else None,
            "state_bytes": max(state) if state else None}


def _optimizer_summary(name: str, grid: list[float], by_value: dict[float, dict[int, dict]],
                       budget: int) -> dict:
    """Per-value means over the seeds that finished every grid value, and the tuned value."""
    seeds = sorted(set.intersection(*(
        {seed for seed, r in by_value.get(v, {}).items() if _finished(r)} for v in grid)))
    values = {}
    for value in grid:
        records = {seed: by_value[value][seed] for seed in seeds}
        scores = [_final(r) for r in records.values()]
        values[value] = (statistics.fmean(scores) if scores else math.inf, records)
    summary: dict[str, Any] = {"grid": grid, "seeds": seeds,
                               "mean_by_value": {f"{v:g}": (None if math.isinf(m) else m)
                                                 for v, (m, _) in values.items()}}
    if not seeds:
        return summary
    best = min(grid, key=lambda v: values[v][0])
    summary["tuned_value"] = best
    summary["tuned_at_grid_edge"] = len(grid) > 1 and best in (min(grid), max(grid))
    summary["tuned"] = _entry(f"{name} (tuned)", name, best, values[best][1], budget)
    if name in AMOS and 1.0 in values:
        summary["suggested"] = _entry(f"{name} (suggested xi)", name, 1.0, values[1.0][1],
                                      budget)
    return summary


def _reach(entry: dict, reference: dict, runs: dict, budget: int) -> dict:
    """Per seed, the first evaluation at or below the reference's final loss of that seed."""
    steps = []
    for seed, target in reference["losses"].items():
        record = runs.get((entry["optimizer"], entry["value"], budget, int(seed)))
        if target is None or record is None:
            continue
        step = next((s for s, v in zip(record["eval_steps"], record["val"])
                     if v["loss"] <= target), None)
        steps.append(step)
    reached = [s for s in steps if s is not None]
    return {"seeds": len(steps), "reached": len(reached),
            "percent_mean": (statistics.fmean(100 * s / budget for s in reached)
                             if reached else None)}


def paired_test(entry: dict, reference: dict) -> dict | None:
    """Two summary entries' final losses paired by seed: the mean difference (entry minus
    reference) and, with two seeds or more, the two-sided paired t-test."""
    pairs = [(entry["losses"][s], reference["losses"][s]) for s in entry["losses"]
             if entry["losses"].get(s) is not None and reference["losses"].get(s) is not None]
    result = {"test": "paired t-test, two-sided, on final validation losses paired by seed",
              "n": len(pairs), "vs": reference["label"],
              "mean_difference": statistics.fmean(a - b for a, b in pairs) if pairs else None,
              "t": None, "p": None}
    if len(pairs) >= 2:
        from scipy import stats

        differences = [a - b for a, b in pairs]
        if any(d != differences[0] for d in differences):
            test = stats.ttest_rel([a for a, _ in pairs], [b for _, b in pairs])
            result["t"], result["p"] = float(test.statistic), float(test.pvalue)
    return result


def _run_at(values: list[float], name: str, budget: int, runs: dict) -> list[float]:
    """The grid values with a run at ``budget`` (all of them where none has one): a study may
    run a narrower grid at a longer budget, around the best of a shorter one, and a value it
    never ran there must not leave every seed without a full grid."""
    ran = [v for v in values if any(k[:3] == (name, v, budget) for k in runs)]
    return ran or list(values)


def summarize(results: dict) -> dict:
    """Per budget: every optimizer's tuned entry (and Amos's suggested one), the reference,
    steps to reach it, the paired tests; the anytime Amos curve."""
    config = results["config"]
    runs = {(r["optimizer"], r["value"], r["budget"], r["seed"]): r
            for r in results.get("runs", [])}
    budgets: dict[str, Any] = {}
    for budget in config["budgets"]:
        per_optimizer = {}
        for name in config["optimizers"]:
            values = _run_at(grid(config, name), name, budget, runs)
            by_value = {v: {seed: runs[(name, v, budget, seed)] for seed in config["seeds"]
                            if (name, v, budget, seed) in runs} for v in values}
            per_optimizer[name] = _optimizer_summary(name, list(values), by_value, budget)
        entries = []
        for name, s in per_optimizer.items():
            entries += [s[k] for k in ("suggested", "tuned") if k in s]
        candidates = [per_optimizer[n]["tuned"] for n in REFERENCES
                      if "tuned" in per_optimizer.get(n, {})]
        reference = min(candidates, key=lambda e: e["mean"] if e["mean"] is not None
                        else math.inf) if candidates else None
        for entry in entries:
            if reference is not None:
                entry["reach"] = _reach(entry, reference, runs, budget)
                if entry["optimizer"] in AMOS:
                    entry["paired_test"] = paired_test(entry, reference)
        budgets[str(budget)] = {"optimizers": per_optimizer, "entries": entries,
                                "reference": reference and reference["label"]}
    return {"budgets": budgets, "anytime": _anytime(results, runs)}


def _anytime(results: dict, runs: dict) -> dict | None:
    """The constant-xi Amos run at the largest budget (suggested xi), averaged over seeds."""
    config = results["config"]
    if "amos" not in config["optimizers"]:
        return None
    budget = max(config["budgets"])
    records = [runs[("amos", 1.0, budget, s)] for s in config["seeds"]
               if ("amos", 1.0, budget, s) in runs and runs[("amos", 1.0, budget, s)]["complete"]]
    if not records:
        return None
    steps = records[0]["eval_steps"]
    curves = [[v["loss"] for v in r["val"]] for r in records]
    return {"budget": budget, "seeds": [r["seed"] for r in records], "steps": steps,
            "mean": [statistics.fmean(c[i] for c in curves) for i in range(len(steps))]}
