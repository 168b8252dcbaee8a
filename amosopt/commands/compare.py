"""amos compare: a study of Amos against tuned AdamW and its peers, across budgets and seeds.

Every run of a seed starts from the same initialisation and sees the same batches; each budget
is its own set of runs, judged at its own end. Learning-rate optimizers are tuned on a log grid
with as many trials as Amos's xi grid ({0.5, 1, 2} x the suggested xi). Writes results.json,
report.md, frontier.png and loss_BUDGET.png to --out (default ./amos-results/TASK/); running
the same command again skips the runs already done there.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from amosopt.commands.suggest import whole_number
from amosopt.compare.config import AMOS_SLOTS, DEFAULT_OPTIMIZERS, DEFAULTS, field_default
from amosopt.compare.registry import AMOS, OPTIMIZERS
from amosopt.hyperparameters import SECOND_MOMENTS
from amosopt.schedules import COOLDOWN_SHAPES

#: the tasks with study defaults
TASK_NAMES = tuple(DEFAULTS)
#: the registry's names, read without torch
OPTIMIZER_NAMES = tuple(OPTIMIZERS)
#: the optimizers tuned on a learning-rate grid (--lrs)
LR_OPTIMIZER_NAMES = tuple(name for name in OPTIMIZER_NAMES if name not in AMOS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default=field_default("task"),
                        help="lm (byte-level transformer on the Python stdlib, default) or digits "
                             "(small CNN on scikit-learn's digits)")
    parser.add_argument("--text", metavar="PATH",
                        help="train the language model on this text file instead (the last 10%% "
                             "is validation)")
    parser.add_argument("--train-bytes", metavar="N", type=whole_number,
                        help="lm: train on about N bytes of the training split (16 KiB chunks "
                             "spread evenly over it), so that a budget covers several epochs; "
                             "validation is unchanged (default: all of it)")
    parser.add_argument("--quick", action="store_true",
                        help="a short study (a few minutes on 2 cores): budgets "
                             f"{_numbers(DEFAULTS['lm']['quick']['budgets'])}, Amos at the "
                             "suggested xi only")
    parser.add_argument("--budgets", metavar="N,N,...",
                        help=f"step budgets, each its own set of runs (default: {_budgets()})")
    parser.add_argument("--steps", type=int, help="one budget: the same as --budgets N")
    parser.add_argument("--seeds", metavar="S,S,...",
                        help="seeds: initialisation and batch order (default "
                             f"{_numbers(field_default('seeds'))})")
    parser.add_argument("--seed", type=int, help="one seed: the same as --seeds S")
    parser.add_argument("--optimizers", metavar="NAME,...",
                        help=f"from {', '.join(OPTIMIZER_NAMES)} (default "
                             f"{','.join(DEFAULT_OPTIMIZERS)})")
    parser.add_argument("--jobs", type=int, default=field_default("jobs"),
                        help="runs in parallel processes, one torch thread each "
                             "(default %(default)s)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default ./amos-results/TASK)")
    parser.add_argument("--batch-size", type=int,
                        default=field_default("batch_size"), help="default %(default)s")
    parser.add_argument("--adamw-lrs", metavar="LR,LR,...",
                        help="the learning-rate grid of adamw and adamw-wsd")
    parser.add_argument("--lrs", metavar="NAME=LR,LR,...", action="append", default=[],
                        help="the learning-rate grid of one optimizer (repeatable), e.g. "
                             "adafactor=5e-3,1e-2,2e-2")
    parser.add_argument("--xi-multipliers", metavar="M,M,...",
                        help="Amos's grid, multiples of the suggested xi (default "
                             f"{_numbers(DEFAULTS['lm']['full']['xi_multipliers'])}; --quick "
                             f"{_numbers(DEFAULTS['lm']['quick']['xi_multipliers'])})")
    parser.add_argument("--warmup-fraction", "--adamw-warmup", type=float,
                        default=field_default("warmup_fraction"),
                        dest="warmup_fraction", metavar="FRACTION",
                        help="linear warm-up of AdamW, Adafactor and schedule-free, as a "
                             "fraction of the budget (default %(default)s)")
    parser.add_argument("--amos-warmup", type=int,
                        default=field_default("amos_warmup"), metavar="STEPS",
                        help="linear warm-up steps of Amos's global rate (default %(default)s)")
    parser.add_argument("--amos-momentum", type=float, default=field_default("amos_momentum"),
                        help="Amos momentum (default %(default)s, the paper's BERT/T5 setting; "
                             "0 = off)")
    parser.add_argument("--amos-beta", type=float,
                        help="Amos beta (default: as amos suggest gives it)")
    parser.add_argument("--amos-slots", choices=AMOS_SLOTS,
                        default=field_default("amos_slots"),
                        help="Amos slot shapes: automatic factored slots (default) or full-size")
    parser.add_argument("--amos-eta", type=float, metavar="ETA",
                        help="one eta for every parameter instead of the automatic scales")
    parser.add_argument("--amos-eta-scale", type=float,
                        default=field_default("amos_eta_scale"), metavar="K",
                        help="every eta times K and the suggested xi divided by K: the same "
                             "initial step, a weight decay K^2 times weaker (default %(default)g)")
    parser.add_argument("--amos-decay-ratio", type=float,
                        default=field_default("amos_decay_ratio"), metavar="RHO",
                        help="Amos's decay_ratio: the decay runs on the rate RHO * xi, a weight "
                             "decay RHO^2 as strong (default %(default)g, the paper's)")
    parser.add_argument("--amos-second-moment", choices=SECOND_MOMENTS,
                        default=field_default("amos_second_moment"),
                        help="Amos's normaliser: 'slot', the paper's v (default); 'row-col', v "
                             "and a column factor, a rank-1 estimate per entry (Adafactor's)")
    parser.add_argument("--adamw-weight-decay", type=float,
                        default=field_default("adamw_weight_decay"), metavar="WD",
                        help="weight decay of adamw and adamw-wsd (default %(default)s)")
    parser.add_argument("--adamw-beta1", type=float,
                        default=field_default("adamw_beta1"), metavar="BETA1",
                        help="beta1 of adamw and adamw-wsd (default %(default)s)")
    parser.add_argument("--cooldown-fraction", type=float,
                        default=field_default("cooldown_fraction"), metavar="FRACTION",
                        help="WSD runs: cooldown length as a fraction of the budget "
                             "(default %(default)s)")
    parser.add_argument("--cooldown", choices=COOLDOWN_SHAPES,
                        default=field_default("cooldown"),
                        help="WSD runs: cooldown shape (default %(default)s)")
    parser.add_argument("--evals", type=int, help="validation evaluations per run")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads with --jobs 1 (default: torch's, less the cores "
                             "that other processes keep busy)")
    parser.add_argument("--seq-len", type=int,
                        default=field_default("seq_len"), help="lm: bytes per sequence")
    parser.add_argument("--width", type=int, default=field_default("width"), help="lm: model width")
    parser.add_argument("--layers", type=int,
                        default=field_default("layers"), help="lm: transformer layers")
    parser.add_argument("--heads", type=int,
                        default=field_default("heads"), help="lm: attention heads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _numbers(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _budgets() -> str:
    """The default budgets, per task and with --quick, from the study's defaults."""
    quick = {_numbers(DEFAULTS[task]["quick"]["budgets"]) for task in DEFAULTS}
    return "; ".join([f"{task} {_numbers(DEFAULTS[task]['full']['budgets'])}" for task in DEFAULTS]
                     + [f"--quick {q}" for q in sorted(quick)])


