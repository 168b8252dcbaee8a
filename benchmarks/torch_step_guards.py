"""What dynamo's guards cost the compiled step of ``Amos(fused=True)``, timed directly.

Before each call of a compiled function, dynamo checks its guards (the conditions under which
the cached graph is still valid: tensor shapes and dtypes, the hyper-parameters it read, the
optimizer's host-side records). This script steps ``Amos(fused=True)`` (factored slots, no
clipping, the models of ``torch_step.py``) until the whole step is compiled, then times:

* ``guard check``: the cache entry's ``guard_manager.check`` on the step's arguments, the
  whole cost of the guards and nothing else;
* ``compiled call``: the compiled step (guards, graph, and dynamo's wrappers);
* ``AdamW fused``: ``torch.optim.AdamW(fused=True).step``, for scale;

each warm (called back to back, the caches hold what the last call touched) and cold (a
tensor larger than the caches, ``--flush-mb``, written before each call, as a forward and
backward pass would leave them).

It counts the guards by what they watch: the optimizer's records (``self._records``, routes
and slot shapes decided on the host), the param groups, the rest. The profiler's "TorchDynamo
Cache Lookup" row is not a measure of this: the profiler inflates it four- to fivefold.

    .venv/bin/python benchmarks/torch_step_guards.py --threads 1 --sizes 1M,10M
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amosopt.compare.models import count_parameters  # noqa: E402

from _record import size_list, write_record  # noqa: E402  (beside this script)
from torch_step import SIZES, byte_lm, with_gradients  # noqa: E402


def _median_us(call: Callable[[], object], calls: int, reps: int) -> float:
    """The median over ``reps`` of the mean time of ``calls`` calls, in microseconds."""
    means = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        means.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(means)


def _median_cold_us(call: Callable[[], object], calls: int, flush: torch.Tensor) -> float:
    """The median time of one call after ``flush`` (a tensor larger than the caches) has been
    written: the caches hold none of the call's memory, as after a forward and backward pass."""
    times = []
    for _ in range(calls):
        flush.add_(1.0)
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def _kind(name: str) -> str:
    return ("records" if name.startswith("self._records") else
            "param groups" if name.startswith("self.param_groups") else "other")


def bench_size(name: str, calls: int, reps: int, seed: int, flush_mb: int) -> dict:
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from amosopt.torch import Amos, _fused, auto_scales

    model, grads = byte_lm(name, seed)
    table = auto_scales(model, torch.zeros(1, 8, dtype=torch.long))
    adamw = torch.optim.AdamW(with_gradients(model, grads).parameters(), lr=1e-3, fused=True)
    kinds: Counter = Counter()

    def count(entries: list) -> list[bool]:  # dynamo's guard_filter_fn: counts, keeps all
        kinds.clear()
        kinds.update(_kind(e.name) for e in entries)
        return [True] * len(entries)

    opt = Amos(with_gradients(model, grads).named_parameters(), lr=0.01, eta=table.eta,
               slot_shape=table.slot_shape, fused=True)
    compile_ = torch.compile

    def counting_compile(fn, **kwargs):  # what Amos's first step compiles, with the counter
        return compile_(fn, **kwargs, options={"guard_filter_fn": count})

    torch.compile = counting_compile
    try:
        for _ in range(3):
            opt.step()
            adamw.step()
    finally:
        torch.compile = compile_
    compiled = opt._compiled
    (entry,) = _debug_get_cache_entry_list(compiled._torchdynamo_orig_callable.__code__)
    frame = {"self": opt, "count_skipped": False}  # the locals of Amos._device_step
    flush = torch.zeros(flush_mb * 2**18)

    def warm_and_cold(call: Callable[[], object], warm_calls: int) -> tuple[float, float]:
        return (_median_us(call, warm_calls, reps),
                _median_cold_us(call, max(1, calls // 10), flush))

    lrs = [group["lr"] for group in opt.param_groups]
    for index, group in enumerate(opt.param_groups):  # as _compiled_step passes them
        group["lr"] = opt._lr_tensors[index]
    try:
        with torch.no_grad():
            if not entry.guard_manager.check(frame):
                raise RuntimeError("the guards fail on the step's own arguments: "
                                   "this script no longer matches Amos._compiled_step")
            guard = warm_and_cold(lambda: entry.guard_manager.check(frame), calls)
            call = warm_and_cold(lambda: _fused.with_constant_floats(compiled,
                                                                      count_skipped=False),
                                 max(1, calls // 20))
    finally:
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr
    adamw_times = warm_and_cold(adamw.step, max(1, calls // 20))
    return {"size": name, "parameters": count_parameters(model),
            "tensors": len(list(model.parameters())), "guards": sum(kinds.values()),
            "guards_by_kind": dict(kinds), "guard_check_us": guard[0],
            "compiled_call_us": call[0], "adamw_fused_us": adamw_times[0],
            "cold": {"flush_mb": flush_mb, "guard_check_us": guard[1],
                     "compiled_call_us": call[1], "adamw_fused_us": adamw_times[1]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=size_list(SIZES), default="1M,10M",
                        help="comma list of " + ", ".join(SIZES))
    parser.add_argument("--calls", type=int, default=1000, help="guard checks per repetition")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flush-mb", type=int, default=64,
                        help="the tensor written before each cold call (larger than the caches)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"
                                             / "torch_step_guards.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for size in args.sizes:
        r = bench_size(size, args.calls, args.reps, args.seed, args.flush_mb)
        results.append(r)
        share = r["guard_check_us"] / r["compiled_call_us"]
        print(f"{size}: {r['parameters']:,} parameters, {r['tensors']} tensors, {r['guards']} "
              f"guards {r['guards_by_kind']}; guard check {r['guard_check_us']:.1f} us, "
              f"compiled call {r['compiled_call_us']:.0f} us ({share:.1%}), "
              f"AdamW fused {r['adamw_fused_us']:.0f} us")
        c = r["cold"]
        print(f"  cold caches: guard check {c['guard_check_us']:.1f} us, compiled call "
              f"{c['compiled_call_us']:.0f} us, AdamW fused {c['adamw_fused_us']:.0f} us")
    write_record(args.out, "dynamo guard check of Amos(fused=True)'s compiled step", results,
                 machine={"torch_threads": torch.get_num_threads()},
                 versions={"torch": torch.__version__})


if __name__ == "__main__":
    main()
