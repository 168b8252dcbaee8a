"""Where does Amos lose to AdamW at 1000 steps? The cheap diagnostic stage of the recipe work.

The study (``benchmarks/study.py``) leaves Amos with a cooldown 0.06 nats/byte behind AdamW with
the same cooldown at lm 1000 and 2000 steps. Each stage here changes one thing at lm 1000 steps
on seeds 0 and 1, with its own grid, and is judged against the study's runs of the same seeds:

* ``eta-x2``, ``eta-x4``: every eta times k and xi divided by k. The initial step ``xi * eta``
  is unchanged; the weight decay ``0.5 * gamma ~ 0.5 xi^2`` is k^2 times weaker, so the weights'
  equilibrium RMS (k * eta) is reached k^2 times later (time constant ``2 k^2 / xi^2`` updates),
  and the learning-rate decay ``d_t`` starts later too. ``constant-eta-x2/x4``: the same with one
  eta = 0.1 (against the study's ``ablation-constant-eta``).
* ``adamw-wd-0.1``: AdamW and AdamW-WSD with weight decay 0.1 (the study used 0.01).
* ``warmup``: Amos with a 5% linear warm-up of xi, its grid reaching 4 x.
* ``beta-0.995``; ``momentum-0.95``, with ``adamw-beta1-0.95`` (AdamW-WSD) as its control.
* ``control``: the study's own amos-wsd rerun on today's code (a difference is drift, not a gain).
* ``row-col``: the row-and-column second moment; ``combined`` (and ``combined-row-col``): the
  changes that each gained about 0.02 alone, together.

Every stage is one ``amos compare`` into ``--root/diag-NAME`` (resumable, like the study). All
stages run seed 0 first, then seed 1, so a cut session has every question answered once.

    .venv/bin/python benchmarks/diagnose.py --jobs 2      # run or resume, then summarise
    .venv/bin/python benchmarks/diagnose.py --jobs 1 --only eta-x2,adamw-wd-0.1  # a part
    .venv/bin/python benchmarks/diagnose.py --summary     # diagnose.md / diagnose.json

Compute: about 5 minutes per run with 2 runs in parallel on an otherwise idle 2-core machine
(four times that beside a test suite); 30 runs per seed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import _load, _restricted, _tuned  # noqa: E402

from amosopt.cli import main as amos_main  # noqa: E402

BUDGET = 1000
SEEDS = (0, 1)
#: Amos's grid (the weaker decays ran {1, 2} x first on seed 0, then 0.5 x: their best sat at 1 x)
AMOS_GRID = "0.5,1,2"
#: the warm-up's grid reaches higher (at k = 1 without warm-up the study's best was 2 x)
WIDE_GRID = "1,2,4"
#: AdamW's grid: the study's best at 1000 steps (3e-3, both schedules) and its neighbours
ADAMW_GRID = "1.5e-3,3e-3,6e-3"

#: the changes that each gained about 0.02 alone, together
COMBINED = ["--amos-decay-ratio", "0.25", "--amos-warmup", str(BUDGET // 20),
            "--amos-beta", "0.995"]

#: (name, arguments of amos compare, what it changes, the baseline's study folder: its runs of
#: the same optimizers and seeds)
STAGES: list[tuple[str, list[str], str, str]] = [
    ("eta-x2", ["--optimizers", "amos-wsd", "--amos-eta-scale", "2",
                "--xi-multipliers", AMOS_GRID],
     "eta x 2, xi / 2: same initial step, decay 4x weaker", "lm"),
    ("eta-x4", ["--optimizers", "amos-wsd", "--amos-eta-scale", "4",
                "--xi-multipliers", AMOS_GRID],
     "eta x 4, xi / 4: same initial step, decay 16x weaker", "lm"),
    ("adamw-wd-0.1", ["--optimizers", "adamw-wsd,adamw", "--adamw-weight-decay", "0.1",
                      "--adamw-lrs", ADAMW_GRID],
     "AdamW weight decay 0.1 instead of 0.01", "lm"),
    ("warmup", ["--optimizers", "amos-wsd", "--amos-warmup", str(BUDGET // 20),
                "--xi-multipliers", WIDE_GRID],
     "5% linear warm-up of xi, grid to 4 x", "lm"),
    ("beta-0.995", ["--optimizers", "amos-wsd", "--amos-beta", "0.995",
                    "--xi-multipliers", AMOS_GRID],
     "beta 0.995 instead of the suggested 0.98", "lm"),
    ("momentum-0.95", ["--optimizers", "amos-wsd", "--amos-momentum", "0.95",
                       "--xi-multipliers", AMOS_GRID],
     "momentum 0.95 instead of 0.9", "lm"),
    ("adamw-beta1-0.95", ["--optimizers", "adamw-wsd", "--adamw-beta1", "0.95",
                          "--adamw-lrs", ADAMW_GRID],
     "AdamW-WSD beta1 0.95 instead of 0.9 (control of momentum-0.95)", "lm"),
    ("constant-eta-x2", ["--optimizers", "amos-wsd", "--amos-eta", "0.1", "--amos-eta-scale", "2",
                         "--xi-multipliers", AMOS_GRID],
     "one eta = 0.1, then x 2 with xi / 2", "ablation-constant-eta"),
    ("control", ["--optimizers", "amos-wsd", "--xi-multipliers", "1,2"],
     "nothing: the study's amos-wsd rerun on today's code (checks that nothing drifted)", "lm"),
    ("row-col", ["--optimizers", "amos-wsd", "--amos-second-moment", "row-col",
                 "--xi-multipliers", AMOS_GRID],
     "row-and-column second moment (Adafactor's rank-1 normaliser)", "lm"),
    ("combined", ["--optimizers", "amos-wsd", *COMBINED, "--xi-multipliers", AMOS_GRID],
     "decay ratio 1/4, 5% warm-up and beta 0.995 together", "lm"),
    ("combined-row-col", ["--optimizers", "amos-wsd", *COMBINED, "--amos-second-moment",
                          "row-col", "--xi-multipliers", AMOS_GRID],
     "decay ratio 1/4, 5% warm-up, beta 0.995 and the row-col second moment", "lm"),
    ("constant-eta-x4", ["--optimizers", "amos-wsd", "--amos-eta", "0.1", "--amos-eta-scale", "4",
                         "--xi-multipliers", AMOS_GRID],
     "one eta = 0.1, then x 4 with xi / 4", "ablation-constant-eta"),
]


def command(name: str, args: list[str], root: Path, jobs: int, seeds: str) -> list[str]:
    # one torch thread per run, as in the study, also with --jobs 1
    threads = ["--threads", "1"] if jobs == 1 else []
    return ["compare", "--task", "lm", "--budgets", str(BUDGET), "--seeds", seeds, *args,
            "--jobs", str(jobs), *threads, "--out", str(root / f"diag-{name}"), "--no-progress"]


def run(root: Path, jobs: int, only: list[str] | None) -> None:
    for last in range(len(SEEDS)):  # every stage on seed 0, then on seeds 0 and 1
        seeds = ",".join(map(str, SEEDS[:last + 1]))
        for name, args, _, _ in STAGES:
            if only is None or name in only:
                argv = command(name, args, root, jobs, seeds)
                print(f"== {name} (seeds {seeds}): amos {shlex.join(argv)}", flush=True)
                if amos_main(argv) != 0:
                    raise SystemExit(1)
                write_summary(root)  # results as they finish


def _grid_row(results: dict, optimizer: str, seeds: list[int]) -> dict | None:
    summary = _restricted(results, seeds=seeds, budgets=[BUDGET])
    entry = summary["budgets"][str(BUDGET)]["optimizers"].get(optimizer)
    if not entry or "tuned" not in entry or entry["tuned"].get("n", 0) < len(seeds):
        return None
    return entry


def summarize(root: Path) -> list[dict]:
    """Each stage's tuned loss against its baseline on the seeds it has finished."""
    rows = []
    for name, _, change, base_folder in STAGES:
        results, base = _load(root, f"diag-{name}"), _load(root, base_folder)
        if results is None or base is None:
            continue
        for optimizer in results["config"]["optimizers"]:
            # each optimizer on the seeds where its whole grid is done (both, or seed 0)
            found = [(seeds, entry) for seeds in ([0, 1], [0])
                     if (entry := _grid_row(results, optimizer, seeds))]
            if not found:
                continue
            seeds, entry = found[0]
            baseline = _tuned(_restricted(base, seeds=seeds, budgets=[BUDGET],
                                          optimizers=[optimizer]), BUDGET, optimizer)
            tuned = entry["tuned"]
            grid = sorted(float(v) for v in entry["mean_by_value"])
            per_seed = {s: tuned["losses"][s] - baseline["losses"][s] for s in tuned["losses"]
                        if baseline and baseline["losses"].get(s) is not None}
            rows.append({"stage": name, "change": change, "optimizer": optimizer,
                         "seeds": seeds, "mean": tuned["mean"], "sd": tuned["sd"],
                         "tuned_value": tuned["value"],
                         "at_grid_edge": tuned["value"] in (grid[0], grid[-1]),
                         "mean_by_value": entry["mean_by_value"],
                         "baseline": f"{base_folder} {optimizer}",
                         "baseline_mean": baseline and baseline["mean"],
                         "baseline_value": baseline and baseline["value"],
                         "difference": (None if not baseline else
                                        tuned["mean"] - baseline["mean"]),
                         "per_seed_difference": per_seed})
    return rows


