"""What the report says about a study before its runs: the task, Amos's suggestion and scales,
and the optimizers' state sizes, all from seed 0's model."""

from __future__ import annotations

import functools
from dataclasses import replace

from amosopt.compare import data as data_lib
from amosopt.compare import optimizers
from amosopt.compare.config import CompareConfig
from amosopt.compare.models import count_parameters
from amosopt.compare.prepare import build_task, seed_setup_and_scales
from amosopt.compare.train import probe_state_bytes
from amosopt.suggest import suggest

__all__ = ["describe"]


def describe(config: CompareConfig) -> dict:
    """The task, the suggestion, the scales and the state sizes (seed 0's model) for the
    report."""
    budget = max(config.budgets)
    task = build_task(config, config.seeds[0], budget)
    if config.batch_size > task.train_examples:
        raise data_lib.DataError(
            f"invalid --batch-size: {config.batch_size} is larger than the "
            f"{task.train_examples} training examples; use at most {task.train_examples}")
    setup, table = seed_setup_and_scales(config, config.seeds[0], budget)
    model = task.make_model()
    model.load_state_dict(setup.init_state)
    memory = {}
    for name, momentum in (("amos_momentum_0", 0.0), ("amos_momentum_0.9", 0.9),
                           ("adamw", None)):
        settings = replace(setup.settings, amos_momentum=momentum or 0.0)
        memory[name] = probe_state_bytes(task, model, functools.partial(
            optimizers.build, "adamw" if momentum is None else "amos", value=1e-3,
            settings=settings))
    return {
        "task": {"name": task.name, "data": task.description,
                 "parameters": count_parameters(model), "train_examples": task.train_examples,
                 "batch_size": config.batch_size},
        "suggestion": suggest(task.train_examples, config.batch_size, "mean").as_dict(),
        "scales": {"source": _scales_source(config), "table": table},
        "probe_state_bytes": memory,
    }


def _scales_source(config: CompareConfig) -> str:
    """Where Amos's scales come from, with the ablations' overrides."""
    source = "amosopt.torch.auto_scales"
    if config.amos_eta is not None:
        source += f", eta overridden to {config.amos_eta:g}"
    if config.amos_decay_ratio != 1:
        source += f", decay_ratio {config.amos_decay_ratio:g}"
    if config.amos_eta_scale != 1:
        source += f", eta x {config.amos_eta_scale:g} with xi / {config.amos_eta_scale:g}"
    if config.amos_slots != "factored":
        source += ", full-size slots"
    if config.amos_second_moment != "slot":
        source += f", second moment {config.amos_second_moment}"
    return source
