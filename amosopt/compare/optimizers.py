"""The optimizers that ``amos compare`` can put side by side, and how each is built for a run.

Each has one tuned hyper-parameter, searched on a grid with the same number of trials:

* ``amos``: the paper's recipe, ``amosopt.torch.Amos`` at a constant ``xi`` (the anytime run);
* ``amos-wsd``: the same with a warmup-stable-decay cooldown (:func:`amosopt.torch.wsd_schedule`);
* ``adamw``: ``torch.optim.AdamW``, linear warm-up then linear decay to 0 (the paper's baseline);
* ``adamw-wsd``: AdamW with the same WSD schedule as ``amos-wsd``;
* ``adafactor``: ``torch.optim.Adafactor`` (factored second moments: the small-state peer),
  with AdamW's warm-up and linear decay;
* ``schedulefree``: ``schedulefree.AdamWScheduleFree`` (Defazio et al. 2024, arXiv 2405.15682;
  the anytime peer), with its own warm-up and its train/eval modes;
* ``adam-mini``: ``adam_mini.Adam_mini`` (Zhang et al. 2024, arXiv 2406.16793; the peer at
  Amos's memory: one second moment per output row of the attention and MLP matrices and per
  token of the embeddings and output layer), with ``adamw-wsd``'s schedule;
* ``muon``: ``torch.optim.Muon`` (Jordan et al. 2024; orthogonalised momentum, one buffer per
  matrix) for the 2-D hidden weights and AdamW for the rest, the usual split; Muon's step is
  scaled to AdamW's update RMS (``adjust_lr_fn="match_rms_adamw"``, Liu et al. 2025, arXiv
  2502.16982) so that one tuned lr serves both; ``adamw-wsd``'s schedule.

Amos's grid is over multiples of the ``xi`` that :func:`amosopt.suggest.suggest` gives; the
others' grids are learning rates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from amosopt.compare.registry import OPTIMIZERS, OptimizerInfo
from amosopt.hyperparameters import SECOND_MOMENT

__all__ = ["OPTIMIZERS", "Built", "OptimizerInfo", "RunSettings", "build"]

ADAMW_BETAS = (0.9, 0.999)
ADAMW_WEIGHT_DECAY = 0.01  # also Adafactor's and schedule-free's


@dataclass
class Built:
    """A run's optimizer, its scheduler (or None) and the mode switches it needs."""

    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    #: called before training steps / before evaluation (schedule-free averages the weights)
    train_mode: Callable[[], None] = lambda: None
    eval_mode: Callable[[], None] = lambda: None

    def lr(self) -> float:
        lr = self.optimizer.param_groups[0]["lr"]
        return float(lr)


@dataclass(frozen=True)
class RunSettings:
    """What every run of one study shares (besides the model and data)."""

    budget: int
    xi: float  # suggested global rate
    beta: float  # suggested, unless amos_beta is set
    clip_value: float
    eta: Callable[[str, tuple], float] | float
    slot_shape: Callable[[str, tuple], tuple] | None
    amos_momentum: float = 0.9
    amos_beta: float | None = None
    amos_warmup: int = 0
    amos_decay_ratio: float = 1.0
    amos_second_moment: str = SECOND_MOMENT  # Amos(second_moment=...)
    warmup_fraction: float = 0.05  # AdamW, Adafactor, schedule-free
    cooldown_fraction: float = 0.2  # the WSD runs
    cooldown: str = "linear"
    adamw_weight_decay: float = ADAMW_WEIGHT_DECAY  # adamw and adamw-wsd
    adamw_beta1: float = ADAMW_BETAS[0]  # adamw and adamw-wsd
    extra: dict = field(default_factory=dict)

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_fraction * self.budget)

    @property
    def cooldown_steps(self) -> int:
        return round(self.cooldown_fraction * self.budget)


def _linear_warmup_decay(optimizer: torch.optim.Optimizer, run: RunSettings) -> Any:
    """The paper's baseline schedule: linear warm-up, then a linear decay that reaches 0 at the
    budget, i.e. WSD whose cooldown spans everything after the warm-up."""
    from amosopt.torch import wsd_schedule

    return wsd_schedule(optimizer, run.budget, warmup_steps=run.warmup_steps,
                        cooldown_steps=run.budget - run.warmup_steps)


def _amos(model: nn.Module, multiplier: float, run: RunSettings, wsd: bool) -> Built:
    from amosopt.torch import Amos, wsd_schedule
    from amosopt.torch.schedules import warmup_schedule

    optimizer = Amos(model.named_parameters(), lr=multiplier * run.xi, eta=run.eta,
                     slot_shape=run.slot_shape,
                     beta=run.beta if run.amos_beta is None else run.amos_beta,
                     momentum=run.amos_momentum, clip_value=run.clip_value,
                     decay_ratio=run.amos_decay_ratio,
                     second_moment=run.amos_second_moment)
    if wsd:
        scheduler = wsd_schedule(optimizer, run.budget, warmup_steps=run.amos_warmup,
                                 cooldown_steps=run.cooldown_steps, cooldown=run.cooldown)
    elif run.amos_warmup:  # constant after a warm-up: the anytime run knows no budget
        scheduler = warmup_schedule(optimizer, run.amos_warmup)
    else:
        scheduler = None
    return Built(optimizer, scheduler)