def _parse_numbers(flag: str, text: str | None, kind: type = float, positive: bool = True
                   ) -> list | None:
    from amosopt.commands import CommandError

    if text is None:
        return None
    example = "1e-3,3e-3" if kind is float else "0,1,2"
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"invalid {flag} {text!r}: expected numbers separated by commas, "
                           f"e.g. {example}") from None
    bad = [v for v in values if not math.isfinite(v) or (v <= 0 if positive else v < 0)]
    if not values or bad:
        raise CommandError(f"invalid {flag} {text!r}: give one or more "
                           f"{'positive' if positive else 'non-negative'} numbers, e.g. "
                           f"{example}")
    return values


def _parse_grids(args: argparse.Namespace) -> dict[str, list[float]]:
    from amosopt.commands import CommandError

    grids = {}
    lrs = _parse_numbers("--adamw-lrs", args.adamw_lrs)
    if lrs is not None:
        grids["adamw"] = grids["adamw-wsd"] = lrs
    for item in args.lrs:
        name, sep, values = item.partition("=")
        if not sep or name not in LR_OPTIMIZER_NAMES:
            raise CommandError(f"invalid --lrs {item!r}: expected NAME=LR,LR,... with NAME one "
                               f"of {', '.join(LR_OPTIMIZER_NAMES)} "
                               "(Amos's grid is --xi-multipliers)")
        grids[name] = _parse_numbers(f"--lrs {name}", values)
    return grids


