"""amos suggest: the paper's recommended global rate xi, beta and clip value for a data set.

Example: ``amos suggest --examples 60000 --batch-size 32 --loss sum`` (the authors' MNIST
recipe: xi = 1/sqrt(60000/32) = 0.0231, beta = 0.98, clip = sqrt(32)). With ``--steps T`` it
also says whether Amos's own decay starts within ``T`` steps, and if not, how long a cooldown
to add.
"""

from __future__ import annotations

import argparse
import json
import math


def whole_number(text: str) -> int:
    """An argparse type: a whole number, also written as ``1e6`` or ``1_000_000``."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value == int(value)):
        raise argparse.ArgumentTypeError(f"expected a whole number (60000, 1e6), got {text!r}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", type=whole_number, required=True,
                        help="number of training examples (for a language model: sequences); "
                             "1e6 works")
    parser.add_argument("--batch-size", type=whole_number, required=True,
                        help="examples per batch")
    parser.add_argument("--loss", choices=("mean", "sum"), default="mean",
                        help="is the loss averaged (default) or summed over the labels?")
    parser.add_argument("--labels-per-example", type=whole_number, default=1,
                        help="labels a summed loss adds per example, e.g. target tokens "
                             "(default 1)")
    parser.add_argument("--steps", type=whole_number, metavar="T",
                        help="the training budget in steps, if any: adds the cooldown length and "
                             "warns when Amos's own decay will not start within T steps")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from amosopt.commands import CommandError
    from amosopt.suggest import suggest

    try:
        suggestion = suggest(args.examples, args.batch_size, args.loss, args.labels_per_example,
                             steps=args.steps)
    except ValueError as error:
        # name the command-line flag rather than the Python argument
        message = str(error)
        for python, flag in (("batch_size", "--batch-size"), ("labels_per_example",
                                                             "--labels-per-example"),
                             ("examples", "--examples"), ("steps", "--steps")):
            message = message.replace(f"Invalid {python}", f"invalid {flag}")
        raise CommandError(message) from None
    print(json.dumps(suggestion.as_dict(), indent=2) if args.json else suggestion.format())
    return 0
