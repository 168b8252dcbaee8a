"""A/B: ``optimizer.step()`` of this checkout's ``amosopt.torch.Amos`` against another revision's.

The other revision's ``amosopt`` package is extracted with ``git archive`` into a temporary
directory and imported first; its modules are then renamed out of the way in ``sys.modules``, so
both versions live in one process. For each model and configuration both optimizers own a copy
of the same parameters and get the same fixed gradients; each repetition steps every optimizer
once, in a shuffled order, so load from other processes hits all alike. Reported: median step
times and the median of the per-repetition ratios new / old (below 1: the checkout is faster).

    .venv/bin/python benchmarks/torch_step_ab.py --base main --threads 1 --reps 30
    .venv/bin/python benchmarks/torch_step_ab.py --models small-full --reps 10
"""

from __future__ import annotations

import argparse
import copy
import importlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent

#: name -> (width, layers) of ``ByteLM``: the README's models, and one of many small tensors
#: (198 tensors, 0.84M parameters)
MODELS = {"1M": (256, 1), "10M": (512, 3), "50M": (1024, 4), "small": (64, 16)}
#: name -> Amos options besides the scale table (``factored=False``: full-size slots)
CONFIGS = {
    "foreach": dict(clip_value=1.0),
    "foreach no clip": dict(),
    "foreach +mom": dict(clip_value=1.0, momentum=0.9),
    "loop": dict(clip_value=1.0, foreach=False),
    "full slots": dict(clip_value=1.0, factored=False),
    "full slots loop": dict(clip_value=1.0, factored=False, foreach=False),
    "fused": dict(clip_value=1.0, fused=True),
    "fused +mom": dict(clip_value=1.0, momentum=0.9, fused=True),
    "fused no clip": dict(fused=True),
    "fused +mom no clip": dict(momentum=0.9, fused=True),
    "fused full slots": dict(clip_value=1.0, factored=False, fused=True),
}


def import_revision(revision: str) -> Any:
    """``amosopt.torch`` of ``revision``, imported from a ``git archive`` and then renamed in
    ``sys.modules`` so that the checkout's ``amosopt`` can be imported next."""
    if any(name == "amosopt" or name.startswith("amosopt.") for name in sys.modules):
        raise RuntimeError("import_revision must run before amosopt is imported")
    target = tempfile.mkdtemp(prefix=f"amosopt-{revision}-")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "amosopt"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    sys.path.insert(0, target)
    try:
        module = importlib.import_module("amosopt.torch")
    finally:
        sys.path.remove(target)
    for name in [n for n in sys.modules if n == "amosopt" or n.startswith("amosopt.")]:
        sys.modules[f"_{revision}_{name}"] = sys.modules.pop(name)
    return module


def bench_model(name: str, configs: list[str], versions: dict[str, Any], reps: int,
                warmup: int, seed: int) -> list[dict]:
    from amosopt.compare.models import ByteLM
    from amosopt.torch import auto_scales

    width, layers = MODELS[name]
    torch.manual_seed(seed)
    model = ByteLM(seq_len=128, d_model=width, n_layers=layers, n_heads=max(1, width // 64))
    table = auto_scales(model, torch.zeros(1, 8, dtype=torch.long))
    grads = [torch.randn_like(p) * 1e-2 for p in model.parameters()]
    entries: dict[tuple[str, str], dict] = {}
    for config in configs:
        options = dict(CONFIGS[config])
        factored = options.pop("factored", True)
        for version, module in versions.items():
            copy_ = copy.deepcopy(model)
            for p, g in zip(copy_.parameters(), grads):
                p.grad = g.clone()
            opt = module.Amos(copy_.named_parameters(), lr=0.01, eta=table.eta,
                              slot_shape=table.slot_shape if factored else None, **options)
            entries[config, version] = {"opt": opt, "model": copy_, "times": []}
    order = list(entries)
    rng = random.Random(seed)
    for rep in range(warmup + reps):
        rng.shuffle(order)
        for key in order:
            start = time.perf_counter()
            entries[key]["opt"].step()
            if rep >= warmup:
                entries[key]["times"].append(time.perf_counter() - start)
    rows = []
    old, new = versions
    for config in configs:
        a, b = entries[config, old]["times"], entries[config, new]["times"]
        ratios = [y / x for x, y in zip(a, b)]
        q = statistics.quantiles(ratios, n=4)
        rows.append({"model": name, "parameters": sum(p.numel() for p in model.parameters()),
                     "tensors": len(grads), "config": config,
                     f"{old}_ms": 1000 * statistics.median(a),
                     f"{new}_ms": 1000 * statistics.median(b),
                     "ratio": statistics.median(ratios), "ratio_iqr": [q[0], q[2]]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="the git revision to compare against")
    parser.add_argument("--models", default="1M,10M,small", help=", ".join(MODELS))
    parser.add_argument("--configs", default=",".join(c for c in CONFIGS if "fused" not in c),
                        help=", ".join(CONFIGS))
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out",
                        default=str(ROOT / "benchmarks" / "results" / "torch_step_ab.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = import_revision(args.base)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import amosopt.torch as checkout
    from _record import write_record

    versions = {args.base: base, "checkout": checkout}
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    rows = []
    print(f"| model | config | {args.base} ms | checkout ms | ratio (IQR) |\n|---|---|---|---|---|")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for row in bench_model(name, configs, versions, args.reps, args.warmup, args.seed):
            rows.append(row)
            print(f"| {name} | {row['config']} | {row[f'{args.base}_ms']:.2f} | "
                  f"{row['checkout_ms']:.2f} | {row['ratio']:.3f} "
                  f"({row['ratio_iqr'][0]:.2f}-{row['ratio_iqr'][1]:.2f}) |", flush=True)
    write_record(args.out, f"torch optimizer.step(), checkout against {args.base}", rows,
                 machine={"torch_threads": torch.get_num_threads()},
                 versions={"torch": torch.__version__})


if __name__ == "__main__":
    main()
