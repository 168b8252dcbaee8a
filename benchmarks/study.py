"""The multi-budget study of the README: Amos against tuned AdamW and its peers, with ablations.

Every stage is one ``amos compare`` command into its own folder under ``--root`` (default
``benchmarks/results/study``). ``amos compare`` is resumable, so running this script again goes
on where it stopped; a stage that is finished is skipped in seconds. Then ``--summary`` reads
every stage's ``results.json`` and writes ``summary.json`` and ``summary.md``: the per-budget
table, the targets of the study (met or not, with the numbers) and the ablations.

    .venv/bin/python benchmarks/study.py --list                  # the stages and their commands
    nohup .venv/bin/python benchmarks/study.py --jobs 2 &        # run (or resume) all of them
    .venv/bin/python benchmarks/study.py --only digits --jobs 2  # one stage
    .venv/bin/python benchmarks/study.py --summary               # the tables, from what is done

While you keep editing the checkout, run it from a frozen copy (worker processes import
``amosopt`` afresh, and an edited package mid-study makes runs fail):

    git worktree add ../study-run HEAD && cd ../study-run
    nohup ../main/.venv/bin/python benchmarks/study.py --jobs 2 \
        --root ../main/benchmarks/results/study &

Compute (2 cores, one torch thread per run), as measured: the lm stage is 198 runs (22 settings
x 3 seeds at each of its 3 budgets), about 16 run-hours, so 8 hours with ``--jobs 2``; the
ablations, ``lm-momentum-0`` and ``combined`` about 8 run-hours together; digits minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amosopt.cli import main as amos_main  # noqa: E402
from amosopt.compare.summary import paired_test, summarize  # noqa: E402
from amosopt.suggest import (SHORT_DECAY_RATIO, SHORT_ONE_MINUS_BETA,  # noqa: E402
                             SHORT_SECOND_MOMENT, SHORT_WARMUP_FRACTION)

ALL = ("amos,amos-wsd,amos-recipe,amos-recipe-nomom,adamw,adamw-wsd,adafactor,schedulefree,"
       "adam-mini,muon")
LM_BUDGETS = [500, 1000, 2000]
ABLATION_BUDGET = 1000
ABLATION_SEEDS = "0,1"
COMBINED = "combined"
COMBINED_FLAGS = ["--amos-beta", "0.999", "--cooldown-fraction", "0.3", "--cooldown", "1-sqrt"]
LOW_XI = "lm-2000-low-xi"
#: the recipe without momentum: its best xi sat at the low edge of {0.5, 1, 2} x at 500 and 1000
#: steps, so its grid goes on below (seeds 0-2, against Adafactor)
NOMOM_LOW_XI = "lm-recipe-nomom-low-xi"
#: the paper's regime: a training split of 512 KiB (128 batches of 32 x 128 bytes per epoch), so
#: that 1000 and 2000 steps are 8 and 16 epochs
EPOCHS = "lm-epochs"
EPOCHS_TRAIN_BYTES = 512 * 1024
#: over several epochs the budget is past Amos's decay onset, where ``amos suggest --steps``
#: keeps the paper's recipe; these stages (one per budget: the warm-up and beta depend on it) give
#: amos-wsd the short-budget recipe's settings there instead, to test that rule. At 1000 steps its
#: xi grid reaches down to 0.125 x (2 x diverges, and the best multiplier fell from 0.5 x to
#: 0.25 x as the grid grew); at 2000 steps, seeds 0 and 1 on {0.125, 0.25} x (the others lost
#: by 0.013 or more at 1000)
EPOCHS_SHORT = "lm-epochs-short-recipe"
EPOCHS_SHORT_GRIDS = {1000: "0.125,0.25,0.5,1,2", 2000: "0.125,0.25"}
#: the same test on digits, whose budgets are past the onset too (one stage per budget: the
#: warm-up and beta depend on it)
DIGITS_SHORT = "digits-short-recipe"
DIGITS_BUDGETS = [400, 1500]


def short_recipe_flags(budget: int) -> list[str]:
    """``amos compare`` flags that give amos-wsd the settings of ``suggest(..., steps=budget)``'s
    short-budget recipe (warm-up, beta, decay_ratio, second moment; the cooldown is amos-wsd's),
    whether or not the budget ends before the decay onset. Its beta is ``1 - max(0.005, 5 / T)``:
    the paper's ``1 - beta ~ xi`` is above 0.005 on every split past the onset here."""
    return ["--amos-beta", f"{1 - max(SHORT_ONE_MINUS_BETA, 5 / budget):g}",
            "--amos-warmup", str(round(SHORT_WARMUP_FRACTION * budget)),
            "--amos-decay-ratio", f"{SHORT_DECAY_RATIO:g}",
            "--amos-second-moment", SHORT_SECOND_MOMENT]

#: the recipe checked where it was not fitted: the same model on another text, Python 3.11's
#: documentation sources (reST prose, 12 MB: Debian's ``python3.11-doc``), concatenated in path
#: order into one file (the last 10% of it, the ``whatsnew`` pages, is validation)
DOCS = "lm-docs"
DOCS_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
DOCS_TEXT = "{python-docs}"

#: (stage, output folder, arguments of amos compare), in the order they run. The lm study is
#: split so that its short budgets, the ablations and digits finish before its longest budget.
STAGES: list[tuple[str, str, list[str]]] = [
    ("lm-short", "lm", ["--task", "lm", "--budgets", "500,1000", "--seeds", "0,1,2",
                        "--optimizers", ALL]),
    ("digits", "digits", ["--task", "digits", "--budgets", "400,1500", "--seeds", "0,1,2",
                          "--optimizers", ALL]),
    *[(f"ablation-{name}", f"ablation-{name}",
       ["--task", "lm", "--budgets", str(ABLATION_BUDGET), "--seeds", ABLATION_SEEDS,
        "--optimizers", "amos-wsd", *flags])
      for name, flags in [
          ("full-slots", ["--amos-slots", "full"]),
          ("constant-eta", ["--amos-eta", "0.1"]),
          ("beta-0.99", ["--amos-beta", "0.99"]),
          ("beta-0.999", ["--amos-beta", "0.999"]),
          ("cooldown-0.1", ["--cooldown-fraction", "0.1"]),
          ("cooldown-0.3", ["--cooldown-fraction", "0.3"]),
          ("cooldown-1-sqrt", ["--cooldown", "1-sqrt"]),
      ]],
    # beta 0.999 was better at 1000 steps: does it hold at 500?
    ("ablation-beta-0.999-b500", "ablation-beta-0.999-b500",
     ["--task", "lm", "--budgets", "500", "--seeds", ABLATION_SEEDS, "--optimizers", "amos-wsd",
      "--amos-beta", "0.999"]),
    # Amos without momentum (0.6% of AdamW's state) against Adafactor, at every lm budget; its
    # 1000-step runs are also the momentum ablation
    # (its best xi sat at the low edge of {0.5, 1, 2} x at 500 and 1000 steps: without the
    # momentum EMA the suggested xi is too large, so its grid reaches down to 0.125 x)
    ("lm-momentum-0", "lm-momentum-0", ["--task", "lm", "--budgets", "500,1000,2000", "--seeds",
                                        ABLATION_SEEDS, "--optimizers", "amos-wsd",
                                        "--amos-momentum", "0",
                                        "--xi-multipliers", "0.125,0.25,0.5,1,2"]),
    # what closes the 1000-step gap without more memory? The ablations that helped (beta 0.999,
    # a 30% cooldown, the 1-sqrt shape) together, with AdamW under the same schedule; both get a
    # 4-point grid (Amos's reaches 4 x, where the cooldown ablations' best xi sat at the edge)
    (COMBINED, COMBINED, ["--task", "lm", "--budgets", str(ABLATION_BUDGET), "--seeds",
                          ABLATION_SEEDS, "--optimizers", "amos-wsd,adamw-wsd", *COMBINED_FLAGS,
                          "--xi-multipliers", "0.5,1,2,4"]),
    ("lm", "lm", ["--task", "lm", "--budgets", "500,1000,2000", "--seeds", "0,1,2",
                  "--optimizers", ALL]),
    # several epochs: Amos's own decay (the paper's recipe: constant xi) against AdamW's
    # schedules (Amos's grid reaches 0.0625 x: at 1000 steps its best sat at the low edge three
    # times, 0.5 x, 0.25 x and 0.125 x, as the grid grew; 0.0625 x loses). 2000 steps is on
    # seeds 0 and 1, as compute forces, on the grid points around the best at 1000 steps (the
    # others lost by 0.05 or more there), widened where the best sat at an edge: amos on
    # {0.0625, 0.125, 0.25} x, amos-wsd on {0.125, 0.25} x, AdamW on {0.0015, 0.003, 0.006}
    # (adamw-wsd also 0.012, adamw also 0.00075)
    (EPOCHS, EPOCHS, ["--task", "lm", "--train-bytes", str(EPOCHS_TRAIN_BYTES), "--budgets",
                      "1000,2000", "--seeds", "0,1,2", "--optimizers",
                      "amos,amos-wsd,adamw,adamw-wsd",
                      "--xi-multipliers", "0.0625,0.125,0.25,0.5,1,2"]),
    *[(f"{EPOCHS_SHORT}-b{budget}", f"{EPOCHS_SHORT}-b{budget}",
       ["--task", "lm", "--train-bytes", str(EPOCHS_TRAIN_BYTES), "--budgets", str(budget),
        "--seeds", "0,1", "--optimizers", "amos-wsd", *short_recipe_flags(budget),
        "--xi-multipliers", grid]) for budget, grid in EPOCHS_SHORT_GRIDS.items()],
    *[(f"{DIGITS_SHORT}-b{budget}", f"{DIGITS_SHORT}-b{budget}",
       ["--task", "digits", "--budgets", str(budget), "--seeds", "0,1,2", "--optimizers",
        "amos-wsd", *short_recipe_flags(budget)]) for budget in DIGITS_BUDGETS],
    (NOMOM_LOW_XI, NOMOM_LOW_XI, ["--task", "lm", "--budgets", "500,1000", "--seeds", "0,1,2",
                                  "--optimizers", "amos-recipe-nomom",
                                  "--xi-multipliers", "0.125,0.25"]),
    # the recipe's check on a text it was not fitted on (its xi grid shows whether 1 x holds)
    (DOCS, DOCS, ["--task", "lm", "--text", DOCS_TEXT, "--budgets", "1000", "--seeds", "0,1",
                  "--optimizers", "amos-recipe,adamw-wsd"]),
    # at 2000 steps Amos's best xi sat at the low edge of {0.5, 1, 2} x (with and without the
    # cooldown): one more grid point below it, on the first two seeds
    (LOW_XI, LOW_XI, ["--task", "lm", "--budgets", "2000", "--seeds", ABLATION_SEEDS,
                      "--optimizers", "amos,amos-wsd", "--xi-multipliers", "0.25"]),
]
#: what each ablation changes, against the baseline (the lm study's amos-wsd at 1000 steps)
ABLATIONS = {
    "full-slots": "full-size slots (150% of AdamW's state) instead of factored",
    "constant-eta": "one eta = 0.1 for every tensor instead of the automatic scales",
    "momentum-0": "momentum 0 instead of 0.9",
    "beta-0.99": "beta 0.99 instead of the suggested 0.98",
    "beta-0.999": "beta 0.999 instead of the suggested 0.98",
    "cooldown-0.1": "cooldown over the last 10% instead of 20%",
    "cooldown-0.3": "cooldown over the last 30% instead of 20%",
    "cooldown-1-sqrt": "1-sqrt cooldown shape instead of linear",
    "beta-0.999-b500": "beta 0.999 instead of the suggested 0.98, at 500 steps",
}
#: ablations at another budget than ABLATION_BUDGET (their baseline is the lm study's there)
ABLATION_BUDGETS = {"beta-0.999-b500": 500}


def docs_text(root: Path) -> Path:
    """The text of stage DOCS, written once under ``root`` (an absolute path, so that a resumed
    study keeps its fingerprint from any working directory)."""
    path = (root / DOCS / "python3.11-docs.txt").resolve()
    if not path.exists():
        files = sorted(DOCS_SOURCES.rglob("*.txt"))
        if not files:
            raise SystemExit(f"stage {DOCS}: no documentation sources in {DOCS_SOURCES}; "
                             "install them with `apt-get install python3.11-doc`")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(f.read_bytes() for f in files))
    return path


