"""Amos in the trainers people use: Hugging Face ``Trainer`` (and anything that takes an
optimizer and a scheduler: Lightning's ``configure_optimizers``, accelerate's ``prepare``).

Two forms for ``transformers.Trainer``:

* ``Trainer(..., optimizers=trainer_optimizer(model, args))``: Amos with automatic scales and a
  schedule of ``xi`` built from ``args``: its warm-up, then a WSD cooldown to 0 at
  ``args.max_steps`` (or, with ``schedule="constant"``, a constant ``xi``: Amos's own decay);
  ``pretrained=True`` to fine-tune (a warm start from the weights; ``peft`` LoRA models too);
* ``Trainer(..., optimizer_cls_and_kwargs=(AmosFactory, {"lr": xi, ...}))`` (transformers >= 5,
  which calls a non-optimizer class as a factory with the model): Amos with automatic scales,
  under the Trainer's own schedule (``args.lr_scheduler_type``; ``"warmup_stable_decay"`` is the
  WSD shape).

``args.learning_rate`` is Amos's global rate ``xi`` (about ``1/sqrt(batches per epoch)``, see
``amos suggest``), not an AdamW rate: the Trainer's default ``5e-5`` is one, and
:func:`trainer_optimizer` warns. ``args.weight_decay`` does not apply: Amos decays the weights
itself (the paper's adaptive ``gamma``); pass ``extra_l2`` for more. ``args.max_grad_norm`` (the
Trainer's default 1.0) clips the global gradient norm before Amos, which normalises each entry
itself: set it to 0 and use Amos's element-wise ``clip_value``.

The Trainer (through accelerate) wraps the optimizer: ``trainer.optimizer`` is an
``AcceleratedOptimizer``, without Amos's methods. :func:`unwrap_optimizer` finds the Amos inside
(``unwrap_optimizer(trainer.optimizer).diagnostics()``), and
:func:`amosopt.torch.diagnostics.diagnostics` takes the wrapper as it is. Lightning's wrapper
(``self.optimizers()`` in a ``LightningModule``) has Amos's methods itself.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from amosopt.schedules import DEFAULT_COOLDOWN_FRACTION
from amosopt.suggest import Suggestion, check_suggestion
from amosopt.torch._recipe import recipe as build_recipe
from amosopt.torch.scales import auto_amos
from amosopt.torch.schedules import warmup_schedule, wsd_schedule

__all__ = ["AmosFactory", "trainer_optimizer", "unwrap_optimizer"]

SCHEDULES = ("wsd", "constant")
#: below this a constant-schedule ``xi`` with no budget to compare with looks like an AdamW
#: rate: ``xi = 1/sqrt(N)`` below 1e-3 means more than a million batches per epoch
_XI_FLOOR = 1e-3
#: a rate this many times below the suggested ``xi`` is taken for an AdamW rate
_XI_FACTOR = 10.0


def _budget(args: Any, num_training_steps: int | None, required: bool = True) -> int | None:
    steps = args.max_steps if getattr(args, "max_steps", -1) > 0 else num_training_steps
    if steps is None or steps <= 0:
        if not required:
            return None
        raise ValueError("Invalid num_training_steps: args.max_steps is not set; pass "
                         "num_training_steps (the number of optimizer steps of the run)")
    return int(steps)


def _warmup(args: Any, total: int | None) -> int:
    """The warm-up in steps; a fraction of the run (``warmup_steps < 1``, ``warmup_ratio``)
    needs the budget."""
    steps = args.warmup_steps
    if steps == 0:  # transformers < 5 keeps the fraction apart, as warmup_ratio
        fraction = getattr(args, "warmup_ratio", 0.0) or 0.0
    else:
        fraction = steps if steps < 1 else 0.0
    if total is None:
        if fraction:
            raise ValueError(
                f"Invalid num_training_steps: the warm-up is a fraction of the run "
                f"({fraction}), so it needs the budget: set max_steps or num_training_steps, or "
                "give warmup_steps in steps (>= 1)")
        return int(args.warmup_steps)
    return min(args.get_warmup_steps(total), total)


def _check_training_arguments(args: Any, total: int | None, xi_given: bool = False) -> None:
    """Warns about TrainingArguments that suit AdamW and not Amos (not about the rate when a
    recipe gives ``xi``)."""
    if getattr(args, "weight_decay", 0.0):
        warnings.warn(f"TrainingArguments.weight_decay={args.weight_decay} does not apply to "
                      "Amos, which decays the weights itself; use extra_l2 for more",
                      stacklevel=3)
    if getattr(args, "max_grad_norm", 0.0):
        warnings.warn(f"TrainingArguments.max_grad_norm={args.max_grad_norm} clips the global "
                      "gradient norm before Amos, which normalises every entry itself; set "
                      "max_grad_norm=0 and pass clip_value= (element-wise: 1 for a mean loss) "
                      "to trainer_optimizer", stacklevel=3)
    if xi_given:
        return
    xi = float(args.learning_rate)
    if total is None:
        if xi < _XI_FLOOR:
            warnings.warn(f"TrainingArguments.learning_rate={xi:g} is Amos's global rate xi, "
                          "and looks like an AdamW rate: xi is about 1/sqrt(batches per "
                          f"epoch), below {_XI_FLOOR:g} only past a million batches per epoch; "
                          "`amos suggest --examples N --batch-size B` gives it", stacklevel=3)
        return
    from amosopt.suggest import suggest

    epochs = getattr(args, "num_train_epochs", 1) if getattr(args, "max_steps", -1) <= 0 else 1
    batches = max(1, round(total / max(float(epochs), 1.0)))
    suggested = suggest(batches, 1).xi
    if xi < suggested / _XI_FACTOR:
        warnings.warn(
            f"TrainingArguments.learning_rate={xi:g} is Amos's global rate xi, and looks like "
            f"an AdamW rate: for about {batches:,} batches per epoch (the budget of {total:,} "
            f"steps over {epochs:g} epoch(s)) `amos suggest` gives xi = {suggested:g}; set "
            "learning_rate to about that (the Trainer's default 5e-5 is an AdamW value)",
            stacklevel=3)


def trainer_optimizer(model: nn.Module, args: Any, num_training_steps: int | None = None, *,
                      example_inputs: Any = None, schedule: str = "wsd",
                      cooldown_fraction: float = DEFAULT_COOLDOWN_FRACTION,
                      pretrained: bool = False, recipe: Suggestion | None = None,
                      **amos_kwargs: Any) -> tuple[torch.optim.Optimizer, Any]:
    """``(optimizer, scheduler)`` for ``transformers.Trainer(optimizers=...)``.

    Args:
        model: the model the Trainer trains.
        args: its ``TrainingArguments``: ``learning_rate`` is ``xi``; ``warmup_steps`` (steps,
            or a fraction of the run when below 1) the linear warm-up; ``max_steps`` the budget.
        num_training_steps: the budget when ``args.max_steps`` is not set (epochs instead).
            With ``schedule="constant"`` and a warm-up in steps, no budget is needed.
        example_inputs: one batch's inputs for the data-flow analysis of
            :func:`amosopt.torch.auto_scales` (for a Hugging Face model, a dict such as
            ``{"input_ids": ids}``); without it the name heuristics decide.
        schedule: ``"wsd"``: warm-up, constant, then a linear cooldown to 0 over the last
            ``cooldown_fraction`` of the budget (for a budget shorter than Amos's own decay
            onset, see ``amos suggest --steps``); ``"constant"``: warm-up, then constant.
        pretrained: fine-tuning: the warm start of :func:`amosopt.torch.auto_amos`, each
            pretrained tensor's ``eta`` from its weights and its ``b`` starting at ``b0``
            (pass ``b0=`` / ``eta_floor=`` to change them); LoRA adapters of a ``peft`` model
            get their own scales either way. ``resume_from_checkpoint`` restores ``eta`` and
            ``b`` from the checkpoint, not from the weights at resume time.
        recipe: a :class:`amosopt.suggest.Suggestion` (``suggest(examples, batch_size,
            steps=T)``) whose whole setting replaces the rate, warm-up and schedule of ``args``:
            its ``xi``, ``warmup_steps`` and ``cooldown_steps`` (the WSD shape up to its budget
            ``steps``, which must be the Trainer's; a constant ``xi`` after the warm-up when it
            has none) and its Amos arguments (``amos_kwargs`` override single ones), as
            :func:`amosopt.torch.recipe` builds them.
        **amos_kwargs: for :class:`amosopt.torch.Amos` (``momentum``, ``clip_value``, ``beta``...)
            and :func:`amosopt.torch.auto_amos` (``b0``, ``eta_floor``, ``lora_update``,
            ``eta_overrides``...).

    Warns:
        UserWarning: ``args.learning_rate`` far below the ``xi`` that ``amos suggest`` gives for
            the budget (an AdamW rate, such as the Trainer's default 5e-5); a nonzero
            ``args.weight_decay`` or ``args.max_grad_norm`` (the Trainer's default 1.0); with a
            ``recipe``, an ``args.learning_rate`` other than its ``xi`` (it is not used).

    Raises:
        ValueError: with a ``recipe``, a budget other than the Trainer's.
    """
    if recipe is not None:
        return _with_recipe(model, args, num_training_steps, recipe, example_inputs,
                            pretrained, amos_kwargs)
    if schedule not in SCHEDULES:
        raise ValueError(f"Invalid schedule: {schedule!r}; expected one of {SCHEDULES}")
    total = _budget(args, num_training_steps, required=schedule != "constant")
    warmup = _warmup(args, total)
    _check_training_arguments(args, total)
    optimizer = auto_amos(model, args.learning_rate, example_inputs, pretrained=pretrained,
                          **amos_kwargs)
    if schedule == "constant":  # no budget: hold xi after the warm-up, however long the run
        return optimizer, warmup_schedule(optimizer, warmup)
    cooldown = min(round(cooldown_fraction * total), total - warmup)
    return optimizer, wsd_schedule(optimizer, total, warmup_steps=warmup,
                                   cooldown_steps=cooldown)


def _with_recipe(model: nn.Module, args: Any, num_training_steps: int | None,
                 recipe: Suggestion, example_inputs: Any, pretrained: bool,
                 amos_kwargs: dict) -> tuple[torch.optim.Optimizer, Any]:
    check_suggestion(recipe, "trainer_optimizer")
    total = _budget(args, num_training_steps, required=False)
    if recipe.steps is not None and total is not None and total != recipe.steps:
        raise ValueError(f"Invalid recipe: it is for a budget of {recipe.steps} steps and the "
                         f"Trainer runs {total}; pass suggest(..., steps={total})")
    _check_training_arguments(args, total, xi_given=True)
    if not math.isclose(float(args.learning_rate), recipe.xi, rel_tol=1e-6):
        warnings.warn(f"TrainingArguments.learning_rate={args.learning_rate:g} is not used: the "
                      f"recipe's xi = {recipe.xi:.4g} is", stacklevel=3)
    return build_recipe(model, recipe, example_inputs, pretrained=pretrained, **amos_kwargs)


class AmosFactory:
    """For ``Trainer(optimizer_cls_and_kwargs=(AmosFactory, kwargs))`` (transformers >= 5):
    the Trainer calls ``AmosFactory()(model, **kwargs)``, which is
    :func:`amosopt.torch.auto_amos` (``kwargs``: ``lr`` and Amos's arguments)."""

    def __call__(self, model: nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
        kwargs = dict(kwargs)
        lr = kwargs.pop("lr")
        return auto_amos(model, lr, kwargs.pop("example_inputs", None), **kwargs)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The :class:`amosopt.torch.Amos` inside a trainer's wrapper: accelerate's
    ``AcceleratedOptimizer`` (``trainer.optimizer`` of a Hugging Face ``Trainer``), Lightning's
    ``LightningOptimizer``, or any wrapper keeping it as ``.optimizer`` / ``._optimizer``; an
    ``Amos`` is returned as is.

    Example: ``unwrap_optimizer(trainer.optimizer).diagnostics(per_parameter=False)``.

    Raises:
        TypeError: no Amos inside.
    """
    from amosopt.torch.optimizer import Amos

    seen = optimizer
    for _ in range(8):  # wrappers of wrappers; a bound, not a cycle
        inner = getattr(seen, "_optimizer", None) or getattr(seen, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is seen:
            break
        seen = inner
    if isinstance(seen, Amos):
        return seen
    raise TypeError(f"{type(optimizer).__name__} is not amosopt.torch.Amos, nor a wrapper "
                    "around one (.optimizer / ._optimizer)")

