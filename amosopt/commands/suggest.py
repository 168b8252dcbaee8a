"""amos suggest: (placeholder, to be written)."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from amosopt.cli import CommandError

    raise CommandError("'amos suggest' is not implemented yet")
