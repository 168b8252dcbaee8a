"""The plan of an ``amos compare`` study: every (budget, seed, optimizer, grid value) run, and
the key that names each run's result file (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from amosopt.compare.config import CompareConfig

__all__ = ["PlannedRun", "plan"]


@dataclass(frozen=True, order=True)
class PlannedRun:
    """One planned run of the study: what identifies it (``key`` names its result file, and a
    done run is recognised by it), not how it is trained."""

    budget: int
    seed: int
    rank: int  # the optimizer's position in --optimizers (for ordering only)
    optimizer: str
    value: float

    @property
    def key(self) -> str:
        return f"{self.optimizer}_{self.value:g}_b{self.budget}_s{self.seed}"


def plan(config: CompareConfig) -> list[PlannedRun]:
    """Every run, smallest budget first (so that a partial study has whole budgets)."""
    return sorted(PlannedRun(budget, seed, rank, name, float(value))
                  for budget in config.budgets for seed in config.seeds
                  for rank, name in enumerate(config.optimizers)
                  for value in config.grid(name))