def command(folder: str, args: list[str], root: Path, jobs: int) -> list[str]:
    """The ``amos compare`` arguments of a stage (DOCS_TEXT stands for :func:`docs_text`)."""
    args = [str(docs_text(root)) if a == DOCS_TEXT else a for a in args]
    return ["compare", *args, "--jobs", str(jobs), "--out", str(root / folder), "--no-progress"]


def run_stages(root: Path, jobs: int, only: str | None) -> None:
    for name, folder, args in STAGES:
        if only is not None and name != only:
            continue
        argv = command(folder, args, root, jobs)
        print(f"== {name}: amos {shlex.join(argv)}", flush=True)
        status = amos_main(argv)
        if status != 0:
            raise SystemExit(status)


def rebuild(root: Path, folder: str, args: list[str]) -> None:
    """Rewrites a stage's results.json, report and plots from every run in its ``runs/``,
    without running anything: after ``amos compare`` with a subset of the stage's optimizers,
    budgets, seeds or grid values (which rewrites them for that subset), the outputs of the
    stage's own ``args`` again (its grids: the task's defaults, or its ``--xi-multipliers``).
    Runs not done yet show as missing."""
    from amosopt.compare import jobs, report
    from amosopt.compare.config import DEFAULTS, CompareConfig
    from amosopt.compare.plan import plan

    out = root / folder
    results = json.loads((out / "results.json").read_text())
    value = {flag: args[args.index(flag) + 1] for flag in ("--optimizers", "--budgets", "--seeds")}
    # the grids too: a run with a subset of them (--xi-multipliers, --lrs) recorded its own
    defaults = DEFAULTS[results["config"]["task"]]["full"]
    xi = (args[args.index("--xi-multipliers") + 1].split(",") if "--xi-multipliers" in args
          else defaults["xi_multipliers"])
    results["config"].update(optimizers=value["--optimizers"].split(","),
                             budgets=[int(b) for b in value["--budgets"].split(",")],
                             seeds=[int(s) for s in value["--seeds"].split(",")],
                             xi_multipliers=[float(m) for m in xi],
                             grids={k: list(v) for k, v in defaults["grids"].items()},
                             out=str(out))  # where it is now (a stage folder may be renamed)
    config = CompareConfig(**results["config"])
    specs = plan(config)
    done = jobs.load_done(out / "runs")
    results["planned"] = [s.key for s in specs]
    results["runs"] = [done[s.key] for s in specs if s.key in done]
    results["complete"] = len(results["runs"]) == len(specs)
    report.write_outputs(results, out)


