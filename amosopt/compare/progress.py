"""The progress bars of an ``amos compare`` study: one for the whole study, one per run in
flight (tqdm)."""

from __future__ import annotations

from typing import Any

from amosopt.compare.plan import PlannedRun

__all__ = ["ProgressBars"]


class ProgressBars:
    """One overall bar (steps of the whole study, with its time estimate) and one per run."""

    def __init__(self, specs: list[PlannedRun], enabled: bool):
        from tqdm.auto import tqdm

        self._tqdm, self.enabled = tqdm, enabled
        self.total = tqdm(total=sum(s.budget for s in specs), desc="study", unit="step",
                          disable=not enabled, dynamic_ncols=True, position=0,
                          postfix={"runs": f"0/{len(specs)}"})
        self.runs: dict[str, Any] = {}
        self.positions: dict[str, int] = {}
        self.done_steps: dict[str, int] = {}
        self.closed: set[str] = set()
        self.finished, self.count = 0, len(specs)

    def update(self, key: str, done: int, loss: float, budget: int) -> None:
        if key in self.closed:  # a report that arrived after the run's result
            return
        if key not in self.runs:
            taken = set(self.positions.values())
            self.positions[key] = min(p for p in range(1, len(taken) + 2) if p not in taken)
            self.runs[key] = self._tqdm(total=budget, desc=key, unit="step", leave=False,
                                        disable=not self.enabled, dynamic_ncols=True,
                                        position=self.positions[key])
            self.done_steps[key] = 0
        bar = self.runs[key]
        bar.update(done - self.done_steps[key])
        self.total.update(done - self.done_steps[key])
        self.done_steps[key] = done
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def finish(self, spec: PlannedRun) -> None:
        bar = self.runs.pop(spec.key, None)
        self.positions.pop(spec.key, None)
        self.closed.add(spec.key)
        self.total.update(spec.budget - self.done_steps.pop(spec.key, 0))
        if bar is not None:
            bar.close()
        self.finished += 1
        self.total.set_postfix(runs=f"{self.finished}/{self.count}")

    def close(self) -> None:
        for bar in self.runs.values():
            bar.close()
        self.total.close()
