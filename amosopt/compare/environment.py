"""The machine an ``amos compare`` study runs on: library versions, CPUs, the command, and how
many torch threads a run gets."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

__all__ = ["default_threads", "environment"]


def default_threads() -> int:
    """torch's default thread count, less the cores other processes keep busy (1-minute load
    average): with 2 threads on a 2-core machine that is busy elsewhere, torch's threads wait
    for each other and a step takes several times longer than with 1 thread."""
    threads = torch.get_num_threads()
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):
        return threads
    return max(1, min(threads, (os.cpu_count() or threads) - busy))


def environment() -> dict:
    import numpy

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__}
    for module in ("amosopt", "tqdm", "matplotlib", "sklearn", "schedulefree"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            versions[module] = None
    return {
        "versions": versions,
        "machine": {
            "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    }
