"""Where the floor of a compiled Amos step lies on this machine, measured beside fused AdamW.

Rows, timed interleaved as in ``torch_step.py`` (same models, same fixed gradients):

* ``Amos fused=True``: the library's compiled step (factored slots, no clipping);
* ``minimal compiled``: the least a compiled step with factored slots can do, written here
  directly: the mean square of each gradient over its slot's axes (one pass over ``g``), the
  slot arithmetic of the paper (Tian & Parikh 2022, Algorithm 1: ``v``, ``b``, ``c_t``,
  ``d_t``, ``gamma``), the on-device finiteness flag, and one masked update per parameter
  (``theta <- where(ok, theta - decay * theta - step * g, theta)``: read ``g`` and ``theta``,
  write ``theta``), through ``torch.compile(fullgraph=True)``; no validation, no bookkeeping,
  no state dict;
* ``eager streaming``: ``torch._foreach_norm(g)`` (one read of every gradient) plus
  ``torch._foreach_add_(theta, g)`` (two reads and a write): the same four passes over
  parameter-sized memory, each at the speed of a plain eager kernel.

With ``--momentum``, the compiled rows keep a momentum buffer (``m <- mu m + (mu - 1) delta``,
``theta <- theta + m``: six passes) and the streaming row adds ``torch._foreach_add_(m, g)``
(seven: eager binary operations cannot read three tensors and write two in one pass).

    .venv/bin/python benchmarks/torch_step_floor.py --threads 1 --sizes 10M,50M
    .venv/bin/python benchmarks/torch_step_floor.py --threads 1 --momentum 0.9
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amosopt.compare.models import count_parameters  # noqa: E402

from _record import size_list, write_record  # noqa: E402  (beside this script)
from torch_step import SIZES, byte_lm, with_gradients  # noqa: E402

XI, BETA, EPSILON, C_COEF, D_COEF = 0.01, 0.98, 1e-18, 0.25, 0.25


def _slot_axes(p: Tensor, slot_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes a factored slot averages over (all of them for a scalar slot)."""
    if not slot_shape:
        return tuple(range(p.dim()))
    return tuple(i for i, (n, s) in enumerate(zip(p.shape, slot_shape)) if s == 1 and n > 1)


class MinimalStep:
    """The slot arithmetic of the paper and a masked update, nothing else (see the module)."""

    def __init__(self, params: list[Tensor], etas: list[float], axes: list[tuple[int, ...]],
                 momentum: float) -> None:
        self.params, self.etas, self.axes, self.mu = params, etas, axes, momentum
        self.v = [p.grad.square().mean(dim=a, keepdim=True) * 0 for p, a in zip(params, axes)]
        self.b = [torch.zeros_like(v) for v in self.v]
        self.m = [torch.zeros_like(p) for p in params] if momentum else None
        self.t = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def __call__(self) -> list[Tensor]:
        self.t.add_(1)
        g2 = [p.grad.square().mean(dim=a, keepdim=True) for p, a in zip(self.params, self.axes)]
        ok = torch.stack([x.amax() for x in g2]).amax().isfinite()
        bias_correction = (1 - BETA ** self.t).float()
        coefficients = []
        for i, (p, x, v, b) in enumerate(zip(self.params, g2, self.v, self.b)):
            v.copy_(torch.where(ok, BETA * v + (1 - BETA) * x, v))
            rcpl_v_hat = bias_correction / v.clamp_min(EPSILON)
            gamma = (1 + C_COEF * XI**0.5 * b).rsqrt() * XI**2 * rcpl_v_hat * x
            d_t = 1 / (1 + D_COEF * (XI * self.etas[i]) ** 0.5 * b)
            b.copy_(torch.where(ok, b + gamma * (1 + b), b))
            decay, step = 0.5 * gamma * d_t, XI * self.etas[i] * d_t * rcpl_v_hat.sqrt()
            # returned: a graph output is computed once per slot entry, not inlined into the
            # update's loop over every entry of the parameter
            coefficients += [decay, step]
            delta = -decay * p - step * p.grad
            if self.m is None:
                p.copy_(torch.where(ok, p + delta, p))
            else:
                m = self.m[i]
                m_new = self.mu * m + (self.mu - 1) * delta
                m.copy_(torch.where(ok, m_new, m))
                p.copy_(torch.where(ok, p + m_new, p))
        return coefficients


