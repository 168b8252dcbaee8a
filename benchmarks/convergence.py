"""Convergence: ``amos compare`` on both tasks over several seeds; mean and spread.

Each (task, seed) is one full ``amos compare`` run (Amos against the AdamW sweep, same budget),
written to ``--out/<task>-seed<seed>/``; this script collects the headline numbers: final
validation losses, the step at which Amos reaches AdamW's final loss (% of AdamW's budget; a run
that does not reach it counts as "not reached"), Amos's state memory as a % of AdamW's.

    .venv/bin/python benchmarks/convergence.py --quick --threads 1   # what fits in ~30 min
    .venv/bin/python benchmarks/convergence.py                        # full budgets (hours)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amosopt.compare import CompareConfig, run_compare  # noqa: E402
from amosopt.compare.report import summarize  # noqa: E402


def spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values), "min": min(values),
            "max": max(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="lm,digits")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="amos compare --quick budgets")
    parser.add_argument("--steps", type=int, default=None, help="override every task's budget")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="amos-results/convergence")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" /
                                              "convergence.json"))
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    record: dict = {"command": " ".join(sys.argv), "tasks": {}}
    for task in tasks:
        rows = []
        for seed in seeds:
            start = time.perf_counter()
            config = CompareConfig(task=task, seed=seed, quick=args.quick, steps=args.steps,
                                   threads=args.threads, progress=False,
                                   out=str(Path(args.out) / f"{task}-seed{seed}"))
            results = run_compare(config)
            s = summarize(results)
            memory = s["state_bytes"]
            row = {
                "seed": seed, "steps": config.steps, "adamw_lr": s.get("adamw_lr"),
                "adamw_final": s.get("adamw_final_val_loss"),
                "amos_final": s.get("amos_final_val_loss"),
                "reach_percent": s.get("amos_reaches_adamw_percent"),
                "amos_state_percent": {k: 100 * v / memory["adamw"] for k, v in memory.items()
                                       if k != "adamw"},
                "seconds": time.perf_counter() - start,
            }
            rows.append(row)
            reach = row["reach_percent"]
            reach = "not reached" if reach is None else f"{reach:.0f}%"
            print(f"{task} seed {seed}: AdamW {row['adamw_final']:.4f} (lr {row['adamw_lr']:g})"
                  f", Amos {row['amos_final']:.4f}, reach {reach} [{row['seconds']:.0f} s]",
                  flush=True)
        reached = [r["reach_percent"] for r in rows if r["reach_percent"] is not None]
        record["tasks"][task] = {
            "runs": rows,
            "adamw_final": spread([r["adamw_final"] for r in rows]),
            "amos_final": spread([r["amos_final"] for r in rows]),
            "reach_percent": spread(reached),
            "reached": f"{len(reached)}/{len(rows)}",
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print("\n| task | seeds | AdamW final (mean ± sd) | Amos final (mean ± sd) | Amos reaches "
          "AdamW | at % of budget (mean, range) |")
    print("|---|---|---|---|---|---|")
    for task, t in record["tasks"].items():
        reach = t["reach_percent"]
        where = (f"{reach['mean']:.0f}% ({reach['min']:.0f}-{reach['max']:.0f})"
                 if reach["n"] else "-")
        print(f"| {task} | {len(t['runs'])} | {t['adamw_final']['mean']:.4f} ± "
              f"{t['adamw_final']['stdev']:.4f} | {t['amos_final']['mean']:.4f} ± "
              f"{t['amos_final']['stdev']:.4f} | {t['reached']} | {where} |")
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
