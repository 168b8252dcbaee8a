"""What Amos is doing, from a torch optimizer's state: :func:`diagnostics` and
:func:`decay_onset` (also :meth:`amosopt.torch.Amos.diagnostics`).

The numbers and their formulas are those of :mod:`amosopt.diagnostics`, equal to
:func:`amosopt.optax.diagnostics` on the same problem. They read the state after the last
``step()`` (and ``p.grad`` for ``clip_fraction``, until ``zero_grad``): one host transfer of the
slot-sized tensors, nothing when not called.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from amosopt import diagnostics as shared

__all__ = ["decay_onset", "diagnostics", "from_state_dict", "numbers_by_name"]


def _local(t: torch.Tensor) -> np.ndarray:
    """A float64 NumPy copy of a tensor (a DTensor's full value)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().to("cpu", torch.float64).numpy()


def _per_parameter(groups: list[dict], state_of: Any, grad_of: Any = None,
                   names: list[str] | None = None) -> dict[str, dict[str, float]]:
    """The numbers of every stepped parameter; ``groups`` are param groups (of an optimizer, or
    of a ``state_dict`` with parameter indices), ``state_of(p)`` its state or None."""
    out: dict[str, dict[str, float]] = {}
    index = 0
    for group in groups:
        group_names = group.get("param_names")
        xi = float(group["lr"])
        for i, p in enumerate(group["params"]):
            name = (group_names[i] if group_names else
                    names[index] if names and index < len(names) else str(index))
            index += 1
            state = state_of(p)
            if not state or "v" not in state:
                continue  # no step yet
            clip = group.get("clip_value")
            grad = grad_of(p) if grad_of is not None and clip is not None else None
            numbers = shared.variable(
                xi=xi, eta=float(state["eta"]), beta=group["beta"],
                count=float(state["step"]), v=_local(state["v"]), b=_local(state["b"]),
                c_coef=group["c_coef"], d_coef=group["d_coef"], extra_l2=group["extra_l2"],
                epsilon=group["epsilon"], decay_ratio=group["decay_ratio"], xp=np,
                grad=None if grad is None else _local(grad),
                clip_value=clip)
            out[name] = {key: float(value) for key, value in numbers.items()}
    return out


def numbers_by_name(optimizer: torch.optim.Optimizer) -> dict[str, dict[str, float]]:
    """``{name: {key: value}}``: the numbers of :func:`diagnostics`, not flattened; a trainer's
    wrapper is unwrapped (:func:`amosopt.torch.integrations.unwrap_optimizer`)."""
    from amosopt.torch.integrations import unwrap_optimizer

    optimizer = unwrap_optimizer(optimizer)
    return _per_parameter(optimizer.param_groups, optimizer.state.get, lambda p: p.grad)


def from_state_dict(state_dict: dict, names: list[str] | None = None
                    ) -> dict[str, dict[str, float]]:
    """``{name: {key: value}}`` from a saved ``Amos.state_dict()`` (no optimizer needed);
    ``names`` in parameter order when the state_dict has none (an unnamed optimizer)."""
    return _per_parameter(state_dict["param_groups"], state_dict["state"].get, None, names)


def diagnostics(optimizer: torch.optim.Optimizer, *, per_parameter: bool = True
                ) -> dict[str, float]:
    """Per-parameter diagnostics of :class:`amosopt.torch.Amos`, as a flat dict for loggers.

    ``optimizer`` may be a trainer's wrapper around Amos: ``diagnostics(trainer.optimizer)``
    for a Hugging Face ``Trainer`` (accelerate's ``AcceleratedOptimizer``, which lacks the
    method ``trainer.optimizer.diagnostics``). ``per_parameter=False`` keeps only the min /
    median / max over the parameters: a few dozen keys however large the model.

    Keys: ``"KEY/NAME"`` for each parameter (its ``named_parameters()`` name, or its index when
    the optimizer was given no names) if ``per_parameter``, and ``"KEY/min"``,
    ``"KEY/median"``, ``"KEY/max"`` over the parameters, for ``KEY`` in ``lr`` (the effective
    step ``xi * eta * d_t * sqrt(1 / v_hat)``, mean over the slot), ``weight_decay``
    (``0.5 * gamma + extra_l2``), ``d_t``, ``c_t``, ``b``, ``decay`` (``1 - d_t``),
    ``decay_onset`` (steps until the step drops another 10%) and ``clip_fraction``; formulas in
    :mod:`amosopt.diagnostics`. Parameters that have not been stepped yet are left out.

    Example:
        >>> import torch
        >>> from amosopt.torch import Amos
        >>> w = torch.nn.Parameter(torch.ones(4, 3))
        >>> opt = Amos([("w", w)], lr=0.1, eta=0.5)
        >>> w.grad = torch.ones(4, 3)
        >>> opt.step()
        >>> numbers = diagnostics(opt)
        >>> round(numbers["lr/w"], 4), round(numbers["d_t/w"], 6)
        (0.05, 0.999441)
    """
    return shared.flatten(numbers_by_name(optimizer), per_parameter)


def decay_onset(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Per parameter name (or index): in how many more steps Amos's own decay will have cut
    its step by another 10%, at steady gradient statistics (the closed form of the ``b``
    recursion, :func:`amosopt.diagnostics.steps_until_drop`)."""
    return {name: numbers["decay_onset"]
            for name, numbers in numbers_by_name(optimizer).items()}