def bench_size(name: str, reps: int, momentum: float, seed: int) -> dict:
    from amosopt.torch import Amos, auto_scales

    model, grads = byte_lm(name, seed)
    table = auto_scales(model, torch.zeros(1, 8, dtype=torch.long))

    def fresh() -> torch.nn.Module:
        return with_gradients(model, grads)

    rows = {}
    rows["AdamW fused"] = torch.optim.AdamW(fresh().parameters(), lr=1e-3, fused=True).step
    m = fresh()
    rows["Amos fused=True"] = Amos(m.named_parameters(), lr=XI, eta=table.eta,
                                   slot_shape=table.slot_shape, momentum=momentum,
                                   fused=True).step
    m = fresh()
    named = list(m.named_parameters())
    etas = [table.eta(n, tuple(p.shape)) for n, p in named]
    axes = [_slot_axes(p, tuple(table.slot_shape(n, tuple(p.shape)))) for n, p in named]
    minimal = MinimalStep([p for _, p in named], etas, axes, momentum)
    rows["minimal compiled"] = torch.compile(minimal, fullgraph=True)
    m = fresh()
    ps, gs = [p.detach() for p in m.parameters()], [p.grad for p in m.parameters()]
    ms = [torch.zeros_like(p) for p in ps] if momentum else None

    def streaming() -> None:
        torch._foreach_norm(gs)
        torch._foreach_add_(ps, gs)
        if ms is not None:
            torch._foreach_add_(ms, gs)

    rows["eager streaming"] = streaming
    warmup = {}
    for label, step in rows.items():  # the compiled rows compile here
        start = time.perf_counter()
        for _ in range(3):
            step()
        warmup[label] = time.perf_counter() - start
    times: dict[str, list[float]] = {label: [] for label in rows}
    order, rng = list(rows), random.Random(seed)
    for _ in range(reps):
        rng.shuffle(order)
        for label in order:
            start = time.perf_counter()
            rows[label]()
            times[label].append(time.perf_counter() - start)
    fused = statistics.median(times["AdamW fused"])
    return {"size": name, "parameters": count_parameters(model), "momentum": momentum,
            "reps": reps,
            "rows": [{"optimizer": label, "median_ms": 1000 * statistics.median(t),
                      "ratio_to_fused_adamw": statistics.median(t) / fused,
                      "warmup_steps_s": warmup[label]} for label, t in times.items()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=size_list(SIZES), default="1M,10M,50M",
                        help="comma list of " + ", ".join(SIZES))
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="default: results/torch_step_floor.json, with --momentum "
                             "torch_step_floor_momentum.json")
    args = parser.parse_args()
    name = "torch_step_floor_momentum.json" if args.momentum else "torch_step_floor.json"
    out = args.out or str(Path(__file__).parent / "results" / name)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for size in args.sizes:
        result = bench_size(size, args.reps, args.momentum, args.seed)
        results.append(result)
        print(f"\n{size}: {result['parameters']:,} parameters, momentum {args.momentum:g}")
        for row in result["rows"]:
            print(f"| {row['optimizer']:18} | {row['median_ms']:8.2f} ms | "
                  f"{row['ratio_to_fused_adamw']:5.2f}x | warm-up {row['warmup_steps_s']:.1f} s |")
    write_record(out, "compiled Amos step against its floor", results,
                 machine={"torch_threads": torch.get_num_threads()},
                 versions={"torch": torch.__version__})


if __name__ == "__main__":
    main()
