"""How well do factored slots keep each entry's step size? Amos's slots against Adafactor's.

Amos divides a gradient entry by ``sqrt(v)``, where its factored slot ``v`` is the running mean
of ``g^2`` averaged over the slot's reduced axes (paper.md, "slot shapes"). The study found that
full-size slots (one ``v`` per entry) end 0.028 nats/byte lower on lm at 1000 steps, at 150% of
AdamW's state. Would a better factoring keep most of that gain? Adafactor (Shazeer & Stern
2018, arXiv 1804.04235, eq. 4 and Alg. 4) keeps a row mean ``R`` and a column mean ``C`` of a
matrix's ``v`` and uses the rank-1 estimate ``R C^T / mean(R)``, the minimiser of the
I-divergence to ``v`` among rank-1 matrices.

This script follows one run of the study (lm, amos-wsd at the suggested xi, seed 0, 1000 steps),
keeps the full ``v`` of every matrix beside it (``v = beta v + (1 - beta) g^2``, the run's beta),
and at a few steps compares estimates of it:

* Amos: ``v`` averaged over the reduced axes of the automatic slot shape (what Amos's slot holds,
  since averaging commutes with the running mean);
* the other axis: ``v`` averaged over the axes the slot keeps instead (for contrast);
* row and column: ``R C^T / mean(v)``, with the matrix seen as (rows = all leading axes, columns
  = the last axis).

The error of an estimate ``v_hat`` is the step's log-ratio ``|log2 sqrt(v / v_hat)|`` per entry,
weighted by the entry's share of ``sum(v)`` (entries without gradient do not move either way).
It reports that mean (0 = exact; 1 = steps off by 2x on average), and the share of gradient
energy on entries whose step is off by more than 2x. The slot sizes are in elements.

    .venv/bin/python benchmarks/factoring_error.py            # about 4 minutes on one core
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amosopt.compare import optimizers  # noqa: E402
from amosopt.compare import CompareConfig  # noqa: E402
from amosopt.compare.prepare import seed_setup  # noqa: E402
from amosopt.rules import reduced_axes  # noqa: E402
from benchmarks._record import write_record  # noqa: E402


def _mean_over(v: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    return v.mean(dim=axes, keepdim=True).expand_as(v) if axes else v


def amos_estimate(v: torch.Tensor, slot_shape: tuple[int, ...]) -> torch.Tensor:
    """``v`` averaged over the slot's reduced axes (Amos's factored slot)."""
    return _mean_over(v, reduced_axes(v.shape, slot_shape))


def other_axis_estimate(v: torch.Tensor, slot_shape: tuple[int, ...]) -> torch.Tensor:
    """``v`` averaged over the axes Amos's slot keeps instead (one slot per input column)."""
    reduced = reduced_axes(v.shape, slot_shape)
    return _mean_over(v, tuple(i for i, n in enumerate(v.shape) if i not in reduced and n > 1))


def row_column_estimate(v: torch.Tensor) -> torch.Tensor:
    """Adafactor's rank-1 estimate ``R C^T / mean(v)`` of ``v`` seen as a matrix."""
    matrix = v.reshape(-1, v.shape[-1])
    row, column = matrix.mean(dim=1, keepdim=True), matrix.mean(dim=0, keepdim=True)
    return (row * column / matrix.mean()).reshape(v.shape)


def step_error(v: torch.Tensor, v_hat: torch.Tensor) -> tuple[float, float]:
    """(energy-weighted mean of |log2 sqrt(v / v_hat)|, energy share off by more than 2x)."""
    weight = v / v.sum()
    moving = v > 0
    log_ratio = torch.zeros_like(v)
    log_ratio[moving] = 0.5 * torch.log2(v[moving] / v_hat[moving]).abs()
    return float((weight * log_ratio).sum()), float(weight[log_ratio > 1].sum())