# --------------------------------------------------------------------------------------------
# The summary


def _load(root: Path, folder: str) -> dict | None:
    path = root / folder / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def _restricted(results: dict, **config: Any) -> dict:
    """``results`` summarised over a subset of its budgets, seeds or optimizers."""
    subset = copy.deepcopy(results)
    subset["config"].update(config)
    return summarize(subset)


def _tuned(summary: dict, budget: int, name: str, which: str = "tuned") -> dict | None:
    entry = summary["budgets"].get(str(budget), {}).get("optimizers", {}).get(name, {})
    return entry.get(which)


def _reference(summary: dict, budget: int) -> dict | None:
    """The entry of a budget's reference (its best AdamW)."""
    s = summary["budgets"][str(budget)]
    return next((e for e in s["entries"] if e["label"] == s["reference"]), None)


def _per_seed(entry: dict, other: dict) -> dict[str, float]:
    """``entry``'s final loss minus ``other``'s, per seed both have a loss for."""
    return {s: loss - other["losses"][s] for s, loss in entry["losses"].items()
            if loss is not None and other["losses"].get(s) is not None}


def _fmt(entry: dict | None) -> str:
    if not entry or entry.get("mean") is None:
        return "not run"
    return f"{entry['mean']:.4f} ± {entry['sd']:.4f} (n={entry['n']})"