def _parse_optimizers(text: str | None) -> list[str] | None:
    from amosopt.commands import CommandError

    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in OPTIMIZER_NAMES]
    if not names or unknown:
        raise CommandError(f"invalid --optimizers {text!r}: choose from "
                           f"{', '.join(OPTIMIZER_NAMES)}")
    if len(set(names)) != len(names):
        raise CommandError(f"invalid --optimizers {text!r}: a name is repeated")
    missing = [n for n in names if not OPTIMIZERS[n].available()]
    if missing:
        raise CommandError(f"--optimizers {missing[0]} needs the {OPTIMIZERS[missing[0]].module}"
                           f" package: pip install 'amosopt[study]'")
    return names


def _check(args: argparse.Namespace) -> None:
    """Every user error, before anything heavy is imported or any data is read."""
    from amosopt.commands import CommandError

    if args.task not in TASK_NAMES:
        raise CommandError(f"unknown task {args.task!r}; choose one of: {', '.join(TASK_NAMES)}")
    if args.text is not None and args.task != "lm":
        raise CommandError("--text trains the language model: use it with --task lm")
    if args.train_bytes is not None and args.task != "lm":
        raise CommandError("--train-bytes shortens the language model's text: use it with "
                           "--task lm")
    if args.steps is not None and args.budgets is not None:
        raise CommandError("give --budgets or --steps, not both")
    if args.seed is not None and args.seeds is not None:
        raise CommandError("give --seeds or --seed, not both")
    positive = {"--steps": args.steps, "--batch-size": args.batch_size, "--evals": args.evals,
                "--threads": args.threads, "--seq-len": args.seq_len, "--width": args.width,
                "--layers": args.layers, "--heads": args.heads, "--jobs": args.jobs,
                "--train-bytes": args.train_bytes}
    for flag, value in positive.items():
        if value is not None and value <= 0:
            raise CommandError(f"invalid {flag} {value}: it must be a positive integer")
    if args.seed is not None and args.seed < 0:
        raise CommandError(f"invalid --seed {args.seed}: it must be >= 0")
    if args.width % args.heads:
        raise CommandError(f"invalid --width {args.width}: it must be divisible by --heads "
                           f"({args.heads})")
    if not 0 <= args.warmup_fraction < 1:
        raise CommandError(f"invalid --warmup-fraction {args.warmup_fraction}: a fraction in "
                           "[0, 1)")
    if not 0 <= args.cooldown_fraction <= 1:
        raise CommandError(f"invalid --cooldown-fraction {args.cooldown_fraction}: a fraction "
                           "in [0, 1]")
    if args.amos_warmup < 0:
        raise CommandError(f"invalid --amos-warmup {args.amos_warmup}: steps must be >= 0")
    if not 0 <= args.amos_momentum < 1:
        raise CommandError(f"invalid --amos-momentum {args.amos_momentum}: use 0 <= m < 1")
    if args.amos_beta is not None and not 0 < args.amos_beta < 1:
        raise CommandError(f"invalid --amos-beta {args.amos_beta}: use 0 < beta < 1")
    if args.amos_eta is not None and not (math.isfinite(args.amos_eta) and args.amos_eta > 0):
        raise CommandError(f"invalid --amos-eta {args.amos_eta}: a positive number")
    for flag, value in (("--amos-eta-scale", args.amos_eta_scale),
                        ("--amos-decay-ratio", args.amos_decay_ratio)):
        if not (math.isfinite(value) and value > 0):
            raise CommandError(f"invalid {flag} {value}: a positive number")
    if not (math.isfinite(args.adamw_weight_decay) and args.adamw_weight_decay >= 0):
        raise CommandError(f"invalid --adamw-weight-decay {args.adamw_weight_decay}: a number "
                           ">= 0")
    if not 0 <= args.adamw_beta1 < 1:
        raise CommandError(f"invalid --adamw-beta1 {args.adamw_beta1}: use 0 <= beta1 < 1")
    if args.text is not None:
        path = Path(args.text)
        if not path.is_file():
            raise CommandError(f"--text {args.text}: no such file")
        if path.stat().st_size == 0:
            raise CommandError(f"--text {args.text}: the file is empty")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise CommandError(f"--out {args.out}: exists and is not a folder")