def write_summary(root: Path) -> list[dict]:
    rows = summarize(root)
    lines = ["# Diagnostic stage: one change at a time, lm 1000 steps", "",
             "Tuned final validation loss (nats/byte) of each change on the seeds it has "
             "finished, against the study's runs of the same optimizer and seeds (the baseline,"
             " tuned on its own grid). Negative is better. Written by "
             "`benchmarks/diagnose.py --summary`.", "",
             "| stage | change | optimizer | seeds | final loss | baseline | difference "
             "(per seed) | tuned value | loss by grid value |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        edge = " (edge)" if r["at_grid_edge"] else ""
        per_seed = ", ".join(f"{d:+.3f}" for d in r["per_seed_difference"].values())
        by_value = ", ".join(f"{float(v):g}: {m:.3f}" for v, m in sorted(
            r["mean_by_value"].items(), key=lambda kv: float(kv[0])) if m is not None)
        base = ("" if r["baseline_mean"] is None else
                f"{r['baseline_mean']:.4f} ({r['baseline_value']:g})")
        diff = "" if r["difference"] is None else f"{r['difference']:+.4f} ({per_seed})"
        lines.append(f"| {r['stage']} | {r['change']} | {r['optimizer']} | "
                     f"{','.join(map(str, r['seeds']))} | {r['mean']:.4f} ± {r['sd']:.4f} | "
                     f"{base} | {diff} | {r['tuned_value']:g}{edge} | {by_value} |")
    (root / "diagnose.json").write_text(json.dumps(rows, indent=2) + "\n")
    (root / "diagnose.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="benchmarks/results/study", type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", metavar="STAGE,...", type=lambda text: text.split(","),
                        help="these stages only (two processes with --jobs 1 and halves of the "
                             "stages keep both cores busy: a stage has 3 runs)")
    parser.add_argument("--summary", action="store_true", help="only summarise what is done")
    args = parser.parse_args()
    if not args.summary:
        run(args.root, args.jobs, args.only)
    write_summary(args.root)


if __name__ == "__main__":
    main()
