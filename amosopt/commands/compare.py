"""amos compare: train one model from the same initialisation with Amos and with AdamW.

Amos uses automatic per-parameter scales and a constant global rate from the paper's guidance
(see ``amos suggest``); AdamW uses the paper's baseline recipe (linear warm-up, linear decay to
zero at the step budget, weight decay 0.01) with its learning rate picked by a sweep on the same
budget. Writes results.json, loss.png and report.md to --out (default ./amos-results/TASK/).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

TASK_NAMES = ("lm", "digits")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="lm",
                        help="lm (byte-level transformer on the Python stdlib, default) or digits "
                             "(small CNN on scikit-learn's digits)")
    parser.add_argument("--text", metavar="PATH",
                        help="train the language model on this text file instead (the last 10%% "
                             "is validation)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (a few minutes on 2 cores): fewer steps, smaller sweep")
    parser.add_argument("--steps", type=int, help="step budget of every run "
                        "(default: lm 2000, digits 1500; --quick 400)")
    parser.add_argument("--seed", type=int, default=0,
                        help="initialisation and batch order (default 0)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default ./amos-results/TASK)")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32")
    parser.add_argument("--adamw-lrs", metavar="LR,LR,...",
                        help="AdamW learning rates to sweep (default: lm 5e-4..8e-3, digits "
                             "1e-3..1e-1; --quick: lm 3e-4,1e-3,3e-3,1e-2, digits "
                             "3e-3,1e-2,3e-2,1e-1)")
    parser.add_argument("--adamw-warmup", type=float, default=0.05, metavar="FRACTION",
                        help="AdamW linear warm-up as a fraction of the budget (default 0.05)")
    parser.add_argument("--amos-warmup", type=int, default=0, metavar="STEPS",
                        help="linear warm-up steps of Amos's global rate (default 0)")
    parser.add_argument("--amos-momentum", type=float, default=0.9,
                        help="Amos momentum (default 0.9, the paper's BERT/T5 setting; 0 = off)")
    parser.add_argument("--evals", type=int, help="validation evaluations per run")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, less the cores "
                             "that other processes keep busy)")
    parser.add_argument("--seq-len", type=int, default=128, help="lm: bytes per sequence")
    parser.add_argument("--width", type=int, default=128, help="lm: model width")
    parser.add_argument("--layers", type=int, default=2, help="lm: transformer layers")
    parser.add_argument("--heads", type=int, default=4, help="lm: attention heads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parse_lrs(text: str | None) -> list[float] | None:
    from amosopt.cli import CommandError

    if text is None:
        return None
    try:
        lrs = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"invalid --adamw-lrs {text!r}: expected numbers separated by "
                           "commas, e.g. 1e-3,3e-3") from None
    if not lrs or any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        raise CommandError(f"invalid --adamw-lrs {text!r}: give one or more positive learning "
                           "rates, e.g. 1e-3,3e-3")
    return lrs


def _check(args: argparse.Namespace) -> None:
    """Every user error, before anything heavy is imported or any data is read."""
    from amosopt.cli import CommandError

    if args.task not in TASK_NAMES:
        raise CommandError(f"unknown task {args.task!r}; choose one of: {', '.join(TASK_NAMES)}")
    if args.text is not None and args.task != "lm":
        raise CommandError("--text trains the language model: use it with --task lm")
    positive = {"--steps": args.steps, "--batch-size": args.batch_size, "--evals": args.evals,
                "--threads": args.threads, "--seq-len": args.seq_len, "--width": args.width,
                "--layers": args.layers, "--heads": args.heads}
    for flag, value in positive.items():
        if value is not None and value <= 0:
            raise CommandError(f"invalid {flag} {value}: it must be a positive integer")
    if args.width % args.heads:
        raise CommandError(f"invalid --width {args.width}: it must be divisible by --heads "
                           f"({args.heads})")
    if not 0 <= args.adamw_warmup < 1:
        raise CommandError(f"invalid --adamw-warmup {args.adamw_warmup}: a fraction in [0, 1)")
    if args.amos_warmup < 0:
        raise CommandError(f"invalid --amos-warmup {args.amos_warmup}: steps must be >= 0")
    if not 0 <= args.amos_momentum < 1:
        raise CommandError(f"invalid --amos-momentum {args.amos_momentum}: use 0 <= m < 1")
    if args.text is not None:
        path = Path(args.text)
        if not path.is_file():
            raise CommandError(f"--text {args.text}: no such file")
        if path.stat().st_size == 0:
            raise CommandError(f"--text {args.text}: the file is empty")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise CommandError(f"--out {args.out}: exists and is not a folder")


def run(args: argparse.Namespace) -> int:
    from amosopt.cli import CommandError

    _check(args)
    lrs = _parse_lrs(args.adamw_lrs)
    from amosopt.compare import CompareConfig, run_compare
    from amosopt.compare.data import DataError

    config = CompareConfig(
        task=args.task, text=args.text, steps=args.steps, seed=args.seed, quick=args.quick,
        out=args.out, batch_size=args.batch_size, adamw_lrs=lrs, adamw_warmup=args.adamw_warmup,
        amos_warmup=args.amos_warmup, amos_momentum=args.amos_momentum, evals=args.evals,
        threads=args.threads, seq_len=args.seq_len, width=args.width, layers=args.layers,
        heads=args.heads, progress=not args.no_progress,
    )
    try:
        results = run_compare(config)
    except DataError as error:
        raise CommandError(str(error)) from None
    except KeyboardInterrupt:
        print(f"\namos compare: interrupted; partial results (marked INCOMPLETE) in "
              f"{Path(config.out) / 'report.md'}")
        return 130
    _print_summary(results, Path(config.out))
    return 0


def _print_summary(results: dict, out: Path) -> None:
    from amosopt.compare.report import summarize

    s = summarize(results)
    print()
    print(f"AdamW (best of sweep, {s.get('adamw')}): final validation loss "
          f"{s.get('adamw_final_val_loss', float('nan')):.4f}")
    amos_loss = s.get("amos_final_val_loss")
    print(f"Amos: final validation loss {amos_loss:.4f}" if amos_loss is not None
          else "Amos: no final loss (diverged)")
    pct = s.get("amos_reaches_adamw_percent")
    print("Amos reaches AdamW's final loss: " +
          ("not within the budget" if pct is None else
           f"step {s['amos_reaches_adamw_at_step']} ({pct:.0f}% of AdamW's steps)"))
    memory = s.get("state_bytes", {})
    if memory.get("adamw"):
        parts = [f"{k.replace('amos_momentum_', 'Amos momentum ')} "
                 f"{100 * v / memory['adamw']:.2f}%" for k, v in memory.items() if k != "adamw"]
        print("Optimizer state vs AdamW: " + ", ".join(parts))
    print(f"Report: {(out / 'report.md').resolve()}")
