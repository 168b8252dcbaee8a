"""The optimizers that ``amos compare`` can put side by side, and how each is built for a run.

Each has one tuned hyper-parameter, searched on a grid with the same number of trials:

* ``amos``: the paper's recipe, ``amosopt.torch.Amos`` at a constant ``xi`` (the anytime run);
* ``amos-wsd``: the same with a warmup-stable-decay cooldown (:func:`amosopt.torch.wsd_schedule`);
* ``amos-recipe``: the whole setting that ``amos suggest --steps T`` gives for the budget
  (:func:`amosopt.suggest.suggest`, as :func:`amosopt.torch.recipe` builds it), with the
  automatic scales; ``amos-recipe-nomom`` the same without momentum;
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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from amosopt.compare.config import field_default
from amosopt.compare.registry import OPTIMIZERS, OptimizerInfo

__all__ = ["OPTIMIZERS", "Built", "OptimizerInfo", "OptimizerSettings", "build"]

ADAMW_BETA2 = 0.999
#: Adafactor's and schedule-free's: AdamW's defaults, fixed (the --adamw-* flags change AdamW's,
#: Adam-mini's and Muon's only)
FIXED_WEIGHT_DECAY = field_default("adamw_weight_decay")
FIXED_BETAS = (field_default("adamw_beta1"), ADAMW_BETA2)


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
class OptimizerSettings:
    """What :func:`build` reads besides the model and the tuned value: the budget, Amos's
    suggested settings and scales, and the study's options (the same for every run of one
    (seed, budget))."""

    budget: int
    xi: float  # suggested global rate
    beta: float  # suggested, unless amos_beta is set
    clip_value: float
    eta: Callable[[str, tuple], float] | float
    slot_shape: Callable[[str, tuple], tuple] | None
    # the study's options, named and defaulted as in CompareConfig (the one source of defaults)
    amos_momentum: float = field_default("amos_momentum")
    amos_beta: float | None = field_default("amos_beta")
    amos_warmup: int = field_default("amos_warmup")
    amos_decay_ratio: float = field_default("amos_decay_ratio")
    amos_second_moment: str = field_default("amos_second_moment")  # Amos(second_moment=...)
    warmup_fraction: float = field_default("warmup_fraction")  # AdamW, Adafactor, schedule-free
    cooldown_fraction: float = field_default("cooldown_fraction")  # the WSD runs
    cooldown: str = field_default("cooldown")
    adamw_weight_decay: float = field_default("adamw_weight_decay")  # adamw and adamw-wsd
    adamw_beta1: float = field_default("adamw_beta1")  # adamw and adamw-wsd
    #: amos suggest's setting for the budget (amos-recipe): an amosopt.suggest.Suggestion
    recipe: Any = None
    #: Amos(b0=...): where b starts, 0 (the paper's) or a warm start's table (fine-tuning,
    #: benchmarks/finetune.py); not a study option
    amos_b0: Any = 0.0

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_fraction * self.budget)

    @property
    def cooldown_steps(self) -> int:
        return round(self.cooldown_fraction * self.budget)


def _linear_warmup_decay(optimizer: torch.optim.Optimizer, settings: OptimizerSettings) -> Any:
    """The paper's baseline schedule: linear warm-up, then a linear decay that reaches 0 at the
    budget, i.e. WSD whose cooldown spans everything after the warm-up."""
    from amosopt.torch import wsd_schedule

    return wsd_schedule(optimizer, settings.budget, warmup_steps=settings.warmup_steps,
                        cooldown_steps=settings.budget - settings.warmup_steps)


def _amos(model: nn.Module, multiplier: float, settings: OptimizerSettings, wsd: bool) -> Built:
    from amosopt.torch import Amos, wsd_schedule
    from amosopt.torch.schedules import warmup_schedule

    # trainable parameters only: a LoRA model's frozen base weights have no scales
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = Amos(params, lr=multiplier * settings.xi, eta=settings.eta,
                     slot_shape=settings.slot_shape, b0=settings.amos_b0,
                     beta=settings.beta if settings.amos_beta is None else settings.amos_beta,
                     momentum=settings.amos_momentum, clip_value=settings.clip_value,
                     decay_ratio=settings.amos_decay_ratio,
                     second_moment=settings.amos_second_moment)
    if wsd:
        scheduler = wsd_schedule(optimizer, settings.budget, warmup_steps=settings.amos_warmup,
                                 cooldown_steps=settings.cooldown_steps, cooldown=settings.cooldown)
    elif settings.amos_warmup:  # constant after a warm-up: the anytime run knows no budget
        scheduler = warmup_schedule(optimizer, settings.amos_warmup)
    else:
        scheduler = None
    return Built(optimizer, scheduler)


def _amos_recipe(model: nn.Module, multiplier: float, settings: OptimizerSettings,
                 momentum: bool) -> Built:
    """``amosopt.torch.recipe(model, settings.recipe)`` with the traced scales and ``xi`` times
    ``multiplier``."""
    from amosopt.torch import Amos, wsd_schedule

    recipe = settings.recipe
    kwargs = recipe.amos_kwargs() | ({} if momentum else {"momentum": 0.0})
    optimizer = Amos(model.named_parameters(), lr=multiplier * recipe.xi, eta=settings.eta,
                     slot_shape=settings.slot_shape, **kwargs)
    return Built(optimizer, wsd_schedule(optimizer, **recipe.schedule_kwargs()))


def _adamw(model: nn.Module, lr: float, settings: OptimizerSettings, wsd: bool) -> Built:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr,
                                  betas=(settings.adamw_beta1, ADAMW_BETA2),
                                  weight_decay=settings.adamw_weight_decay, fused=True)
    scheduler = _wsd(optimizer, settings) if wsd else _linear_warmup_decay(optimizer, settings)
    return Built(optimizer, scheduler)


def _adafactor(model: nn.Module, lr: float, settings: OptimizerSettings) -> Built:
    optimizer = torch.optim.Adafactor(model.parameters(), lr=lr,
                                      weight_decay=FIXED_WEIGHT_DECAY)
    return Built(optimizer, _linear_warmup_decay(optimizer, settings))


def _schedulefree(model: nn.Module, lr: float, settings: OptimizerSettings) -> Built:
    import schedulefree

    optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=lr, betas=FIXED_BETAS,
                                               weight_decay=FIXED_WEIGHT_DECAY,
                                               warmup_steps=settings.warmup_steps)
    return Built(optimizer, None, train_mode=optimizer.train, eval_mode=optimizer.eval)


def _adam_mini(model: nn.Module, lr: float, settings: OptimizerSettings) -> Built:
    import adam_mini

    optimizer = adam_mini.Adam_mini(model.named_parameters(), lr=lr,
                                    betas=(settings.adamw_beta1, ADAMW_BETA2),
                                    weight_decay=settings.adamw_weight_decay, verbose=False)
    # Adam-mini partitions by name: tell it the study models' embeddings and output layer;
    # the fused attention input (qkv) gets one second moment per output row, as its values
    optimizer.embd_names.update({"tok_emb", "pos_emb"})
    optimizer.output_names.update({"head", "fc2"})
    optimizer.wv_names.add("qkv")
    return Built(optimizer, _wsd(optimizer, settings))


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


def _muon(model: nn.Module, lr: float, settings: OptimizerSettings) -> Built:
    hidden, rest = muon_split(model)
    parts = []
    if hidden:  # a model without hidden matrices (one linear layer) is AdamW's alone
        parts.append(torch.optim.Muon(hidden, lr=lr, weight_decay=settings.adamw_weight_decay,
                                      adjust_lr_fn="match_rms_adamw"))
    if rest:
        parts.append(torch.optim.AdamW(rest, lr=lr, betas=(settings.adamw_beta1, ADAMW_BETA2),
                                       weight_decay=settings.adamw_weight_decay, fused=True))
    optimizer = _Split(parts)
    return Built(optimizer, _wsd(optimizer, settings))


def _wsd(optimizer: torch.optim.Optimizer, settings: OptimizerSettings) -> Any:
    from amosopt.torch import wsd_schedule

    return wsd_schedule(optimizer, settings.budget, warmup_steps=settings.warmup_steps,
                        cooldown_steps=settings.cooldown_steps, cooldown=settings.cooldown)


def build(name: str, model: nn.Module, value: float, settings: OptimizerSettings) -> Built:
    """The optimizer ``name`` for ``model`` with its tuned hyper-parameter at ``value``."""
    if name in ("amos", "amos-wsd"):
        return _amos(model, value, settings, wsd=name == "amos-wsd")
    if name in ("amos-recipe", "amos-recipe-nomom"):
        return _amos_recipe(model, value, settings, momentum=name == "amos-recipe")
    if name in ("adamw", "adamw-wsd"):
        return _adamw(model, value, settings, wsd=name == "adamw-wsd")
    if name == "adafactor":
        return _adafactor(model, value, settings)
    if name == "schedulefree":
        return _schedulefree(model, value, settings)
    if name == "adam-mini":
        return _adam_mini(model, value, settings)
    if name == "muon":
        return _muon(model, value, settings)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def schedule_description(name: str, settings: OptimizerSettings) -> str:
    """One line for the report: how the rate moves over the budget."""
    wsd = (f"WSD: {settings.cooldown} cooldown over the last {settings.cooldown_steps} steps "
           f"({settings.cooldown_fraction:.0%}) to 0")
    if name == "amos":
        warmup = settings.amos_warmup
        return ("constant xi" + (f" after {warmup} warm-up steps" if warmup else "")
                + "; Amos's own decay only")
    if name == "amos-wsd":
        return (f"{settings.amos_warmup} warm-up steps, " if settings.amos_warmup else "") + wsd
    if name in ("amos-recipe", "amos-recipe-nomom"):
        r = settings.recipe
        if not r.cooldown_steps:
            return f"amos suggest's {r.recipe} recipe: constant xi; Amos's own decay only"
        return (f"amos suggest's {r.recipe} recipe: {r.warmup_steps} warm-up steps, WSD: linear "
                f"cooldown over the last {r.cooldown_steps} steps to 0; decay ratio "
                f"{r.decay_ratio:g}, {r.second_moment} second moment, beta {r.beta:g}")
    if name in ("adamw-wsd", "adam-mini", "muon"):
        return f"{settings.warmup_steps} warm-up steps, {wsd}"
    if name == "schedulefree":
        return f"{settings.warmup_steps} warm-up steps, then constant (schedule-free averaging)"
    return f"{settings.warmup_steps} warm-up steps, then linear decay to 0 at the budget"

