"""A jitted optimizer step in JAX: amosopt.optax.amos against optax.adamw and jestimator's Amos.

The parameters are a transformer-shaped pytree (flax layout, kernels (fan_in, fan_out)); every
optimizer gets the same fixed random gradients, and one jitted ``update + apply_updates`` call
(parameters and state donated) is timed, interleaved over optimizers in a shuffled order, after
compilation. Reported: median step time, ratio to optax.adamw, state bytes.

    .venv/bin/python benchmarks/jax_step.py                 # 1M and 10M parameters
    .venv/bin/python benchmarks/jax_step.py --sizes 1M,10M,50M --reps 30
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _record import size_list, write_record  # noqa: E402  (beside this script)
from tests.oracles import jestimator_amos  # noqa: E402  (the import shim, shared with the tests)

SIZES = {"1M": (256, 1), "10M": (512, 3), "50M": (1024, 4)}


def make_params(width: int, layers: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(rng.normal(0, 0.02, shape), jnp.float32)

    params = {"embed": {"embedding": normal(256, width)}}
    for i in range(layers):
        params[f"layer_{i}"] = {
            "ln1": {"scale": jnp.ones(width), "bias": jnp.zeros(width)},
            "qkv": {"kernel": normal(width, 3 * width), "bias": jnp.zeros(3 * width)},
            "out": {"kernel": normal(width, width), "bias": jnp.zeros(width)},
            "ln2": {"scale": jnp.ones(width), "bias": jnp.zeros(width)},
            "fc": {"kernel": normal(width, 4 * width), "bias": jnp.zeros(4 * width)},
            "fc2": {"kernel": normal(4 * width, width), "bias": jnp.zeros(width)},
        }
    params["head"] = {"kernel": normal(width, 256), "bias": jnp.zeros(256)}
    return params


def eta_fn(name: tuple, shape: tuple) -> float:
    """The paper's rules (paper.md §2) in flax layout."""
    if name[-1] == "scale":
        return 1.0
    if name[-1] == "bias":
        return 0.5
    if name[-1] == "embedding":
        return math.sqrt(2 / shape[1])
    if name[-2:] == ("fc2", "kernel"):
        return math.sqrt(2 / shape[0])
    return math.sqrt(1 / shape[0])


def shape_fn(name: tuple, shape: tuple) -> tuple:
    if name[-1] == "embedding":
        return (shape[0], 1)
    if name[-1] == "kernel":
        return (1, shape[1])
    return ()


def transformations() -> dict:
    from amosopt.optax import amos

    makers = {
        "optax.adamw": lambda: optax.adamw(1e-3, weight_decay=0.01),
        "amosopt amos": lambda: amos(0.01, eta_fn, shape_fn, clip_value=1.0),
        "amosopt amos +mom": lambda: amos(0.01, eta_fn, shape_fn, momentum=0.9, clip_value=1.0),
    }
    try:
        reference = jestimator_amos()
        makers["jestimator amos"] = lambda: reference.amos(0.01, eta_fn, shape_fn,
                                                           clip_value=1.0)
        makers["jestimator amos +mom"] = lambda: reference.amos(0.01, eta_fn, shape_fn,
                                                                momentum=0.9, clip_value=1.0)
    except ImportError as error:
        print(f"jestimator not importable ({error}): skipping it", file=sys.stderr)
    return makers


def tree_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def bench_size(name: str, reps: int, warmup: int, seed: int) -> dict:
    width, layers = SIZES[name]
    base = make_params(width, layers, seed)
    n_params = sum(x.size for x in jax.tree.leaves(base))
    key = jax.random.PRNGKey(seed)
    leaves, treedef = jax.tree.flatten(base)
    keys = jax.random.split(key, len(leaves))
    grads = jax.tree.unflatten(treedef, [1e-2 * jax.random.normal(k, x.shape)
                                         for k, x in zip(keys, leaves)])
    entries = {}
    for label, make in transformations().items():
        tx = make()

        def step(params, state, grads, tx=tx):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        params = jax.tree.map(jnp.copy, base)
        state = tx.init(params)
        entries[label] = {"step": jax.jit(step, donate_argnums=(0, 1)), "params": params,
                          "state": state, "times": [], "state_bytes": tree_bytes(state)}
    order = list(entries)
    rng = random.Random(seed)
    for rep in range(warmup + reps):
        rng.shuffle(order)
        for label in order:
            entry = entries[label]
            start = time.perf_counter()
            entry["params"], entry["state"] = entry["step"](entry["params"], entry["state"],
                                                            grads)
            jax.block_until_ready(entry["params"])
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                entry["times"].append(elapsed)
    adamw = statistics.median(entries["optax.adamw"]["times"])
    adamw_bytes = entries["optax.adamw"]["state_bytes"]
    rows = []
    for label, entry in entries.items():
        median = statistics.median(entry["times"])
        rows.append({"optimizer": label, "median_ms": 1000 * median,
                     "ratio_to_adamw": median / adamw, "state_bytes": entry["state_bytes"],
                     "state_percent_of_adamw": 100 * entry["state_bytes"] / adamw_bytes})
    return {"size": name, "parameters": int(n_params), "width": width, "layers": layers,
            "reps": reps, "rows": rows}


def print_table(result: dict) -> None:
    print(f"\n{result['size']}: {result['parameters']:,} parameters, {result['reps']} "
          "interleaved reps (jit, donated buffers)")
    print(f"| {'optimizer':22} | median step | x optax.adamw | state | % of AdamW |")
    print(f"|{'-' * 24}|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['optimizer']:22} | {row['median_ms']:8.2f} ms | "
              f"{row['ratio_to_adamw']:5.2f} | {row['state_bytes'] / 2**10:10.1f} KiB | "
              f"{row['state_percent_of_adamw']:6.2f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=size_list(SIZES), default="1M,10M",
                        help="comma list of " + ", ".join(SIZES))
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "jax_step.json"))
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        results.append(bench_size(size, args.reps, args.warmup, args.seed))
        print_table(results[-1])
    write_record(args.out, "jax jitted optimizer step", results,
                 machine={"devices": [str(d) for d in jax.devices()]},
                 versions={"jax": jax.__version__, "optax": optax.__version__})


if __name__ == "__main__":
    main()