def measure(v_full: dict[str, torch.Tensor], slots: dict[str, tuple[int, ...]]) -> list[dict]:
    rows = []
    for name, v in v_full.items():
        amos = step_error(v, amos_estimate(v, slots[name]))
        rowcol = step_error(v, row_column_estimate(v))
        other = step_error(v, other_axis_estimate(v, slots[name]))
        rows.append({
            "name": name, "shape": list(v.shape), "amos_slot_shape": list(slots[name]),
            "entries": v.numel(), "amos_slot_elements": math.prod(slots[name]),
            "row_column_elements": v.numel() // v.shape[-1] + v.shape[-1],
            "amos_error": amos[0], "amos_off_2x": amos[1],
            "row_column_error": rowcol[0], "row_column_off_2x": rowcol[1],
            "other_axis_error": other[0], "other_axis_off_2x": other[1]})
    return rows


def overall(rows: list[dict]) -> dict:
    """Entry-weighted means over the matrices, and the total slot sizes."""
    total = sum(r["entries"] for r in rows)
    out = {key: sum(r[key] * r["entries"] for r in rows) / total
           for key in ("amos_error", "amos_off_2x", "row_column_error", "row_column_off_2x",
                       "other_axis_error", "other_axis_off_2x")}
    out.update(entries=total, amos_slot_elements=sum(r["amos_slot_elements"] for r in rows),
               row_column_elements=sum(r["row_column_elements"] for r in rows))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--at", default="100,500,800,1000", help="steps to measure at")
    parser.add_argument("--out", default="benchmarks/results/factoring_error.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    at = sorted(int(s) for s in args.at.split(","))
    config = CompareConfig(task="lm", budgets=[args.budget], seeds=[args.seed])
    config.resolve()
    setup = seed_setup(asdict(config), args.seed, args.budget)
    task, settings = setup.task, setup.settings
    model = task.make_model()
    model.load_state_dict(setup.init_state)
    built = optimizers.build("amos-wsd", model, 1.0, settings)
    params = {n: p for n, p in model.named_parameters() if p.ndim >= 2}
    slots = {n: tuple(settings.slot_shape(n, tuple(p.shape))) for n, p in params.items()}
    v_full = {n: torch.zeros_like(p) for n, p in params.items()}
    beta = settings.beta
    results = []
    for step in range(1, max(at) + 1):
        inputs, targets = task.batch(step - 1)
        task.loss(model, inputs, targets).backward()
        for name, p in params.items():
            v_full[name].mul_(beta).addcmul_(p.grad, p.grad, value=1 - beta)
        built.optimizer.step()
        if built.scheduler is not None:
            built.scheduler.step()
        built.optimizer.zero_grad(set_to_none=True)
        if step in at:
            rows = measure(v_full, slots)
            results.append({"step": step, "overall": overall(rows), "tensors": rows})
            o = results[-1]["overall"]
            print(f"step {step:5d}: mean |log2 step ratio| Amos {o['amos_error']:.3f}, "
                  f"row+column {o['row_column_error']:.3f}; energy off by >2x: Amos "
                  f"{o['amos_off_2x']:.1%}, row+column {o['row_column_off_2x']:.1%}; the other "
                  f"axis {o['other_axis_error']:.3f} ({o['other_axis_off_2x']:.1%})", flush=True)
    last = results[-1]
    print(f"\nstep {last['step']} | tensor | shape | Amos slot | error: Amos | row+column "
          "| the other axis")
    for r in last["tensors"]:
        print(f"  {r['name']} | {r['shape']} | {r['amos_slot_shape']} | {r['amos_error']:.3f} "
              f"| {r['row_column_error']:.3f} | {r['other_axis_error']:.3f}")
    o = last["overall"]
    print(f"slot elements over the matrices: full {o['entries']:,}, Amos "
          f"{o['amos_slot_elements']:,}, row+column {o['row_column_elements']:,}")
    write_record(args.out, "factoring_error",
                 {"task": "lm", "seed": args.seed, "budget": args.budget, "optimizer": "amos-wsd",
                  "xi": settings.xi, "beta": beta, "measurements": results},
                 machine={}, versions={"torch": torch.__version__})


if __name__ == "__main__":
    main()