def _against_reference(results: dict, name: str, what: str) -> list[dict]:
    """``name`` (tuned) against the best AdamW at each budget, then its best reach (the share
    of the budget it needs for the reference's final loss) as one more row."""
    summary = results["summary"]
    rows, reach_percent = [], []
    for budget in results["config"]["budgets"]:
        entry = _tuned(summary, budget, name)
        reference = _reference(summary, budget)
        if not entry or not reference or entry.get("n", 0) < reference.get("n", 0):
            continue
        test = entry.get("paired_test") or {}
        rows.append({"target": f"{what} <= best AdamW at {budget} steps",
                     "met": entry["mean"] <= reference["mean"], "amos": entry["mean"],
                     "reference": reference["mean"], "reference_label": reference["label"],
                     "n": entry["n"], "p": test.get("p"),
                     "difference": entry["mean"] - reference["mean"]})
        reach = entry.get("reach") or {}
        if reach.get("reached") == reach.get("seeds") and reach.get("percent_mean") is not None:
            reach_percent.append((budget, reach["percent_mean"]))
    if rows:
        best = min(reach_percent, key=lambda x: x[1]) if reach_percent else None
        rows.append({"target": f"{what} reaches the best AdamW's loss in <= 70% of the steps at "
                               "one budget at least",
                     "met": bool(best and best[1] <= 70),
                     "best_budget": best and best[0], "percent": best and best[1]})
    return rows


def _against_adafactor(results: dict, lm: dict, name: str, what: str) -> list[dict]:
    """``name`` (tuned) against Adafactor tuned on the same seeds: those where ``name``
    finished its whole grid (two of three at a budget where compute forced it), paired."""
    rows = []
    for budget in results["config"]["budgets"]:
        amos = _tuned(results["summary"], budget, name)
        if not amos or amos.get("mean") is None:
            continue
        seeds = sorted(int(seed) for seed in amos["losses"])
        adafactor = _tuned(_restricted(lm, seeds=seeds, budgets=[budget]), budget, "adafactor")
        if not adafactor or adafactor.get("mean") is None:
            continue
        test = paired_test(amos, adafactor)
        rows.append({"target": f"{what} <= Adafactor at {budget} steps",
                     "met": amos["mean"] <= adafactor["mean"], "amos": amos["mean"],
                     "reference": adafactor["mean"], "reference_label": "adafactor (tuned)",
                     "n": amos["n"], "p": test["p"],
                     "difference": amos["mean"] - adafactor["mean"]})
    return rows


def targets(lm: dict, momentum_0: dict | None, epochs: dict | None = None) -> list[dict]:
    """The study's targets, each met or not, with its numbers: the recipe (and, as before it,
    amos-wsd) against the best AdamW; without momentum against Adafactor; and the paper's
    recipe over several epochs."""
    optimizers = lm["config"]["optimizers"]
    rows = []
    if "amos-recipe" in optimizers:
        rows += _against_reference(lm, "amos-recipe", "amos-recipe (tuned)")
    rows += _against_reference(lm, "amos-wsd", "amos-wsd (tuned)")
    if "amos-recipe-nomom" in optimizers:
        rows += _against_adafactor(lm, lm, "amos-recipe-nomom",
                                   "amos-recipe without momentum (tuned)")
    if momentum_0 is not None:
        rows += _against_adafactor(momentum_0, lm, "amos-wsd", "Amos without momentum")
    if epochs is not None:
        rows += _against_reference(epochs, "amos", "several epochs: the paper's recipe (amos)")
    return rows


#: the optimizers at about half of AdamW's state, compared at every lm budget
PEERS = ("amos-recipe", "adam-mini", "muon")


def peers(lm: dict) -> list[dict]:
    """The recipe, Adam-mini and Muon (each tuned on its own grid) at every lm budget: final
    loss, state as a share of AdamW's, and each one's difference to the recipe, per seed, with
    the paired t-test (the summary's, against the recipe instead of AdamW)."""
    rows = []
    for budget in lm["config"]["budgets"]:
        summary = _restricted(lm, budgets=[budget])
        adamw = next((e for e in summary["budgets"][str(budget)]["entries"]
                      if e["optimizer"] == "adamw-wsd" and e["label"].endswith("(tuned)")), None)
        recipe = _tuned(summary, budget, "amos-recipe")
        for name in PEERS:
            entry = _tuned(summary, budget, name)
            if not entry or entry.get("mean") is None or not recipe:
                continue
            test = paired_test(entry, recipe) if name != "amos-recipe" else None
            grid = summary["budgets"][str(budget)]["optimizers"][name]
            rows.append({
                "budget": budget, "optimizer": name, "value": entry["value"],
                "at_grid_edge": grid.get("tuned_at_grid_edge"), "mean": entry["mean"],
                "sd": entry["sd"], "n": entry["n"],
                "state_percent_of_adamw": (100 * entry["state_bytes"] / adamw["state_bytes"]
                                           if adamw and adamw.get("state_bytes") else None),
                "minus_recipe": None if test is None else _per_seed(entry, recipe),
                "p": None if test is None else test["p"]})
    return rows


