"""How far a long Amos run with bfloat16 parameters drifts from the same run in float32.

Two copies of one small MLP (the same float32 initialisation, one cast to bfloat16) fit the same
teacher-student regression with the same minibatches for ``--steps`` steps. Amos keeps ``v``,
``b`` and the momentum in float32 for bfloat16 parameters, but the parameters themselves and
every update added to them are rounded to bfloat16 (8 significant bits): an update smaller than
half a unit in the last place of a weight is lost. This measures what that costs.

Reported every ``--every`` steps: the training loss on the whole data set (each model's
weights evaluated in float32, so that only the weights differ, not the arithmetic of the forward
pass) and, per parameter, the relative distance ``|x_bf16 - x_f32| / |x_f32|`` of ``b``, ``v``
and the weights. The threshold: an opt-in fix is only worth adding if the bfloat16 loss ends
more than 1% above the float32 loss. It does, so two more copies run the fixes: bfloat16 weights
with ``Amos(..., rounding="stochastic")`` (updates rounded up or down at random, unbiased) and with
``rounding="compensated"`` (what rounding lost is kept in a bfloat16 buffer and added back).

Run from the repository root::

    python benchmarks/bf16_drift.py            # 10,000 steps, JSON to benchmarks/results/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amosopt.torch import Amos  # noqa: E402

from _record import write_record  # noqa: E402  (beside this script)

#: eta and slot shapes as in the README's MLP example: 1/sqrt(fan-in) weights, factored slots
ETA = {r".*weight": "sqrt(1 / SHAPE[1])", r".*bias": 0.5}
SLOTS = {r".*weight": "(SHAPE[0], 1)", r".*bias": "()"}
WIDTH, FEATURES, SAMPLES, BATCH = 64, 32, 4096, 64


def mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, WIDTH), torch.nn.Tanh(),
                               torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh(),
                               torch.nn.Linear(WIDTH, 1))


def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed data set: inputs, and a random teacher MLP's outputs, standardised, plus noise of
    variance 0.01 (the lowest reachable loss)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, FEATURES, generator=g)
    with torch.no_grad():
        y = mlp(seed + 1000)(x)
    y = (y - y.mean()) / y.std()
    return x, y + 0.1 * torch.randn(y.shape, generator=g)


def full_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The training loss of ``model``'s weights, evaluated in float32."""
    with torch.no_grad():
        params = {n: p.float() for n, p in model.named_parameters()}
        out = torch.func.functional_call(model, params, (x,))
        return torch.nn.functional.mse_loss(out, y).item()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def run(args: argparse.Namespace) -> dict:
    x, y = data(args.seed)
    # a control: float32 weights and slots, forward and backward in bfloat16 (autocast); its
    # gap to float32 is the bf16 arithmetic's share, the rest of bfloat16's gap is the rounding
    # of the stored weights
    # the fixes: bfloat16 weights, each update rounded stochastically (unbiased), or with what
    # rounding lost kept in a bfloat16 buffer and added back (Kahan summation)
    models = {"float32": mlp(args.seed), "bfloat16": mlp(args.seed).to(torch.bfloat16),
              "float32_autocast_bf16": mlp(args.seed),
              "bfloat16_stochastic": mlp(args.seed).to(torch.bfloat16),
              "bfloat16_compensated": mlp(args.seed).to(torch.bfloat16)}
    rounding = {"bfloat16_stochastic": "stochastic", "bfloat16_compensated": "compensated"}
    opts = {k: Amos(m.named_parameters(), lr=args.lr, eta=ETA, slot_shape=SLOTS,
                    momentum=args.momentum, rounding=rounding.get(k, "nearest"))
            for k, m in models.items()}
    batches = torch.Generator().manual_seed(args.seed + 1)
    rows, started = [], time.perf_counter()
    for t in range(1, args.steps + 1):
        idx = torch.randint(0, SAMPLES, (BATCH,), generator=batches)
        for k, model in models.items():
            dtype = next(model.parameters()).dtype
            opts[k].zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=k.endswith("autocast_bf16")):
                out = model(x[idx].to(dtype))
            loss = torch.nn.functional.mse_loss(out.float(), y[idx])
            loss.backward()
            opts[k].step()
        if t % args.every == 0 or t == args.steps:
            row = {"step": t, **{f"loss_{k}": full_loss(m, x, y) for k, m in models.items()}}
            row["loss_ratio"] = row["loss_bfloat16"] / row["loss_float32"]
            row["loss_ratio_autocast"] = row["loss_float32_autocast_bf16"] / row["loss_float32"]
            for fix in ("stochastic", "compensated"):
                row[f"loss_ratio_{fix}"] = row[f"loss_bfloat16_{fix}"] / row["loss_float32"]
            pairs = list(zip(models["float32"].named_parameters(),
                             models["bfloat16"].parameters()))
            for key in ("b", "v"):
                row[f"{key}_drift"] = {n: relative(opts["bfloat16"].state[q][key],
                                                   opts["float32"].state[p][key])
                                       for (n, p), q in pairs}
            row["weight_drift"] = {n: relative(q, p) for (n, p), q in pairs}
            row["b_float32"] = {n: opts["float32"].state[p]["b"].double().mean().item()
                                for (n, p), _ in pairs}
            rows.append(row)
            print(f"step {t:6d}  loss f32 {row['loss_float32']:.5f}  bf16 "
                  f"{row['loss_bfloat16']:.5f}  ratio {row['loss_ratio']:.4f}  "
                  f"(autocast control {row['loss_ratio_autocast']:.4f}, stochastic "
                  f"{row['loss_ratio_stochastic']:.4f}, compensated "
                  f"{row['loss_ratio_compensated']:.4f})  "
                  f"max b drift {max(row['b_drift'].values()):.2e}  "
                  f"max v drift {max(row['v_drift'].values()):.2e}  "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    final = rows[-1]
    # the loss of one evaluation moves by several percent between evaluations late in the run
    # (the autocast control: -10% to +7%): the mean ratio over the last fifth is steadier
    late = rows[-max(1, len(rows) // 5):]
    late_worse = {k: 100.0 * (sum(r[f"loss_ratio{k}"] for r in late) / len(late) - 1.0)
                  for k in ("", "_autocast", "_stochastic", "_compensated")}
    return {"config": {**vars(args), "width": WIDTH, "features": FEATURES, "samples": SAMPLES,
                       "batch": BATCH, "eta": ETA, "slot_shape": SLOTS},
            "final": {"loss_float32": final["loss_float32"],
                      "loss_bfloat16": final["loss_bfloat16"],
                      "loss_worse_percent": 100.0 * (final["loss_ratio"] - 1.0),
                      "loss_float32_autocast_bf16": final["loss_float32_autocast_bf16"],
                      "autocast_loss_worse_percent": 100.0 * (final["loss_ratio_autocast"] - 1),
                      **{f"loss_bfloat16_{fix}": final[f"loss_bfloat16_{fix}"]
                         for fix in ("stochastic", "compensated")},
                      **{f"{fix}_loss_worse_percent": 100.0 * (final[f"loss_ratio_{fix}"] - 1)
                         for fix in ("stochastic", "compensated")},
                      "late_steps": [late[0]["step"], late[-1]["step"]],
                      "late_loss_worse_percent": late_worse[""],
                      "late_autocast_loss_worse_percent": late_worse["_autocast"],
                      "late_stochastic_loss_worse_percent": late_worse["_stochastic"],
                      "late_compensated_loss_worse_percent": late_worse["_compensated"],
                      "max_b_drift": max(final["b_drift"].values()),
                      "max_v_drift": max(final["v_drift"].values()),
                      "max_weight_drift": max(final["weight_drift"].values())},
            "trace": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default="benchmarks/results/bf16_drift.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = run(args)
    print(results["final"])
    write_record(args.out, "bf16 vs float32 drift", results,
                 machine={"torch_threads": torch.get_num_threads()},
                 versions={"torch": torch.__version__})


if __name__ == "__main__":
    main()
