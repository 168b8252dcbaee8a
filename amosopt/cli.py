"""The ``amos`` command: ``amos compare``, ``amos suggest``, ``amos inspect``.

Each sub-command lives in :mod:`amosopt.commands` as a module with ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports (torch, matplotlib) happen inside ``run`` so that
``amos --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from amosopt.commands import CommandError

#: sub-command -> (module under amosopt.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("compare", "study Amos against tuned AdamW and its peers across budgets and "
                           "seeds, and report"),
    "suggest": ("suggest", "print the paper's recommended global rate, beta and clip value"),
    "inspect": ("inspect", "print the automatic eta / slot-shape table of a model"),
}


def build_parser() -> argparse.ArgumentParser:
    from amosopt import __version__

    parser = argparse.ArgumentParser(
        prog="amos", description="Amos optimizer tools (Tian & Parikh, arXiv:2210.11693)."
    )
    parser.add_argument("--version", action="version", version=f"amosopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"amosopt.commands.{module_name}")
        command = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CommandError as error:
        print(f"amos {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"amos {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
