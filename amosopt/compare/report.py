"""Outputs of ``amos compare``: ``results.json``, ``loss.png`` and ``report.md``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _run_dict(run: Any) -> dict:
    return run.as_dict() if hasattr(run, "as_dict") else run


def summarize(results: dict) -> dict:
    """The headline numbers: best AdamW of the sweep, Amos's final loss, the step where Amos
    first reaches AdamW's final validation loss, state memory and time per step."""
    runs = [_run_dict(r) for r in results.get("runs", [])]
    amos = next((r for r in runs if r["optimizer"].startswith("amosopt")), None)
    sweep = [r for r in runs if r["optimizer"].startswith("torch.optim.AdamW")]
    finished = [r for r in sweep if r["complete"] and r["final_val_loss"] is not None
                and math.isfinite(r["final_val_loss"])]
    best = min(finished, key=lambda r: r["final_val_loss"]) if finished else None
    summary: dict[str, Any] = {"amos": amos and amos["label"], "adamw": best and best["label"]}
    if best is not None:
        lrs = sorted(r["settings"]["lr"] for r in sweep)
        summary["adamw_lr"] = best["settings"]["lr"]
        summary["adamw_lr_at_sweep_edge"] = len(lrs) > 1 and best["settings"]["lr"] in (
            lrs[0], lrs[-1])
        summary["adamw_final_val_loss"] = best["final_val_loss"]
        summary["adamw_steps"] = best["steps"]
    if amos is not None:
        summary["amos_final_val_loss"] = amos["final_val_loss"]
        summary["amos_complete"] = amos["complete"]
        summary["amos_diverged_at"] = amos["diverged_at"]
    if amos is not None and best is not None:
        target = best["final_val_loss"]
        reach = next((step for step, val in zip(amos["eval_steps"], amos["val"])
                      if val["loss"] <= target), None)
        summary["amos_reaches_adamw_at_step"] = reach
        summary["amos_reaches_adamw_percent"] = (
            None if reach is None else 100.0 * reach / best["steps"])
        summary["seconds_per_step"] = {"amos": amos["seconds_per_step"],
                                       "adamw": best["seconds_per_step"]}
        summary["optimizer_seconds_per_step"] = {"amos": amos["optimizer_seconds_per_step"],
                                                 "adamw": best["optimizer_seconds_per_step"]}
        other = results.get("amos_state_bytes_other_momentum", {})
        memory = {"adamw": best["state_bytes"],
                  f"amos_momentum_{amos['settings']['momentum']:g}": amos["state_bytes"]}
        if other:
            memory[f"amos_momentum_{other['momentum']:g}"] = other["state_bytes"]
        summary["state_bytes"] = memory
    return summary