def ablations(root: Path, lm: dict) -> list[dict]:
    seeds = [int(s) for s in ABLATION_SEEDS.split(",")]
    bases = {}
    for budget in sorted({ABLATION_BUDGET, *ABLATION_BUDGETS.values()}):
        if budget in lm["config"]["budgets"]:
            bases[budget] = _tuned(_restricted(lm, seeds=seeds, budgets=[budget],
                                               optimizers=["amos-wsd"]), budget, "amos-wsd")
    rows = [{"ablation": "baseline" if budget == ABLATION_BUDGET else f"baseline-b{budget}",
             "change": "factored slots, automatic eta, momentum 0.9, suggested beta, 20% linear "
                       "cooldown" + ("" if budget == ABLATION_BUDGET else f", at {budget} steps"),
             "entry": base, "budget": budget} for budget, base in bases.items()]
    for name, change in ABLATIONS.items():
        budget = ABLATION_BUDGETS.get(name, ABLATION_BUDGET)
        folder = "lm-momentum-0" if name == "momentum-0" else f"ablation-{name}"
        results = _load(root, folder)
        entry = None
        if results is not None:
            entry = _tuned(_restricted(results, budgets=[budget], seeds=seeds), budget,
                           "amos-wsd")
        rows.append({"ablation": name, "change": change, "entry": entry, "budget": budget})
    for row in rows:
        entry, base = row["entry"], bases.get(row["budget"])
        row["mean"] = entry and entry.get("mean")
        row["tuned_xi_multiplier"] = entry and entry.get("value")
        row["difference"] = (None if row["mean"] is None or not base or base["mean"] is None
                             else row["mean"] - base["mean"])
        if base and entry and entry.get("losses") and base.get("losses"):
            row["per_seed_difference"] = _per_seed(entry, base)
    return rows


def combined(root: Path, lm: dict) -> list[dict]:
    """The combined stage against the default schedule, Amos and AdamW alike (per seed)."""
    results = _load(root, COMBINED)
    if results is None:
        return []
    seeds = [int(s) for s in ABLATION_SEEDS.split(",")]
    default = _restricted(lm, seeds=seeds, budgets=[ABLATION_BUDGET])
    mine = _restricted(results, seeds=seeds, budgets=[ABLATION_BUDGET])
    setting = " ".join(COMBINED_FLAGS).replace("--", "")
    rows = [{"run": f"{name}, {label}", "entry": _tuned(summary, ABLATION_BUDGET, name)}
            for label, summary in (("default schedule", default), (setting, mine))
            for name in ("amos-wsd", "adamw-wsd")]
    for row in rows:
        entry = row["entry"] or {}
        row["mean"], row["value"] = entry.get("mean"), entry.get("value")
        row["losses"] = entry.get("losses") or {}
    for amos, adamw in (rows[0], rows[1]), (rows[2], rows[3]):
        amos["vs_adamw_same_schedule"] = _per_seed(amos, adamw)
    return rows


def low_xi(root: Path, lm: dict) -> list[dict]:
    """Amos's xi grid at 2000 steps extended below its low edge (stage LOW_XI), on its seeds."""
    results = _load(root, LOW_XI)
    if results is None:
        return []
    budget, seeds = results["config"]["budgets"][0], results["config"]["seeds"]
    main, extra = (_restricted(r, seeds=seeds, budgets=[budget]) for r in (lm, results))
    rows = []
    for name in ("amos", "amos-wsd"):
        grid_main = main["budgets"][str(budget)]["optimizers"].get(name)
        grid_extra = extra["budgets"][str(budget)]["optimizers"].get(name)
        if not grid_main or not grid_extra or any(
                None in grid["mean_by_value"].values() for grid in (grid_main, grid_extra)):
            continue  # a seed's run not done yet on either grid
        means = {float(v): m for v, m in {**grid_main["mean_by_value"],
                                          **grid_extra["mean_by_value"]}.items()}
        best = min(means, key=lambda v: means[v])
        rows.append({"optimizer": name, "budget": budget, "seeds": seeds,
                     "mean_by_value": dict(sorted(means.items())), "best_value": best,
                     "best_at_grid_edge": best in (min(means), max(means)),
                     "study_value": grid_main["tuned_value"],
                     "gain_over_study_value": means[best] - means[grid_main["tuned_value"]]})
    return rows


