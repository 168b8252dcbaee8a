"""The plots of an ``amos compare`` study: ``frontier.png`` (final loss against budget),
``loss_BUDGET.png`` (loss curves at one budget) and ``schedules.png`` (what each optimizer does
per update), drawn from ``results.json`` and its summary (:mod:`~amosopt.compare.summary`)."""

from __future__ import annotations

import statistics
from pathlib import Path

from amosopt.compare.registry import AMOS

__all__ = ["plot_curves", "plot_frontier", "plot_schedules", "schedule_runs"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    return plt


#: one colour per optimizer of the registry, so that no two lines of a plot share one
_COLORS = {"amos": "C0", "amos-wsd": "C3", "amos-recipe": "C9", "amos-recipe-nomom": "C8",
           "adamw": "C1", "adamw-wsd": "C2", "adafactor": "C4", "schedulefree": "C5",
           "adam-mini": "C6", "muon": "C7"}


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
