"""``torch.compile(optimizer.step)`` against the eager step, and what the finiteness check costs.

Three copies of one byte LM with the same fixed gradients, each with its own Amos (automatic
scales, factored slots, clipping, tensor ``lr``):

* ``eager``: ``opt.step()``;
* ``compiled``: ``torch.compile(opt.step)`` (Inductor): phase 1, the check's reduction and phase 2
  as three graphs, with the graph break of the check's host sync between them;
* ``compiled, no check``: the same with the check taken out (``_raise_if_not_finite`` replaced
  by a no-op, so nothing breaks the graph: one graph; for this measurement only, never in use);
* ``eager, skip`` and ``compiled, skip``: ``nonfinite="skip"``, whose check stays on the device,
  eagerly and as ``torch.compile(opt.step, fullgraph=True)`` (one graph).

Timing is interleaved (each repetition steps every copy once, in a shuffled order); reported:
median step times, the median of per-repetition ratios, and the graphs that one compiled step
runs.

    .venv/bin/python benchmarks/torch_compile_step.py --threads 1 --reps 20
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amosopt.torch import Amos, auto_scales  # noqa: E402

from _record import write_record  # noqa: E402  (beside this script)
from torch_step import MODELS, byte_lm, with_gradients  # noqa: E402



def graph_counting_backend(calls: list[int]):
    """Inductor, with a count of the compiled graphs' calls."""
    from torch._inductor.compile_fx import compile_fx

    def backend(graph: torch.fx.GraphModule, example_inputs: list):
        compiled = compile_fx(graph, example_inputs)

        def run(*args):
            calls.append(1)
            return compiled(*args)
        return run
    return backend


def bench(name: str, reps: int, warmup: int, seed: int) -> dict:
    model, grads = byte_lm(name, seed)
    table = auto_scales(model, torch.zeros(1, 8, dtype=torch.long))
    calls: dict[str, list[int]] = {"compiled": [], "compiled, no check": [],
                                   "compiled, skip": []}
    steps = {}
    for variant in ("eager", "compiled", "compiled, no check", "eager, skip", "compiled, skip"):
        copy_ = with_gradients(model, grads)
        opt = Amos(copy_.named_parameters(), lr=torch.tensor(0.01), eta=table.eta,
                   slot_shape=table.slot_shape, clip_value=1.0,
                   nonfinite="skip" if variant.endswith("skip") else "raise")
        if variant.startswith("eager"):
            steps[variant] = opt.step
            continue
        if variant == "compiled, no check":
            opt._raise_if_not_finite = lambda checked: None  # measurement only
        steps[variant] = torch.compile(opt.step, backend=graph_counting_backend(calls[variant]),
                                       fullgraph=variant.endswith("skip"))
    times: dict[str, list[float]] = {k: [] for k in steps}
    graphs: dict[str, int] = {}
    order = list(steps)
    rng = random.Random(seed)
    for rep in range(warmup + reps):
        rng.shuffle(order)
        for key in order:
            if key in calls:
                calls[key].clear()
            start = time.perf_counter()
            steps[key]()
            if rep >= warmup:
                times[key].append(time.perf_counter() - start)
                if key in calls:
                    graphs[key] = len(calls[key])
    row = {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
           "tensors": len(grads), "graphs per step": graphs}
    for key, values in times.items():
        row[f"{key} ms"] = 1000 * statistics.median(values)
        if key != "eager":
            row[f"{key} / eager"] = statistics.median(
                [x / y for x, y in zip(values, times["eager"])])
    row["check cost, compiled"] = statistics.median(
        [x / y for x, y in zip(times["compiled"], times["compiled, no check"])])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # "small" (198 tensors) ran over 30 minutes through this script's graph-counting Inductor
    # wrapper, where a plain torch.compile of its step takes 37 s: not a default
    parser.add_argument("--models", default="1M", help=", ".join(MODELS))
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing (compiles)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "torch_compile_step.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print("| model | tensors | eager ms | compiled ms (/ eager) | no check ms (/ eager) "
          "| check's cost | skip: eager ms (/ eager) | skip: compiled ms (/ eager) "
          "| graphs per step |\n|---|---|---|---|---|---|---|---|---|")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        row = bench(name, args.reps, args.warmup, args.seed)
        rows.append(row)
        print(f"| {name} | {row['tensors']} | {row['eager ms']:.2f} | "
              f"{row['compiled ms']:.2f} ({row['compiled / eager']:.2f}) | "
              f"{row['compiled, no check ms']:.2f} ({row['compiled, no check / eager']:.2f}) | "
              f"{row['check cost, compiled']:.2f}x | "
              f"{row['eager, skip ms']:.2f} ({row['eager, skip / eager']:.2f}) | "
              f"{row['compiled, skip ms']:.2f} ({row['compiled, skip / eager']:.2f}) | "
              f"{row['graphs per step']} |", flush=True)
    write_record(args.out, "torch_compile_step", rows,
                 {"threads": torch.get_num_threads()}, {"torch": torch.__version__})


if __name__ == "__main__":
    main()
