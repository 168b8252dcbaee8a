"""What every run of one (seed, budget) starts from: the task with its seeded batch order, the
model's initial weights, and the settings the optimizers are built with (Amos's suggested
``xi``, ``beta``, clip and automatic scales, and the study's options)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

import torch

from amosopt.compare import data as data_lib
from amosopt.compare.config import CompareConfig
from amosopt.compare.optimizers import OptimizerSettings
from amosopt.compare.tasks import DigitsTask, LMTask, Task
from amosopt.suggest import suggest

__all__ = ["SeedSetup", "build_task", "seed_setup", "seed_setup_and_scales"]

_DATA: dict[Any, Any] = {}  # per process: the loaded data


@dataclass
class SeedSetup:
    """What every run of one (seed, budget) starts from: the task with its batch order, the
    model's initial weights and the settings the optimizers are built with."""

    task: Task
    init_state: dict
    settings: OptimizerSettings
    evals: int  # validation evaluations per run


def build_task(config: CompareConfig, seed: int, budget: int) -> Task:
    if config.task == "lm":
        min_bytes = config.seq_len + 1
        key = ("text", config.text, config.train_bytes)
        if key not in _DATA:
            text = (data_lib.load_text_file(config.text, min_bytes) if config.text else
                    data_lib.load_stdlib_text(min_bytes))
            _DATA[key] = (data_lib.subsample_train(text, config.train_bytes)
                          if config.train_bytes else text)
        return LMTask(_DATA[key], steps=budget, seed=seed,
                      batch_size=config.batch_size, seq_len=config.seq_len, width=config.width,
                      layers=config.layers, heads=config.heads,
                      eval_batches=config.eval_batches)
    if "digits" not in _DATA:
        _DATA["digits"] = data_lib.load_digits_data()
    return DigitsTask(_DATA["digits"], steps=budget, seed=seed, batch_size=config.batch_size,
                      channels=config.channels)


def _amos_scales(config: CompareConfig, model: torch.nn.Module, example: Any):
    """(eta, slot_shape, table) for Amos: automatic, or the ablations' overrides."""
    from amosopt.torch import auto_scales

    scales = auto_scales(model, example_inputs=example)
    k = config.amos_eta_scale
    if config.amos_eta is not None:
        eta = k * float(config.amos_eta)
    elif k != 1:
        eta = functools.partial(_scaled_eta, scales.eta, k)
    else:
        eta = scales.eta
    slot_shape = scales.slot_shape if config.amos_slots == "factored" else None
    scaled = f" x {k:g} (--amos-eta-scale)" if k != 1 else ""
    table = [{"name": name, "shape": list(p.shape),
              "eta": k * float(scales[name].eta if config.amos_eta is None else config.amos_eta),
              "slot_shape": list(scales[name].slot_shape if slot_shape else p.shape),
              "reason": (str(scales[name].reason) if config.amos_eta is None
                         else f"one eta for all (--amos-eta {config.amos_eta:g})") + scaled}
             for name, p in model.named_parameters()]
    return eta, slot_shape, table


def _scaled_eta(eta: Any, k: float, name: str, shape: tuple) -> float:
    return k * eta(name, shape)


#: the study's options that the optimizers read: OptimizerSettings' fields named as in CompareConfig
_STUDY_OPTIONS = tuple(f.name for f in fields(OptimizerSettings)
                       if f.name in {g.name for g in fields(CompareConfig)})


def seed_setup(config_dict: dict, seed: int, budget: int) -> SeedSetup:
    """The model's initialisation for ``seed`` and every run's settings at ``budget``."""
    return seed_setup_and_scales(CompareConfig(**config_dict), seed, budget)[0]


def seed_setup_and_scales(config: CompareConfig, seed: int, budget: int
                          ) -> tuple[SeedSetup, list[dict]]:
    """:func:`seed_setup`, and Amos's scales table for the report (one trace of the model)."""
    task = build_task(config, seed, budget)
    torch.manual_seed(seed)
    model = task.make_model()
    _warm_up(task, model)
    suggestion = suggest(task.train_examples, config.batch_size, "mean")
    eta, slot_shape, table = _amos_scales(config, model, task.batch(0)[0])
    settings = OptimizerSettings(
        budget=budget, xi=suggestion.xi / config.amos_eta_scale, beta=suggestion.beta,
        clip_value=suggestion.clip_value, eta=eta, slot_shape=slot_shape,
        recipe=suggest(task.train_examples, config.batch_size, "mean", steps=budget),
        **{name: getattr(config, name) for name in _STUDY_OPTIONS})
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    return SeedSetup(task, init_state, settings, config.evals), table


def _warm_up(task: Task, model: torch.nn.Module) -> None:
    """A few untimed forward/backward passes, so one-time costs (thread pools, kernel
    selection) do not land on the first run's clock."""
    for step in range(3):
        inputs, targets = task.batch(step)
        task.loss(model, inputs, targets).backward()
    model.zero_grad(set_to_none=True)