def fit_and_check(root: Path, lm: dict) -> list[dict]:
    """The recipe where its rule was fitted (lm, on the seeds of the check) against the check
    (stage DOCS, another text): its xi grid, its best multiplier (1 x: the rule holds), and
    its difference to the tuned AdamW-WSD, per seed."""
    results = _load(root, DOCS)
    if results is None:
        return []
    budget, seeds = results["config"]["budgets"][0], results["config"]["seeds"]
    rows = []
    for label, summary in (("fit: lm (Python source)", _restricted(lm, seeds=seeds,
                                                                     budgets=[budget])),
                           ("check: Python's documentation", results["summary"])):
        grid = summary["budgets"][str(budget)]["optimizers"].get("amos-recipe")
        recipe = _tuned(summary, budget, "amos-recipe", "suggested")
        adamw = _tuned(summary, budget, "adamw-wsd")
        if not grid or not recipe or not adamw or None in grid["mean_by_value"].values():
            continue
        rows.append({"setting": label, "budget": budget, "seeds": seeds,
                     "mean_by_value": grid["mean_by_value"], "best_value": grid["tuned_value"],
                     "recipe": recipe["mean"], "adamw_wsd": adamw["mean"],
                     "adamw_wsd_lr": adamw["value"],
                     "difference": _per_seed(recipe, adamw)})
    return rows


def _per_budget(root: Path, prefix: str) -> list[str]:
    """The folders of a stage run once per budget (``<prefix>-b<budget>``), by budget."""
    budgets = {path.name: path.name.removeprefix(f"{prefix}-b")
               for path in root.glob(f"{prefix}-b*")}
    return sorted((name for name, b in budgets.items() if b.isdigit()),
                  key=lambda name: int(budgets[name]))


def past_onset(root: Path) -> list[dict]:
    """Budgets past Amos's decay onset (several epochs of lm, the EPOCHS_SHORT stages' budgets and
    seeds; digits), where ``amos suggest --steps`` keeps the paper's recipe: Amos constant (that
    recipe), with a cooldown, and with the short-budget recipe's settings (stages EPOCHS_SHORT and
    DIGITS_SHORT), each tuned, against the best AdamW of the same seeds, per seed."""
    rows = []
    for task, folder in [*[(EPOCHS, name) for name in _per_budget(root, EPOCHS_SHORT)],
                         *[("digits", name) for name in _per_budget(root, DIGITS_SHORT)]]:
        short, base_results = _load(root, folder), _load(root, task)
        if short is None or base_results is None:
            continue
        budget, seeds = short["config"]["budgets"][0], short["config"]["seeds"]
        if budget not in base_results["config"]["budgets"]:
            continue
        base = _restricted(base_results, seeds=seeds, budgets=[budget])
        reference = _reference(base, budget)
        if not reference or reference.get("n", 0) < len(seeds):
            continue
        for setting, summary, name in (
                ("amos: the paper's recipe, constant xi (what amos suggest gives here)", base,
                 "amos"),
                ("amos-wsd: with a 20% cooldown", base, "amos-wsd"),
                ("amos-wsd with the short-budget recipe's settings",
                 _restricted(short, seeds=seeds, budgets=[budget]), "amos-wsd"),
                (f"the reference: {reference['label']}", base, reference["optimizer"])):
            entry = _tuned(summary, budget, name)
            if not entry or entry.get("n", 0) < len(seeds):
                continue
            rows.append({"task": task, "budget": budget, "seeds": seeds, "setting": setting,
                         "entry": entry, "value": entry["value"],
                         "reference": reference["label"],
                         "minus_reference": _per_seed(entry, reference)})
    return rows


def _final_losses(results: dict, name: str, budget: int) -> dict[float, dict[int, float]]:
    """``{grid value: {seed: final validation loss}}`` of one optimizer's finished runs."""
    losses: dict[float, dict[int, float]] = {}
    for run in results.get("runs", []):
        if (run["optimizer"] == name and run["budget"] == budget
                and run.get("final_val_loss") is not None):
            losses.setdefault(float(run["value"]), {})[run["seed"]] = run["final_val_loss"]
    return losses


def nomom_extended(root: Path, lm: dict) -> list[dict]:
    """The recipe without momentum on its grid extended below 0.5 x (stage NOMOM_LOW_XI and
    the lm study's {0.5, 1, 2} x), tuned on the union at each budget, against the tuned
    Adafactor on the same seeds (paired, per seed)."""
    extra = _load(root, NOMOM_LOW_XI)
    if extra is None:
        return []
    rows = []
    for budget in extra["config"]["budgets"]:
        grid = _final_losses(lm, "amos-recipe-nomom", budget)
        for value, seeds in _final_losses(extra, "amos-recipe-nomom", budget).items():
            grid.setdefault(value, {}).update(seeds)
        seeds = extra["config"]["seeds"]
        complete = {v: by_seed for v, by_seed in grid.items()
                    if all(s in by_seed for s in seeds)}
        adafactor = _tuned(_restricted(lm, seeds=seeds, budgets=[budget]), budget, "adafactor")
        if not complete or not adafactor or adafactor.get("n", 0) < len(seeds):
            continue
        means = {v: sum(by_seed[s] for s in seeds) / len(seeds)
                 for v, by_seed in sorted(complete.items())}
        best = min(means, key=means.get)
        rows.append({"budget": budget, "seeds": seeds, "mean_by_value": means,
                     "best_value": best, "best_at_grid_edge": best in (min(means), max(means)),
                     "mean": means[best], "adafactor": adafactor["mean"],
                     "adafactor_lr": adafactor["value"],
                     "difference": {s: complete[best][s] - adafactor["losses"][str(s)]
                                    for s in seeds}})
    return rows


