"""Optimizer step time and state memory: amosopt.torch.Amos against AdamW and pytorch_optimizer.

Every optimizer owns a copy of the same model (a GPT-style byte LM, ~1M to ~50M parameters) and
gets the same fixed random gradients; only ``optimizer.step()`` is timed. Timing is interleaved:
each repetition steps every optimizer once, in a shuffled order, so load from other processes
hits all of them alike. Reported: the median step time, its ratio to fused AdamW (the fastest
AdamW on CPU), the bytes of each optimizer's state tensors, and the time of the warm-up steps
(where ``fused=True`` and the compiled rows compile).

    .venv/bin/python benchmarks/torch_step.py            # all sizes; JSON in benchmarks/results
    .venv/bin/python benchmarks/torch_step.py --sizes 1M --reps 10
    .venv/bin/python benchmarks/torch_step.py --device cuda   # on a GPU, synchronised timing

On a GPU each timed step is followed by ``torch.cuda.synchronize()``, so the time is that of the
device work plus the host's launch overhead; rows marked "skip" run ``nonfinite="skip"`` (no
host sync inside the step), "compiled" rows ``torch.compile(opt.step, fullgraph=True)`` (their
first steps, in the warm-up, compile).
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amosopt.compare.models import ByteLM, count_parameters  # noqa: E402
from amosopt.compare.train import state_bytes  # noqa: E402

from _record import size_list, write_record  # noqa: E402  (beside this script)

#: name -> (width, layers): 12 d^2 parameters per layer plus 2 x 256 x d embeddings
SIZES = {"1M": (256, 1), "10M": (512, 3), "50M": (1024, 4)}
#: the sizes and one model of many small tensors: 198 tensors, 0.84M parameters
MODELS = {**SIZES, "small": (64, 16)}
LR = 1e-3


#: rows whose step is ``torch.compile(opt.step, fullgraph=True)``
COMPILED = ("Amos compiled skip", "Amos compiled +mom skip")


def optimizers(model: torch.nn.Module, example: torch.Tensor) -> dict[str, tuple]:
    """name -> (factory(model) -> optimizer); each gets its own model copy later. Amos runs with
    the element-wise ``clip_value=1.0`` of ``amos compare`` unless the name says "no clip"."""
    from amosopt.torch import Amos, auto_scales

    table = auto_scales(model, example)

    def amos(foreach: bool, momentum: float, factored: bool = True, clip: float | None = 1.0,
             fused: bool = False, nonfinite: str = "raise", compiled: bool = False):
        def make(m):
            # compiled: a tensor lr (a float would be a constant of the graph)
            return Amos(m.named_parameters(), lr=torch.tensor(0.01) if compiled else 0.01,
                        eta=table.eta,
                        slot_shape=table.slot_shape if factored else None,
                        momentum=momentum, clip_value=clip, foreach=foreach, fused=fused,
                        nonfinite=nonfinite)
        return make

    makers = {
        "AdamW fused": lambda m: torch.optim.AdamW(m.parameters(), LR, fused=True),
        "AdamW foreach": lambda m: torch.optim.AdamW(m.parameters(), LR, foreach=True),
        "Amos foreach no clip": amos(True, 0.0, clip=None),
        "Amos foreach +mom no clip": amos(True, 0.9, clip=None),
        "Amos foreach": amos(True, 0.0),
        "Amos foreach +mom": amos(True, 0.9),
        "Amos loop": amos(False, 0.0),
        "Amos loop +mom": amos(False, 0.9),
        "Amos foreach full slots": amos(True, 0.0, factored=False),
        "Amos fused no clip": amos(True, 0.0, clip=None, fused=True),
        "Amos fused +mom no clip": amos(True, 0.9, clip=None, fused=True),
        "Amos fused": amos(True, 0.0, fused=True),
        "Amos fused +mom": amos(True, 0.9, fused=True),
        "Amos fused full slots": amos(True, 0.0, factored=False, fused=True),
        "Amos foreach skip": amos(True, 0.0, nonfinite="skip"),
        "Amos foreach +mom skip": amos(True, 0.9, nonfinite="skip"),
        "Amos compiled skip": amos(True, 0.0, nonfinite="skip", compiled=True),
        "Amos compiled +mom skip": amos(True, 0.9, nonfinite="skip", compiled=True),
    }
    try:
        from pytorch_optimizer import Amos as KozistrAmos

        makers["pytorch_optimizer.Amos"] = lambda m: KozistrAmos(m.parameters(), lr=0.01)
    except ImportError:
        print("pytorch_optimizer is not installed: skipping its Amos", file=sys.stderr)
    return makers


def byte_lm(name: str, seed: int) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The model ``name`` (:data:`MODELS`) and fixed random gradients for it."""
    width, layers = MODELS[name]
    torch.manual_seed(seed)
    model = ByteLM(seq_len=128, d_model=width, n_layers=layers, n_heads=max(1, width // 64))
    return model, [torch.randn_like(p) * 1e-2 for p in model.parameters()]


def with_gradients(model: torch.nn.Module, grads: list[torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` whose parameters hold copies of ``grads``: each optimizer steps its own
    parameters on the same gradients."""
    copy_ = copy.deepcopy(model)
    for p, g in zip(copy_.parameters(), grads):
        p.grad = g.clone()
    return copy_


def bench_size(name: str, reps: int, warmup: int, seed: int, device: str = "cpu") -> dict:
    width, layers = SIZES[name]
    model, grads = byte_lm(name, seed)
    n_params = count_parameters(model)
    example = torch.zeros(1, 8, dtype=torch.long)
    makers = optimizers(model, example)  # scales from the CPU model
    model = model.to(device)
    grads = [g.to(device) for g in grads]
    entries = {}
    for label, make in makers.items():
        copy_ = with_gradients(model, grads)
        opt = make(copy_)
        step = torch.compile(opt.step, fullgraph=True) if label in COMPILED else opt.step
        entries[label] = {"model": copy_, "opt": opt, "step": step, "times": []}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    order = list(entries)
    rng = random.Random(seed)
    for rep in range(warmup + reps):
        rng.shuffle(order)
        for label in order:
            step = entries[label]["step"]
            sync()
            start = time.perf_counter()
            step()
            sync()
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                entries[label]["times"].append(elapsed)
            else:  # the first steps compile (fused=True, the compiled rows)
                entries[label]["warmup_s"] = entries[label].get("warmup_s", 0.0) + elapsed
    fused = statistics.median(entries["AdamW fused"]["times"])
    adamw_bytes = state_bytes(entries["AdamW fused"]["opt"])
    rows = []
    for label, entry in entries.items():
        median = statistics.median(entry["times"])
        q = statistics.quantiles(entry["times"], n=4)
        nbytes = state_bytes(entry["opt"])
        rows.append({"optimizer": label, "median_ms": 1000 * median,
                     "iqr_ms": [1000 * q[0], 1000 * q[2]], "ratio_to_fused_adamw": median / fused,
                     "warmup_steps_s": entry.get("warmup_s", 0.0),
                     "state_bytes": nbytes, "state_percent_of_adamw": 100 * nbytes / adamw_bytes})
    return {"size": name, "parameters": n_params, "width": width, "layers": layers,
            "reps": reps, "device": device, "rows": rows}


def print_table(result: dict) -> None:
    print(f"\n{result['size']}: {result['parameters']:,} parameters "
          f"(width {result['width']}, {result['layers']} layers), {result['reps']} "
          "interleaved reps")
    print(f"| {'optimizer':26} | median step | IQR | x fused AdamW | state | % of AdamW "
          "| warm-up steps |")
    print(f"|{'-' * 28}|---|---|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['optimizer']:26} | {row['median_ms']:8.2f} ms | "
              f"{row['iqr_ms'][0]:.1f}-{row['iqr_ms'][1]:.1f} | "
              f"{row['ratio_to_fused_adamw']:5.2f} | {row['state_bytes'] / 2**10:10.1f} KiB | "
              f"{row['state_percent_of_adamw']:6.2f}% | {row['warmup_steps_s']:.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=size_list(SIZES), default=",".join(SIZES),
                        help="comma list of " + ", ".join(SIZES))
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "torch_step.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False here (no GPU, or a "
                     "CPU-only torch build); run it on a machine with a CUDA GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out
    if args.device == "cuda" and out == parser.get_default("out"):
        out = out.replace("torch_step.json", "torch_step_cuda.json")
    results = []
    for size in args.sizes:
        results.append(bench_size(size, args.reps, args.warmup, args.seed, args.device))
        print_table(results[-1])
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    write_record(out, "torch optimizer.step()", results,
                 machine={"torch_threads": torch.get_num_threads(), "gpu": gpu},
                 versions={"torch": torch.__version__})


if __name__ == "__main__":
    main()