def _adamw(model: nn.Module, lr: float, run: RunSettings, wsd: bool) -> Built:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr,
                                  betas=(run.adamw_beta1, ADAMW_BETAS[1]),
                                  weight_decay=run.adamw_weight_decay, fused=True)
    return Built(optimizer, _wsd(optimizer, run) if wsd else _linear_warmup_decay(optimizer, run))


def _adafactor(model: nn.Module, lr: float, run: RunSettings) -> Built:
    optimizer = torch.optim.Adafactor(model.parameters(), lr=lr,
                                      weight_decay=ADAMW_WEIGHT_DECAY)
    return Built(optimizer, _linear_warmup_decay(optimizer, run))


def _schedulefree(model: nn.Module, lr: float, run: RunSettings) -> Built:
    import schedulefree

    optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=lr, betas=ADAMW_BETAS,
                                               weight_decay=ADAMW_WEIGHT_DECAY,
                                               warmup_steps=run.warmup_steps)
    return Built(optimizer, None, train_mode=optimizer.train, eval_mode=optimizer.eval)


def _adam_mini(model: nn.Module, lr: float, run: RunSettings) -> Built:
    import adam_mini

    optimizer = adam_mini.Adam_mini(model.named_parameters(), lr=lr,
                                    betas=(run.adamw_beta1, ADAMW_BETAS[1]),
                                    weight_decay=run.adamw_weight_decay, verbose=False)
    # Adam-mini partitions by name: tell it the study models' embeddings and output layer;
    # the fused attention input (qkv) gets one second moment per output row, as its values
    optimizer.embd_names.update({"tok_emb", "pos_emb"})
    optimizer.output_names.update({"head", "fc2"})
    optimizer.wv_names.add("qkv")
    return Built(optimizer, _wsd(optimizer, run))


class _Split(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped as one (one set of param groups
    for the LR scheduler, one state for the memory count)."""

    def __init__(self, parts: list[torch.optim.Optimizer]) -> None:  # noqa: D107
        self.parts = parts
        self.defaults = {}
        self.param_groups = [group for part in parts for group in part.param_groups]
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}

    @property
    def state(self) -> dict:  # type: ignore[override]
        return {p: s for part in self.parts for p, s in part.state.items()}

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon's, AdamW's) parameters: the 2-D weights of the hidden layers go to Muon; the
    embeddings, the output layer (the last ``nn.Linear``), biases, norms and convolutions to
    AdamW."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hidden = {id(m.weight) for m in linears[:-1]}
    muon = [p for p in model.parameters() if id(p) in hidden and p.ndim == 2]
    chosen = {id(p) for p in muon}
    return muon, [p for p in model.parameters() if id(p) not in chosen]


def _muon(model: nn.Module, lr: float, run: RunSettings) -> Built:
    hidden, rest = muon_split(model)
    parts = []
    if hidden:  # a model without hidden matrices (one linear layer) is AdamW's alone
        parts.append(torch.optim.Muon(hidden, lr=lr, weight_decay=run.adamw_weight_decay,
                                      adjust_lr_fn="match_rms_adamw"))
    if rest:
        parts.append(torch.optim.AdamW(rest, lr=lr, betas=(run.adamw_beta1, ADAMW_BETAS[1]),
                                       weight_decay=run.adamw_weight_decay, fused=True))
    optimizer = _Split(parts)
    return Built(optimizer, _wsd(optimizer, run))


def _wsd(optimizer: torch.optim.Optimizer, run: RunSettings) -> Any:
    from amosopt.torch import wsd_schedule

    return wsd_schedule(optimizer, run.budget, warmup_steps=run.warmup_steps,
                        cooldown_steps=run.cooldown_steps, cooldown=run.cooldown)


def build(name: str, model: nn.Module, value: float, run: RunSettings) -> Built:
    """The optimizer ``name`` for ``model`` with its tuned hyper-parameter at ``value``."""
    if name in ("amos", "amos-wsd"):
        return _amos(model, value, run, wsd=name == "amos-wsd")
    if name in ("adamw", "adamw-wsd"):
        return _adamw(model, value, run, wsd=name == "adamw-wsd")
    if name == "adafactor":
        return _adafactor(model, value, run)
    if name == "schedulefree":
        return _schedulefree(model, value, run)
    if name == "adam-mini":
        return _adam_mini(model, value, run)
    if name == "muon":
        return _muon(model, value, run)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def schedule_description(name: str, run: RunSettings) -> str:
    """One line for the report: how the rate moves over the budget."""
    wsd = (f"WSD: {run.cooldown} cooldown over the last {run.cooldown_steps} steps "
           f"({run.cooldown_fraction:.0%}) to 0")
    if name == "amos":
        return ("constant xi" + (f" after {run.amos_warmup} warm-up steps" if run.amos_warmup
                                 else "") + "; Amos's own decay only")
    if name == "amos-wsd":
        return (f"{run.amos_warmup} warm-up steps, " if run.amos_warmup else "") + wsd
    if name in ("adamw-wsd", "adam-mini", "muon"):
        return f"{run.warmup_steps} warm-up steps, {wsd}"
    if name == "schedulefree":
        return f"{run.warmup_steps} warm-up steps, then constant (schedule-free averaging)"
    return f"{run.warmup_steps} warm-up steps, then linear decay to 0 at the budget"