def table(results: dict) -> list[str]:
    """One row per optimizer entry, one column per budget: mean ± sd and reach."""
    summary = results["summary"]
    budgets = results["config"]["budgets"]
    labels: list[str] = []
    for budget in budgets:
        for entry in summary["budgets"][str(budget)]["entries"]:
            if entry["label"] not in labels:
                labels.append(entry["label"])
    lines = ["| optimizer | " + " | ".join(f"{b} steps" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for label in labels:
        cells = []
        for budget in budgets:
            s = summary["budgets"][str(budget)]
            entry = next((e for e in s["entries"] if e["label"] == label), None)
            cell = _fmt(entry)
            if entry and label == s["reference"]:
                cell = f"**{cell}** (reference)"
            elif entry and (entry.get("reach") or {}).get("reached"):
                reach = entry["reach"]
                cell += f"; reaches ref. at {reach['percent_mean']:.0f}%" + (
                    "" if reach["reached"] == reach["seeds"] else
                    f" ({reach['reached']}/{reach['seeds']} seeds)")
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _grid_cells(row: dict, values: list[float]) -> str:
    """A grid row's mean loss at each of ``values`` (blank where not run) and its best value."""
    cells = [f"{row['mean_by_value'][v]:.4f}" if v in row["mean_by_value"] else ""
             for v in values]
    edge = " (grid edge)" if row["best_at_grid_edge"] else ""
    return " | ".join(cells) + f" | {row['best_value']:g} x{edge}"


def write_summary(root: Path) -> dict:
    lm = _load(root, "lm")
    out: dict[str, Any] = {"tasks": {}, "targets": [], "ablations": []}
    lines = ["# The multi-budget study: summary", "",
             "Final validation loss (mean ± sd over seeds) of each optimizer at its tuned value "
             "(and Amos at the suggested xi), per budget; 'reaches ref.' is the mean share of "
             "the budget after which a run is at or below the reference's final loss of the "
             "same seed. Written by `benchmarks/study.py --summary`.", ""]
    for task in ("lm", "digits", EPOCHS):
        results = _load(root, task)
        if results is None:
            continue
        done, planned = len(results.get("runs", [])), len(results.get("planned", []))
        lines += [f"## {task} ({done} of {planned} runs done)", "", *table(results), ""]
        out["tasks"][task] = {"runs_done": done, "runs_planned": planned,
                              "summary": results["summary"]}
    if lm is not None:
        out["targets"] = targets(lm, _load(root, "lm-momentum-0"), _load(root, EPOCHS))
        lines += ["## Targets", "", "| target | met | numbers |", "|---|---|---|"]
        for row in out["targets"]:
            if "percent" in row:
                numbers = ("never at every seed" if row["percent"] is None else
                           f"best: {row['percent']:.0f}% at {row['best_budget']} steps")
            else:
                p = "" if row.get("p") is None else f", paired t-test p = {row['p']:.2g}"
                numbers = (f"{row['amos']:.4f} vs {row['reference']:.4f} "
                           f"({row['reference_label']}), difference {row['difference']:+.4f}, "
                           f"n = {row['n']}{p}")
            lines.append(f"| {row['target']} | {'yes' if row['met'] else 'no'} | {numbers} |")
        out["peers"] = peers(lm)
        if out["peers"]:
            lines += ["", "## At about half of AdamW's state: the recipe, Adam-mini and Muon "
                          "(lm, each tuned on its own grid)", "",
                      "| budget | optimizer | final loss | tuned value | state, % of AdamW "
                      "| minus the recipe, per seed | paired t-test p |",
                      "|---|---|---|---|---|---|---|"]
            for row in out["peers"]:
                edge = " (**grid edge**)" if row["at_grid_edge"] else ""
                state = ("" if row["state_percent_of_adamw"] is None
                         else f"{row['state_percent_of_adamw']:.1f}%")
                diff = ", ".join(f"{d:+.3f}" for d in (row["minus_recipe"] or {}).values())
                p = "" if row["p"] is None else f"{row['p']:.2g}"
                lines.append(f"| {row['budget']} | {row['optimizer']} | {row['mean']:.4f} ± "
                             f"{row['sd']:.4f} (n={row['n']}) | {row['value']:g}{edge} | "
                             f"{state} | {diff} | {p} |")
        out["ablations"] = ablations(root, lm)
        lines += ["", f"## Ablations (lm, {ABLATION_BUDGET} steps, seeds {ABLATION_SEEDS}, "
                      "amos-wsd with its xi tuned on {0.5, 1, 2} x suggested; without momentum on "
                      "{0.125, 0.25, 0.5, 1, 2} x)", "",
                  "| ablation | change | final loss | vs baseline (per seed) "
                  "| tuned xi multiplier |",
                  "|---|---|---|---|---|"]
        for row in out["ablations"]:
            difference = "" if row["difference"] is None else f"{row['difference']:+.4f}"
            per_seed = row.get("per_seed_difference") or {}
            if per_seed and not row["ablation"].startswith("baseline"):
                difference += " (" + ", ".join(f"{d:+.3f}" for d in per_seed.values()) + ")"
            multiplier = ("" if row["tuned_xi_multiplier"] is None else
                          f"{row['tuned_xi_multiplier']:g}")
            lines.append(f"| {row['ablation']} | {row['change']} | {_fmt(row['entry'])} | "
                         f"{difference} | {multiplier} |")
        out["combined"] = combined(root, lm)
        if out["combined"]:
            lines += ["", f"## Combined (lm, {ABLATION_BUDGET} steps, seeds {ABLATION_SEEDS}): "
                          "the ablations that helped, together, against AdamW under the same "
                          "schedule", "",
                      "| run | final loss | tuned value | Amos - AdamW (same schedule), per seed |",
                      "|---|---|---|---|"]
            for row in out["combined"]:
                diff = row.get("vs_adamw_same_schedule") or {}
                cell = ", ".join(f"{d:+.3f}" for d in diff.values())
                value = "" if row["value"] is None else f"{row['value']:g}"
                lines.append(f"| {row['run']} | {_fmt(row['entry'])} | {value} | {cell} |")
        out["low_xi"] = low_xi(root, lm)
        if out["low_xi"]:
            values = sorted({v for row in out["low_xi"] for v in row["mean_by_value"]})
            first = out["low_xi"][0]
            lines += ["", f"## Amos's xi grid extended at {first['budget']} steps (seeds "
                          f"{', '.join(map(str, first['seeds']))}; mean final loss by "
                          "multiplier of the suggested xi)", "",
                      "| optimizer | " + " | ".join(f"{v:g} x" for v in values)
                      + " | best | vs the study's grid |",
                      "|---|" + "---|" * (len(values) + 2)]
            for row in out["low_xi"]:
                lines.append(f"| {row['optimizer']} | {_grid_cells(row, values)} | "
                             f"{row['gain_over_study_value']:+.4f} |")
        out["nomom_extended"] = nomom_extended(root, lm)
        if out["nomom_extended"]:
            values = sorted({v for row in out["nomom_extended"] for v in row["mean_by_value"]})
            lines += ["", "## The recipe without momentum, its xi grid extended (mean final loss "
                          "by multiplier of the suggested xi), against the tuned Adafactor", "",
                      "| budget | " + " | ".join(f"{v:g} x" for v in values)
                      + " | best | Adafactor (tuned) | recipe - Adafactor, per seed |",
                      "|---|" + "---|" * (len(values) + 3)]
            for row in out["nomom_extended"]:
                per_seed = ", ".join(f"{d:+.3f}" for d in row["difference"].values())
                lines.append(f"| {row['budget']} | {_grid_cells(row, values)} | "
                             f"{row['adafactor']:.4f} (lr {row['adafactor_lr']:g}) | "
                             f"{per_seed} |")
        out["fit_and_check"] = fit_and_check(root, lm)
        if out["fit_and_check"]:
            first = out["fit_and_check"][0]
            lines += ["", f"## The recipe: fit against check ({first['budget']} steps, seeds "
                          f"{', '.join(map(str, first['seeds']))}; the recipe's xi grid, its "
                          "suggested xi against the tuned AdamW-WSD)", "",
                      "| setting | 0.5 x | 1 x | 2 x | best | recipe (1 x) | AdamW-WSD (tuned) "
                      "| recipe - AdamW-WSD, per seed |", "|---|---|---|---|---|---|---|---|"]
            for row in out["fit_and_check"]:
                grid = " | ".join(f"{row['mean_by_value'].get(v, float('nan')):.4f}"
                                  for v in ("0.5", "1", "2"))
                per_seed = ", ".join(f"{d:+.3f}" for d in row["difference"].values())
                lines.append(f"| {row['setting']} | {grid} | {row['best_value']:g} x | "
                             f"{row['recipe']:.4f} | {row['adamw_wsd']:.4f} "
                             f"(lr {row['adamw_wsd_lr']:g}) | {per_seed} |")
    out["past_onset"] = past_onset(root)
    if out["past_onset"]:
        lines += ["", "## Budgets past Amos's decay onset: the paper's recipe against the "
                      "short-budget recipe's settings (each tuned; the reference is the best "
                      "AdamW on the same seeds)", "",
                  "| task, budget, seeds | setting | final loss | tuned value "
                  "| minus the reference, per seed |", "|---|---|---|---|---|"]
        for row in out["past_onset"]:
            where = f"{row['task']}, {row['budget']}, {','.join(map(str, row['seeds']))}"
            diff = ", ".join(f"{d:+.3f}" for d in row["minus_reference"].values())
            lines.append(f"| {where} | {row['setting']} | {_fmt(row['entry'])} | "
                         f"{row['value']:g} | {diff} |")
    (root / "summary.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="benchmarks/results/study", type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", choices=[name for name, _, _ in STAGES])
    parser.add_argument("--list", action="store_true", help="print the stages' commands")
    parser.add_argument("--summary", action="store_true",
                        help="write summary.md and summary.json from what is done")
    parser.add_argument("--rebuild", metavar="STAGE",
                        help="rewrite a stage's results.json and report from its runs, for "
                             "its stage's optimizers, running nothing")
    args = parser.parse_args()
    if args.rebuild:
        stage = next(stage for stage in STAGES if stage[0] == args.rebuild)
        rebuild(args.root, stage[1], stage[2])
    elif args.list:
        for name, folder, stage_args in STAGES:
            print(f"{name}: amos {shlex.join(command(folder, stage_args, args.root, args.jobs))}")
    elif args.summary:
        write_summary(args.root)
    else:
        run_stages(args.root, args.jobs, args.only)
        write_summary(args.root)


if __name__ == "__main__":
    main()