def _config(args: argparse.Namespace):
    from amosopt.commands import CommandError
    from amosopt.compare import CompareConfig
    from amosopt.schedules import WSD

    budgets = ([args.steps] if args.steps is not None else
               _parse_numbers("--budgets", args.budgets, int))
    seeds = ([args.seed] if args.seed is not None else
             _parse_numbers("--seeds", args.seeds, int, positive=False)
             or list(field_default("seeds")))
    for budget in budgets or []:
        try:  # the WSD runs' schedule must fit every budget
            WSD(budget, round(args.warmup_fraction * budget),
                round(args.cooldown_fraction * budget))
            WSD(budget, min(args.amos_warmup, budget), None)
        except ValueError as error:
            raise CommandError(f"budget {budget}: {error} (from --warmup-fraction, "
                               "--amos-warmup and --cooldown-fraction)") from None
    return CompareConfig(
        task=args.task, text=args.text, train_bytes=args.train_bytes, budgets=budgets, seeds=seeds,
        optimizers=_parse_optimizers(args.optimizers) or list(DEFAULT_OPTIMIZERS),
        quick=args.quick, out=args.out, batch_size=args.batch_size, grids=_parse_grids(args),
        xi_multipliers=_parse_numbers("--xi-multipliers", args.xi_multipliers),
        warmup_fraction=args.warmup_fraction, amos_warmup=args.amos_warmup,
        amos_momentum=args.amos_momentum, amos_beta=args.amos_beta, amos_slots=args.amos_slots,
        amos_eta=args.amos_eta, amos_eta_scale=args.amos_eta_scale,
        amos_decay_ratio=args.amos_decay_ratio,
        amos_second_moment=args.amos_second_moment,
        adamw_weight_decay=args.adamw_weight_decay, adamw_beta1=args.adamw_beta1,
        cooldown_fraction=args.cooldown_fraction,
        cooldown=args.cooldown, evals=args.evals, threads=args.threads, jobs=args.jobs,
        seq_len=args.seq_len, width=args.width, layers=args.layers, heads=args.heads,
        progress=not args.no_progress)


#: import name -> distribution, of what ``amos compare`` runs on (the ``cli`` extra)
_NEEDS = {"torch": "torch", "numpy": "numpy", "tqdm": "tqdm", "matplotlib": "matplotlib",
          "sklearn": "scikit-learn", "scipy": "scipy"}


def _check_installed() -> None:
    """Names the extra to install instead of ending in a ModuleNotFoundError mid-import."""
    import importlib.util
    import sys

    from amosopt.commands import CommandError

    missing = []
    for module, distribution in _NEEDS.items():
        try:
            found = sys.modules[module] is not None if module in sys.modules else (
                importlib.util.find_spec(module) is not None)
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(distribution)
    if missing:
        raise CommandError(f"amos compare needs {', '.join(missing)}, not installed here: "
                           "pip install 'amosopt[cli]'")


def run(args: argparse.Namespace) -> int:
    from amosopt.commands import CommandError

    _check_installed()
    _check(args)
    config = _config(args)
    from amosopt.compare import run_compare
    from amosopt.compare.data import DataError
    from amosopt.compare.jobs import StudyError

    try:
        results = run_compare(config)
    except (DataError, StudyError) as error:
        raise CommandError(str(error)) from None
    except KeyboardInterrupt:
        print(f"\namos compare: interrupted; the runs finished so far are kept, and the report "
              f"covers them: {Path(config.out) / 'report.md'}. Run the same command again to "
              "finish.")
        return 130
    _print_summary(results, Path(config.out))
    return 0


def _print_summary(results: dict, out: Path) -> None:
    summary = results["summary"]
    print()
    for budget, s in summary["budgets"].items():
        print(f"budget {budget} steps (reference: {s['reference'] or 'none'}):")
        for entry in s["entries"]:
            loss = ("diverged" if entry["mean"] is None else
                    f"{entry['mean']:.4f} ± {entry['sd']:.4f} (n={entry['n']})")
            reach = entry.get("reach") or {}
            reached = ("" if not reach.get("seeds") else
                       "; reaches the reference: " + (
                           "no" if not reach["reached"] else
                           f"{reach['percent_mean']:.0f}% of the steps"
                           + ("" if reach["reached"] == reach["seeds"] else
                              f" ({reach['reached']} of {reach['seeds']} seeds)")))
            print(f"  {entry['label']:<26} {loss}{reached}")
    memory = results.get("probe_state_bytes", {})
    if memory.get("adamw"):
        parts = [f"{k.replace('amos_momentum_', 'Amos momentum ')} "
                 f"{100 * v / memory['adamw']:.2f}%" for k, v in memory.items() if k != "adamw"]
        print("Optimizer state vs AdamW: " + ", ".join(parts))
    from amosopt.compare.markdown import onset_sentence

    sentence = onset_sentence(results)
    if sentence:
        print(sentence)
    print(f"Report: {(out / 'report.md').resolve()}")
