"""Checks of :class:`amosopt.torch.Amos`'s hyper-parameters, at construction and for every
param group added: a clear ``ValueError`` naming the argument, before anything is stepped."""

from __future__ import annotations

import math
import numbers
from typing import Any

from torch import Tensor

from amosopt.hyperparameters import check_interval, check_second_moment
from amosopt.rules import as_b0_fn, as_eta_fn, as_shape_fn, is_rule_table

#: the values of ``rounding``
ROUNDINGS = ("nearest", "stochastic", "compensated")
#: the values of ``nonfinite``
NONFINITE = ("raise", "skip")


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_hyperparameters(group: dict[str, Any], where: str) -> None:
    """Raises ValueError naming the first invalid hyper-parameter of ``group``."""

    def bad(arg: str, why: str) -> ValueError:
        return ValueError(f"Invalid {arg}{where}: {group[arg]!r}; {why}")

    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise bad("lr", "a tensor lr must have one element")
        lr = lr.item()
    numbers_ = ("lr", "beta", "momentum", "clip_value", "c_coef", "d_coef", "extra_l2",
                "epsilon", "decay_ratio")
    for arg in numbers_:
        value = lr if arg == "lr" else group[arg]
        if arg == "clip_value" and value is None:
            continue
        if not _is_number(value):
            raise bad(arg, "it must be a number" + (" or None (no clipping)"
                                                    if arg == "clip_value" else ""))
        check_interval(arg, value, shown=group[arg], where=where)
    if not isinstance(group["rounding"], str) or group["rounding"] not in ROUNDINGS:
        raise bad("rounding", f"it must be one of {', '.join(map(repr, ROUNDINGS))}")
    if not isinstance(group["nonfinite"], str) or group["nonfinite"] not in NONFINITE:
        raise bad("nonfinite", f"it must be one of {', '.join(map(repr, NONFINITE))}")
    check_second_moment(group["second_moment"], where)
    for arg in ("foreach", "maximize", "fused"):
        if group[arg] not in ((None, True, False) if arg == "foreach" else (True, False)):
            raise bad(arg, "it must be a bool" + (" or None (auto)" if arg == "foreach" else ""))
    if group["fused"] and group["foreach"] is False:
        raise bad("foreach", "fused=True runs on the multi-tensor path: pass foreach=None or "
                  "True with it, or fused=False for the single-tensor loop")
    _check_specs(group, where)


def _check_specs(group: dict[str, Any], where: str) -> None:
    """Checks ``eta`` / ``slot_shape`` / ``b0`` specs, and that name-based specs have names to
    use."""
    eta, slot_shape, b0 = group["eta"], group["slot_shape"], group["b0"]
    if _is_number(b0):
        check_interval("b0", b0, where=where)
    if _is_number(eta) and not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"Invalid eta{where}: {eta!r}; eta, the expected magnitude of a "
                         "parameter's entries, must be a finite number > 0")
    try:
        as_eta_fn(eta)  # numbers are checked here; tables compile their regexes
        as_shape_fn(slot_shape)
        as_b0_fn(b0)
    except ValueError as error:
        raise ValueError(f"{error}{where}") from None
    named = [arg for arg, spec in (("eta", eta), ("slot_shape", slot_shape), ("b0", b0))
             if spec is not None and not _is_number(spec)]
    if named and "param_names" not in group:
        kind = "a rule table" if is_rule_table(group[named[0]]) else "a callable"
        raise ValueError(
            f"{named[0]} is {kind}{where}, which needs parameter names, but the parameters were "
            "given without names. Pass model.named_parameters(), (name, tensor) pairs, or a "
            "param group dict {'params': [(name, tensor), ...]}; or pass a plain float eta."
        )
