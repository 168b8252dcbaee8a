"""The settings of an ``amos compare`` study and their defaults, written once (no torch: the
command line reads them at parse time)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from amosopt.compare.registry import AMOS, OPTIMIZERS
from amosopt.hyperparameters import SECOND_MOMENT

__all__ = ["AMOS_SLOTS", "DEFAULTS", "DEFAULT_OPTIMIZERS", "XI_MULTIPLIERS", "CompareConfig",
           "field_default"]

#: Amos's grid: multiples of the xi that ``amos suggest`` gives
XI_MULTIPLIERS = [0.5, 1.0, 2.0]

#: per task: (full, quick) settings; the command-line flags override them. Every optimizer with
#: a learning rate gets a log grid of the same length (4 trials in the full study, one more
#: than Amos's xi grid: the first runs put some optima at the edge of 3-point grids), placed
#: around the best rates seen in earlier runs (a best value at an edge is flagged).
#: the optimizers whose learning rate is on AdamW's scale (Muon's step is matched to AdamW's
#: update RMS): one grid serves them all, except where Muon's optimum lay outside it (lm);
#: Adafactor's relative step has its own
ADAM_SCALE = tuple(name for name in OPTIMIZERS if name not in AMOS and name != "adafactor")


def _grids(adam: list[float], adafactor: list[float], muon: list[float] | None = None
           ) -> dict[str, list[float]]:
    return {**{name: list(adam) for name in ADAM_SCALE}, "adafactor": list(adafactor),
            **({"muon": list(muon)} if muon is not None else {})}


DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "lm": {
        "full": {"budgets": [500, 1000, 2000], "evals": 20, "eval_batches": 8,
                 "xi_multipliers": XI_MULTIPLIERS,
                 # Muon's best rate sat at the top edge of AdamW's grid (500 steps: 6e-3),
                 # so its grid is moved up two points
                 "grids": _grids([7.5e-4, 1.5e-3, 3e-3, 6e-3], [2e-2, 4e-2, 8e-2, 1.6e-1],
                                 [3e-3, 6e-3, 1.2e-2, 2.4e-2])},
        "quick": {"budgets": [200, 400], "evals": 10, "eval_batches": 4,
                  "xi_multipliers": [1.0],
                  "grids": _grids([1e-3, 3e-3, 1e-2], [5e-3, 1e-2, 2e-2])},
    },
    "digits": {
        "full": {"budgets": [400, 1500], "evals": 20, "eval_batches": 0,
                 "xi_multipliers": XI_MULTIPLIERS,
                 "grids": _grids([1e-3, 3e-3, 1e-2, 3e-2], [3e-2, 1e-1, 3e-1, 1.0])},
        "quick": {"budgets": [200, 400], "evals": 10, "eval_batches": 0,
                  "xi_multipliers": [1.0],
                  "grids": _grids([3e-3, 1e-2, 3e-2], [1e-1, 3e-1, 1.0])},
    },
}
DEFAULT_OPTIMIZERS = ["amos", "amos-wsd", "adamw"]
#: Amos's slot shapes: the automatic factored ones, or full-size
AMOS_SLOTS = ("factored", "full")
#: the settings that change what a run computes: a resumed study must keep them
FINGERPRINT = ("task", "text", "batch_size", "seq_len", "width", "layers", "heads", "channels",
               "evals", "eval_batches", "warmup_fraction", "amos_warmup", "amos_momentum",
               "amos_beta", "amos_slots", "amos_eta", "cooldown_fraction", "cooldown")
#: settings added later: part of the fingerprint only where they differ from their default, so
#: that studies recorded before them resume
FINGERPRINT_OPTIONAL = ("amos_eta_scale", "adamw_weight_decay", "adamw_beta1",
                        "amos_decay_ratio", "amos_second_moment", "train_bytes")


@dataclass
class CompareConfig:
    """Every setting of a study (written to results.json)."""

    task: str = "lm"
    text: str | None = None
    #: lm: a training split of about this many bytes (even chunks of the full one), so that a
    #: budget covers several epochs; None: all of it
    train_bytes: int | None = None
    budgets: list[int] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    optimizers: list[str] = field(default_factory=lambda: list(DEFAULT_OPTIMIZERS))
    quick: bool = False
    out: str | None = None
    batch_size: int = 32
    grids: dict[str, list[float]] = field(default_factory=dict)  # overrides of the defaults
    xi_multipliers: list[float] | None = None
    warmup_fraction: float = 0.05  # AdamW, Adafactor, schedule-free
    amos_warmup: int = 0
    amos_momentum: float = 0.9
    amos_beta: float | None = None  # None: as amos suggest gives it
    amos_slots: str = "factored"  # or "full"
    amos_eta: float | None = None  # None: automatic scales; a number: one eta for all
    #: k: every eta times k and the suggested xi divided by k, so the initial step xi * eta is
    #: the same and the weight decay (~ xi^2) is k^2 times weaker
    amos_eta_scale: float = 1.0
    amos_decay_ratio: float = 1.0  # rho of amosopt.torch.Amos: the decay runs on rho * xi
    #: Amos's normaliser: "slot", the paper's v; "row-col", v with a column factor per matrix
    amos_second_moment: str = SECOND_MOMENT
    adamw_weight_decay: float = 0.01  # adamw and adamw-wsd
    adamw_beta1: float = 0.9  # adamw and adamw-wsd
    cooldown_fraction: float = 0.2
    cooldown: str = "linear"
    evals: int | None = None
    eval_batches: int | None = None
    threads: int | None = None
    jobs: int = 1
    seq_len: int = 128
    width: int = 128
    layers: int = 2
    heads: int = 4
    channels: int = 16
    progress: bool = True

    def resolve(self) -> CompareConfig:
        """Fills the task's defaults (full or quick) into the unset fields."""
        defaults = DEFAULTS[self.task]["quick" if self.quick else "full"]
        for key in ("budgets", "evals", "eval_batches", "xi_multipliers"):
            if getattr(self, key) is None:
                value = defaults[key]
                setattr(self, key, list(value) if isinstance(value, list) else value)
        self.grids = {**{k: list(v) for k, v in defaults["grids"].items()}, **self.grids}
        if self.out is None:
            self.out = str(Path("amos-results") / ("text" if self.text else self.task))
        return self

    def grid(self, optimizer: str) -> list[float]:
        if optimizer in AMOS:
            return list(self.xi_multipliers)
        return list(self.grids[optimizer])

    def fingerprint(self) -> dict:
        optional = {key: getattr(self, key) for key in FINGERPRINT_OPTIONAL
                    if getattr(self, key) != _FIELD_DEFAULTS[key]}
        return {**{key: getattr(self, key) for key in FINGERPRINT}, **optional}


#: every field's default, for the command line's defaults and the fingerprint
_FIELD_DEFAULTS = {f.name: getattr(CompareConfig(), f.name) for f in fields(CompareConfig)}


def field_default(name: str) -> Any:
    """The default of the :class:`CompareConfig` field ``name``."""
    return _FIELD_DEFAULTS[name]
