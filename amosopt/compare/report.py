"""Outputs of ``amos compare``: ``results.json``, ``report.md``, ``frontier.png``,
``schedules.png`` and one ``loss_BUDGET.png`` per budget.

Tuning rule: for each budget and optimizer, the grid value with the lowest final validation loss
averaged over the seeds is "tuned" (one value for all seeds, not a pick per seed). Amos is
reported twice: at the suggested ``xi`` (multiplier 1, no tuning) and tuned. The reference is
the better of tuned ``adamw`` and ``adamw-wsd``; "reaches" is the first evaluation at or below
the reference's final loss *of the same seed*, and the paired test compares final losses seed by
seed.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

REFERENCES = ("adamw", "adamw-wsd")
AMOS = ("amos", "amos-wsd")


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


def _paired_test(entry: dict, reference: dict) -> dict | None:
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
            grid = config["xi_multipliers"] if name in AMOS else config["grids"][name]
            by_value = {v: {seed: runs[(name, v, budget, seed)] for seed in config["seeds"]
                            if (name, v, budget, seed) in runs} for v in grid}
            per_optimizer[name] = _optimizer_summary(name, list(grid), by_value, budget)
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
                    entry["paired_test"] = _paired_test(entry, reference)
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


# --------------------------------------------------------------------------------------------


def write_results(results: dict, out: Path) -> None:
    """results.json (with the summary); cheap enough to call after every run."""
    out.mkdir(parents=True, exist_ok=True)
    results["summary"] = summarize(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_outputs(results: dict, out: Path) -> None:
    """results.json, report.md, frontier.png and loss_BUDGET.png."""
    write_results(results, out)
    plot_frontier(results, out / "frontier.png")
    for budget in results["config"]["budgets"]:
        plot_curves(results, budget, out / f"loss_{budget}.png")
    results["schedules_plot"] = plot_schedules(results, out / "schedules.png")
    (out / "report.md").write_text(markdown(results))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    return plt


_COLORS = {"amos": "C0", "amos-wsd": "C3", "adamw": "C1", "adamw-wsd": "C2",
           "adafactor": "C4", "schedulefree": "C5"}


def plot_frontier(results: dict, path: Path) -> None:
    """Final validation loss against budget: one line per optimizer (tuned; Amos also at the
    suggested xi, dashed) with its spread over seeds, and the anytime Amos curve."""
    plt = _pyplot()
    summary = results["summary"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    budgets = [int(b) for b in summary["budgets"]]
    lows = []
    for name in results["config"]["optimizers"]:
        for kind, style in (("tuned", "-"), ("suggested", "--")):
            points = [(b, summary["budgets"][str(b)]["optimizers"][name].get(kind))
                      for b in budgets]
            points = [(b, e) for b, e in points if e and e["mean"] is not None]
            if not points:
                continue
            xs = [b for b, _ in points]
            ax.errorbar(xs, [e["mean"] for _, e in points], yerr=[e["sd"] for _, e in points],
                        label=f"{name} ({kind})" if name in AMOS else name, marker="o",
                        linestyle=style, color=_COLORS.get(name), capsize=3, markersize=4)
            lows += [e["mean"] for _, e in points]
    anytime = summary.get("anytime")
    if anytime:
        steps, mean = anytime["steps"][1:], anytime["mean"][1:]  # step 0 is the init loss
        ax.plot(steps, mean, color=_COLORS["amos"], alpha=0.4, linewidth=1,
                label=f"amos anytime run ({anytime['budget']} steps, suggested xi)")
    if lows:
        span = max(lows) - min(lows)
        ax.set_ylim(min(lows) - 0.15 * span - 1e-3, max(lows) + 0.6 * span + 1e-3)
    ax.set(title=f"amos compare: {results['task']['name']}, final loss per budget",
           xlabel="budget (steps)", ylabel="final validation loss")
    ax.set_xticks(budgets)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(results: dict, budget: int, path: Path) -> None:
    """Validation loss against steps at one budget: each tuned optimizer's mean over seeds,
    with the range over seeds shaded."""
    plt = _pyplot()
    summary = results["summary"]["budgets"][str(budget)]
    runs = {(r["optimizer"], r["value"], r["budget"], r["seed"]): r for r in results["runs"]}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    tops, bottoms = [], []
    for entry in summary["entries"]:
        records = [runs[(entry["optimizer"], entry["value"], budget, int(s))]
                   for s, loss in entry["losses"].items() if loss is not None]
        if not records:
            continue
        steps = records[0]["eval_steps"]
        curves = [[v["loss"] for v in r["val"]] for r in records]
        mean = [statistics.fmean(c[i] for c in curves) for i in range(len(steps))]
        dashed = entry["label"].endswith("(suggested xi)")
        ax.plot(steps, mean, color=_COLORS.get(entry["optimizer"]),
                linestyle="--" if dashed else "-",
                label=f"{entry['label']} [{entry['value']:g}]")
        ax.fill_between(steps, [min(c[i] for c in curves) for i in range(len(steps))],
                        [max(c[i] for c in curves) for i in range(len(steps))],
                        color=_COLORS.get(entry["optimizer"]), alpha=0.12)
        if len(mean) > 2:
            tops.append(mean[len(mean) // 4])
        bottoms.append(min(mean))
    if tops:
        ax.set_ylim(min(bottoms) - 0.02 * abs(min(bottoms)), max(tops))
    ax.set(title=f"amos compare: {results['task']['name']}, budget {budget} steps",
           xlabel="step", ylabel="validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def schedule_runs(results: dict) -> dict[str, dict]:
    """The runs whose schedules ``schedules.png`` draws: at the largest budget and the first
    seed, Amos and Amos-WSD at the suggested xi and the reference AdamW (tuned)."""
    budget = max(results["config"]["budgets"])
    runs = {(r["optimizer"], r["value"], r["budget"], r["seed"]): r for r in results["runs"]
            if r.get("schedules") and any(r["schedules"])}
    seed = next((s for s in results["config"]["seeds"]
                 if any(k[2:] == (budget, s) for k in runs)), None)
    chosen = {name: runs.get((name, 1.0, budget, seed)) for name in AMOS}
    reference = results["summary"]["budgets"][str(budget)].get("reference")
    entry = next((e for e in results["summary"]["budgets"][str(budget)]["entries"]
                  if e["label"] == reference), None)
    if entry is not None:
        chosen[entry["optimizer"]] = runs.get((entry["optimizer"], entry["value"], budget, seed))
    return {name: run for name, run in chosen.items() if run is not None}


def plot_schedules(results: dict, path: Path) -> bool:
    """What the optimizers do per step over the run: the effective step (how far an entry
    moves at its usual gradient scale: ``xi eta d_t`` for Amos, the rate for AdamW) and the
    weight decay per step, for Amos per layer kind (median over its layers) with the range over
    all layers shaded. Returns False (and draws nothing) without recorded schedules."""
    chosen = schedule_runs(results)
    if not chosen:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    styles = ["-", "--", "-.", ":", (0, (3, 1, 1, 1)), (0, (5, 2))]
    for name, run in chosen.items():
        points = [(s, n) for s, n in zip(run["eval_steps"], run["schedules"]) if n]
        steps = [s for s, _ in points]
        for ax, key in zip(axes, ("step", "weight_decay")):
            color = _COLORS.get(name)
            if name not in AMOS:
                ax.plot(steps, [n["all"][f"{key}_median"] for _, n in points], color=color,
                        linestyle="--", label=f"{name} [{run['value']:g}]")
                continue
            ax.fill_between(steps, [n["all"][f"{key}_min"] for _, n in points],
                            [n["all"][f"{key}_max"] for _, n in points], color=color, alpha=0.1)
            kinds = [k for k in points[-1][1] if k != "all"]
            for kind, style in zip(kinds, styles):
                ax.plot(steps, [n.get(kind, {}).get(f"{key}_median") for _, n in points],
                        color=color, linestyle=style, linewidth=1,
                        label=f"{name}: {kind}" if key == "step" else None)
    for ax, title in zip(axes, ("effective step per update", "weight decay per update")):
        ax.set(title=title, xlabel="step", yscale="log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"amos compare: {results['task']['name']}, what each optimizer does "
                 f"(budget {max(results['config']['budgets'])}, seed "
                 f"{next(iter(chosen.values()))['seed']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _loss_cell(entry: dict) -> str:
    if entry["mean"] is None:
        return f"diverged ({entry['diverged']} of {entry['diverged'] + entry['n']})"
    text = f"{entry['mean']:.4f} ± {entry['sd']:.4f} (n={entry['n']})"
    return text + (f", {entry['diverged']} diverged" if entry["diverged"] else "")


def _reach_cell(entry: dict) -> str:
    reach = entry.get("reach")
    if not reach or not reach["seeds"]:
        return "n/a"
    if reach["reached"] == 0:
        return "not reached"
    text = f"{reach['percent_mean']:.0f}%"
    return text if reach["reached"] == reach["seeds"] else (
        f"{text} on {reach['reached']} of {reach['seeds']} seeds")


def _value_cell(entry: dict, optimizer_summary: dict) -> str:
    hyper = "xi x" if entry["optimizer"] in AMOS else "lr"
    text = f"{hyper} {entry['value']:g}"
    if entry["label"].endswith("(tuned)") and optimizer_summary.get("tuned_at_grid_edge"):
        text += " (**grid edge**)"
    return text


def _budget_section(results: dict, budget: str, s: dict, adamw_bytes: int | None) -> list[str]:
    lines = [f"## Budget {budget} steps", "",
             f"Reference (best AdamW): {s['reference'] or 'none'}.", "",
             "| optimizer | value | final val loss (mean ± sd) | reaches reference | "
             "state | median step |", "|---|---|---|---|---|---|"]
    for entry in s["entries"]:
        state = _fmt_bytes(entry["state_bytes"])
        if adamw_bytes and entry["state_bytes"]:
            state += f" ({100 * entry['state_bytes'] / adamw_bytes:.1f}%)"
        step = ("n/a" if entry["median_step_seconds"] is None
                else f"{1000 * entry['median_step_seconds']:.0f} ms")
        lines.append(f"| {entry['label']} | "
                     f"{_value_cell(entry, s['optimizers'][entry['optimizer']])} | "
                     f"{_loss_cell(entry)} | {_reach_cell(entry)} | {state} | {step} |")
    tests = [e for e in s["entries"] if e.get("paired_test")]
    if tests:
        lines += ["", "Amos against the reference, " + tests[0]["paired_test"]["test"] + ":", ""]
        for entry in tests:
            test = entry["paired_test"]
            if test["mean_difference"] is None:
                continue
            p = "n/a (needs 2+ seeds)" if test["p"] is None else f"{test['p']:.3g}"
            lines.append(f"- {entry['label']}: mean difference {test['mean_difference']:+.4f} "
                         f"(negative: Amos lower), n = {test['n']}, p = {p}")
    lines += ["", f"![loss curves](loss_{budget}.png)", ""]
    return lines


def markdown(results: dict) -> str:
    config, summary, task = results["config"], results["summary"], results["task"]
    planned, runs = results.get("planned", []), results.get("runs", [])
    lines = [f"# amos compare: `{task['name']}`", ""]
    if len(runs) < len(planned) or not results.get("complete"):
        lines += [f"**INCOMPLETE**: {len(runs)} of {len(planned)} planned runs are done; "
                  "run the same command again to finish (done runs are skipped).", ""]
    data = task["data"]
    lines += [
        f"Data: {data.get('source')}; {data.get('split')}. Model: {task['parameters']:,} "
        f"parameters, batch {task['batch_size']}. Budgets {config['budgets']} steps, seeds "
        f"{config['seeds']}: every run of a seed starts from the same initialisation and sees "
        "the same batches; each budget's runs are judged at their own end.", "",
        "Tuning: " + "; ".join(
            f"{name} {('xi x ' if name in AMOS else 'lr ')}{_grid(config, name)}"
            for name in config["optimizers"])
        + f". {_trials(config)} per budget and seed; the tuned value has the lowest final "
          "loss averaged over seeds.", "",
        f"Amos: xi = {results['suggestion']['xi']:.4g} suggested, beta = "
        f"{config['amos_beta'] or results['suggestion']['beta']:g}, clip "
        f"{results['suggestion']['clip_value']:g}, momentum {config['amos_momentum']:g}; "
        f"scales from {results['scales']['source']}. WSD runs cool down over the last "
        f"{config['cooldown_fraction']:.0%} ({config['cooldown']}).", "",
        *_onset_lines(results),
        "![frontier](frontier.png)", ""]
    if results.get("schedules_plot"):
        lines += ["What the optimizers do per update (Amos per layer kind, the range over all "
                  "layers shaded; AdamW dashed): the effective step `xi * eta * d_t` and the "
                  "weight decay `0.5 * gamma + extra_l2` (`amosopt.diagnostics`).", "",
                  "![schedules](schedules.png)", ""]
    adamw_bytes = results.get("probe_state_bytes", {}).get("adamw")
    for budget, s in summary["budgets"].items():
        lines += _budget_section(results, budget, s, adamw_bytes)
    memory = results.get("probe_state_bytes", {})
    if adamw_bytes:
        lines += ["## Optimizer state", ""] + [
            f"- {name.replace('_', ' ')}: {_fmt_bytes(value)}"
            + (f" = {100 * value / adamw_bytes:.2f}% of AdamW" if name != "adamw" else "")
            for name, value in memory.items()] + [""]
    machine = results["machine"]
    lines += ["## Notes", "",
              "- Evaluations are evenly spaced, so 'reaches reference' is resolved to the "
              "evaluation interval.",
              "- Step time is forward + backward + optimizer step, median over the run; runs "
              f"share the machine ({machine['cpu_count']} CPUs, "
              f"{machine.get('torch_threads_per_run')} torch thread(s) per run), so it is "
              "noisy: `benchmarks/torch_step.py` measures the optimizers side by side.",
              "- Versions and the command are in `results.json`."]
    return "\n".join(lines) + "\n"


def onset_sentence(results: dict) -> str | None:
    """When Amos's own decay starts, against the budgets (``amosopt.suggest.decay_onset``)."""
    onset = results.get("suggestion", {}).get("decay_onset")
    if onset is None:
        return None
    budgets = results["config"]["budgets"]
    where = ("after every budget here: without a cooldown, Amos trains at a constant rate "
             "throughout" if onset > max(budgets) else
             "within " + ("every budget" if onset <= min(budgets) else "the longer budgets"))
    return (f"Amos's own decay cuts the step by 10% after about {onset:,.0f} steps (eta = 1; "
            f"later for smaller eta), {where}.")


def _onset_lines(results: dict) -> list[str]:
    sentence = onset_sentence(results)
    return [sentence, ""] if sentence else []


def _trials(config: dict) -> str:
    """How many trials each optimizer had (the fairness statement of the report)."""
    counts: dict[int, list[str]] = {}
    for name in config["optimizers"]:
        grid = config["xi_multipliers"] if name in AMOS else config["grids"][name]
        counts.setdefault(len(grid), []).append(name)
    return "; ".join(f"{n} trial{'s' * (n != 1)}: {', '.join(names)}"
                     for n, names in sorted(counts.items()))


def _grid(config: dict, name: str) -> str:
    grid = config["xi_multipliers"] if name in AMOS else config["grids"][name]
    return "{" + ", ".join(f"{v:g}" for v in grid) + "}"