def write_outputs(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results = dict(results, runs=[_run_dict(r) for r in results.get("runs", [])])
    results["summary"] = summarize(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot(results, out / "loss.png")
    (out / "report.md").write_text(markdown(results))


def plot(results: dict, path: Path) -> None:
    """Validation loss against steps: Amos, the best AdamW (bold) and the rest of the sweep
    (faint); AdamW's final loss as a horizontal line; Amos's first step at or below it."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    summary = results["summary"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    top = []
    others = iter(f"C{i}" for i in range(2, 100))
    for run in results["runs"]:
        if not run["val"]:
            continue
        losses = [v["loss"] for v in run["val"]]
        main = run["label"] in (summary.get("amos"), summary.get("adamw"))
        color = ("C0" if run["label"] == summary.get("amos") else
                 "C1" if run["label"] == summary.get("adamw") else next(others))
        ax.plot(run["eval_steps"], losses, label=run["label"], marker="o" if main else None,
                color=color, markersize=3, linewidth=2 if main else 1,
                alpha=1 if main else 0.35)
        if main and len(losses) > 1:
            top.append(max(losses[1:]))
    target = summary.get("adamw_final_val_loss")
    if target is not None:
        ax.axhline(target, color="gray", linestyle="--", linewidth=1,
                   label=f"AdamW final {target:.3f}")
    reach = summary.get("amos_reaches_adamw_at_step")
    if reach is not None:
        ax.axvline(reach, color="green", linestyle=":", linewidth=1)
        ax.plot([reach], [target], marker="*", color="green", markersize=12,
                label=f"Amos reaches it: step {reach} "
                      f"({summary['amos_reaches_adamw_percent']:.0f}%)")
    if top:
        # the first evaluation (at init) is far above the rest; keep the interesting part
        bottom = min(min(v["loss"] for v in r["val"]) for r in results["runs"] if r["val"])
        ax.set_ylim(bottom - 0.02 * abs(bottom), max(top) * 1.02)
    title = f"amos compare: {results['task']['name']}"
    if not results.get("complete"):
        title += " (INCOMPLETE)"
    ax.set(title=title, xlabel="step", ylabel="validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def markdown(results: dict) -> str:
    s = results["summary"]
    task, config = results["task"], results["config"]
    lines = [f"# amos compare: `{task['name']}`" + ("" if results.get("complete") else
                                                     " (INCOMPLETE: interrupted)"), ""]
    if not results.get("complete"):
        lines += ["**INCOMPLETE**: the run was interrupted; the numbers below cover only what "
                  "finished.", ""]
    data = task["data"]
    lines += [
        f"Data: {data.get('source')}; {data.get('split')}. Model: {task['parameters']:,} "
        f"parameters. Budget: {task['steps']} steps of batch {task['batch_size']}, seed "
        f"{config['seed']}, the same initialisation and batch order for every run.",
        "",
        "## Result",
        "",
    ]
    target, reach = s.get("adamw_final_val_loss"), s.get("amos_reaches_adamw_at_step")
    if target is not None and s.get("amos_final_val_loss") is not None:
        reached = ("not reached within the budget" if reach is None else
                   f"step {reach} = **{s['amos_reaches_adamw_percent']:.0f}%** of AdamW's "
                   f"{s['adamw_steps']} steps")
        lines += [f"- Amos reaches AdamW's final validation loss ({target:.4f}): {reached}."]
    if s.get("amos_diverged_at") is not None:
        lines += [f"- Amos **diverged** (non-finite loss) at step {s['amos_diverged_at']}."]
    lines += ["", "| optimizer | final val loss | wall-clock / step (median) | optimizer.step() | "
                  "state memory | % of AdamW |", "|---|---|---|---|---|---|"]
    memory = s.get("state_bytes", {})
    adamw_bytes = memory.get("adamw")
    by_label = {r["label"]: r for r in results["runs"]}
    for key in ("amos", "adamw"):
        run = by_label.get(s.get(key))
        if run is None:
            continue
        pct = ("" if not adamw_bytes or run["state_bytes"] is None
               else f"{100 * run['state_bytes'] / adamw_bytes:.2f}%")
        lines.append(f"| {run['label']} | {_fmt(run['final_val_loss'])} | "
                     f"{1000 * run['seconds_per_step']:.1f} ms | "
                     f"{1000 * run['optimizer_seconds_per_step']:.2f} ms | "
                     f"{_fmt_bytes(run['state_bytes'])} | {pct} |")
    if memory and adamw_bytes:
        lines += ["", "Optimizer state, measured from the optimizers' state tensors after "
                      "training (slots and step counters):", ""]
        for name, value in memory.items():
            pct = f" = {100 * value / adamw_bytes:.2f}% of AdamW" if name != "adamw" else ""
            lines.append(f"- {name.replace('_', ' ')}: {_fmt_bytes(value)} ({value:,} bytes)"
                         f"{pct}")
    lines += _amos_section(results) + _sweep_section(results, s) + _notes(results)
    return "\n".join(lines) + "\n"


def _amos_section(results: dict) -> list[str]:
    amos = next((r for r in results["runs"] if r["optimizer"].startswith("amosopt")), None)
    if amos is None:
        return []
    settings = amos["settings"]
    lines = ["", "## Amos settings", "",
             f"`amosopt.torch.Amos(lr={settings['lr (xi)']:.4g}, beta={settings['beta']:g}, "
             f"clip_value={settings['clip_value']:g}, momentum={settings['momentum']:g})`, "
             f"constant rate" + (f" after {settings['warmup_steps']} warm-up steps"
                                 if settings["warmup_steps"] else " (no warm-up)")
             + f"; per-parameter eta and slot shapes from {settings['scales']}.",
             "",
             "Momentum 0.9 is what the paper's BERT and T5 runs used; it adds a parameter-sized "
             "slot (see the memory lines above for both variants).",
             "",
             "From `amos suggest` (the paper's guidance):", ""]
    lines += [f"- {line}" for line in results["suggestion"]["reasoning"]]
    return lines


def _sweep_section(results: dict, s: dict) -> list[str]:
    sweep = [r for r in results["runs"] if r["optimizer"].startswith("torch.optim.AdamW")]
    if not sweep:
        return []
    first = sweep[0]["settings"]
    lines = ["", "## AdamW learning-rate sweep (same budget)", "",
             f"Linear warm-up over {first['warmup_steps']} steps, then linear decay to zero at "
             f"step {sweep[0]['steps']}; weight decay {first['weight_decay']}, betas "
             f"{tuple(first['betas'])}.", "", "| lr | final val loss | status |", "|---|---|---|"]
    for run in sweep:
        status = ("diverged at step %d" % run["diverged_at"] if run["diverged_at"] is not None
                  else "complete" if run["complete"] else f"stopped at step {run['steps_done']}")
        mark = " (best)" if run["label"] == s.get("adamw") else ""
        lines.append(f"| {run['settings']['lr']:g}{mark} | {_fmt(run['final_val_loss'])} | "
                     f"{status} |")
    if s.get("adamw_lr_at_sweep_edge"):
        lines += ["", "The best rate is at the edge of the sweep: widen it with `--adamw-lrs` "
                      "for a fairer baseline."]
    return lines


def _notes(results: dict) -> list[str]:
    machine = results["machine"]
    return [
        "", "## Notes", "",
        "- Validation loss is evaluated at the steps in the plot, so the step at which Amos "
        "reaches AdamW's loss is resolved to the evaluation interval.",
        "- Wall-clock per step is forward + backward + optimizer step (evaluation excluded); "
        "on a shared machine it is noisy: see `benchmarks/torch_step.py` for interleaved "
        "timings.",
        f"- Machine: {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"{machine['torch_threads']} torch threads; versions in `results.json`.",
        "", "![validation loss](loss.png)",
    ]
