"""What every benchmark script writes: its table's numbers with the machine, versions and command;
and the ``--sizes`` argument the step benchmarks share."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable


def write_record(out: str | Path, benchmark: str, results: Any, machine: dict[str, Any],
                 versions: dict[str, str]) -> None:
    """Writes ``results`` as JSON to ``out``, with the command line, the machine and versions."""
    record = {
        "benchmark": benchmark, "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), **machine},
        "versions": {**versions, "python": platform.python_version()},
        "results": results,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nJSON: {out}")


def size_list(known: dict[str, Any]) -> Callable[[str], list[str]]:
    """An argparse ``type``: a comma list of the model sizes in ``known`` ("1M,10M")."""
    def parse(text: str) -> list[str]:
        sizes = [s.strip() for s in text.split(",") if s.strip()]
        unknown = [s for s in sizes if s not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown sizes {unknown}; choose from {list(known)}")
        return sizes
    return parse
