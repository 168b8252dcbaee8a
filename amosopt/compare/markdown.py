"""``report.md`` of an ``amos compare`` study, written from ``results.json`` and its summary
(:mod:`~amosopt.compare.summary`)."""

from __future__ import annotations

from amosopt.compare.registry import AMOS
from amosopt.compare.summary import grid

__all__ = ["markdown", "onset_sentence"]


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
            f"{name} {('xi x ' if name in AMOS else 'lr ')}{_grid_text(config, name)}"
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
        counts.setdefault(len(grid(config, name)), []).append(name)
    return "; ".join(f"{n} trial{'s' * (n != 1)}: {', '.join(names)}"
                     for n, names in sorted(counts.items()))


def _grid_text(config: dict, name: str) -> str:
    return "{" + ", ".join(f"{v:g}" for v in grid(config, name)) + "}"
