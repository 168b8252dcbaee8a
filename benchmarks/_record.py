"""What every benchmark script writes: its table's numbers with the machine, versions and command."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


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
