"""The first mistakes made with :class:`amosopt.torch.Amos`, each caught early with an error that
names the fix: a missing ``eta``, rule tables that leave a parameter without a value (or match
nothing), another optimizer's or another model's state, and schedulers that cycle ``momentum``.
(Arguments of other optimizers, ``weight_decay=`` and the like, are caught by
:func:`amosopt.hyperparameters.hints_foreign_arguments`, which both backends share.)

Each check is one function that :mod:`amosopt.torch.optimizer` (or, for a saved state,
:mod:`amosopt.torch._checkpoints`) calls from one line; none of them changes the optimizer.
"""

from __future__ import annotations

import re
from typing import Any

from torch.optim.optimizer import required

from amosopt.rules import (
    Rules,
    as_b0_fn,
    as_eta_fn,
    as_shape_fn,
    is_rule_table,
    warn_unused_rules,
)
from amosopt.torch._sharding import check_not_flattened

__all__ = [
    "check_group",
    "check_momentum_not_cycled",
    "check_saved_state",
    "resolve_all",
    "warn_unused",
]

#: the param-group keys of torch's cyclic schedulers: OneCycleLR and CyclicLR with their default
#: cycle_momentum=True write group["momentum"] at every step
_CYCLED_MOMENTUM_KEYS = ("base_momentum", "max_momentum")
#: keys every Amos param group has had since the first release, and AdamW's does not
_AMOS_KEYS = ("eta", "beta")
#: wrappers that prefix the names of the parameters of the model they wrap: torch.compile
#: (``_orig_mod.``) and DistributedDataParallel / DataParallel (``module.``)
_WRAPPER_PREFIXES = re.compile(r"(?:^|(?<=\.))(?:_orig_mod|module)\.")


def check_group(optimizer: Any, param_group: dict[str, Any]) -> None:
    """Before torch adds ``param_group``: ``lr`` and ``eta`` are given (here or as defaults),
    and a group added after :func:`amosopt.torch.auto_amos` gets its own scales."""
    defaults = optimizer.defaults
    if "eta" not in param_group and defaults.get("eta") is required:
        raise ValueError(
            "Amos needs eta, the expected magnitude of each parameter's entries (the paper's "
            "model-oriented scale). Let amosopt derive it: optimizer = auto_amos(model, lr=...) "
            "(from amosopt.torch import auto_amos); or pass eta= yourself: a number for all "
            "parameters, or a rule table {regex: eta} with model.named_parameters().")
    if "lr" not in param_group and defaults.get("lr") is required:
        raise ValueError("Amos needs lr, the global learning rate xi: about 1/sqrt(number of "
                         "batches per epoch); `amos suggest` computes it.")
    if getattr(optimizer, "scales", None) is not None and "eta" not in param_group:
        raise ValueError(
            "This optimizer came from auto_amos, whose scale table covers the model's "
            "parameters at the time; give the new group its own scales: table = "
            "auto_scales(module); optimizer.add_param_group({'params': "
            "list(module.named_parameters()), 'eta': table.eta, 'slot_shape': "
            "table.slot_shape}) (from amosopt.torch import auto_scales), or a number 'eta'.")


def resolve_all(group: dict[str, Any], where: str) -> None:
    """Resolves ``eta`` and the slot shape of every named parameter of ``group`` now: a rule
    table that leaves one without a value fails at construction, naming it, not at the first
    ``step()``."""
    names = group.get("param_names")
    if names is None or (isinstance(group["eta"], (int, float)) and group["slot_shape"] is None
                         and isinstance(group["b0"], (int, float))):
        return  # nothing to look up: numbers and full-size slots cannot fail by name
    eta_of, shape_of = as_eta_fn(group["eta"]), as_shape_fn(group["slot_shape"])
    b0_of = as_b0_fn(group["b0"])
    for name, p in zip(names, group["params"]):
        check_not_flattened(name, p)  # before a lookup that would blame the shape
        shape = tuple(p.shape)
        try:
            eta_of(name, shape)
            b0_of(name, shape)
            if shape_of is not None:
                shape_of(name, shape)
        except ValueError as error:
            raise ValueError(f"{error}{where}") from None


def warn_unused(groups: list[dict[str, Any]], stacklevel: int = 3) -> None:
    """An :class:`amosopt.rules.UnmatchedRuleWarning` for each rule of an ``eta`` /
    ``slot_shape`` table that no parameter of the groups using that table takes."""
    for key in ("eta", "slot_shape", "b0"):
        users: dict[int, tuple[Any, list[str]]] = {}
        for group in groups:
            spec = group[key]
            if is_rule_table(spec) and group.get("param_names") is not None:
                users.setdefault(id(spec), (spec, []))[1].extend(group["param_names"])
        for spec, names in users.values():
            warn_unused_rules(Rules(spec), names, key, stacklevel=stacklevel)


def check_momentum_not_cycled(groups: list[dict[str, Any]]) -> None:
    """Raises before a step whose ``momentum`` a cyclic scheduler has set: OneCycleLR and
    CyclicLR default to cycle_momentum=True and would silently give Amos momentum 0.85-0.95
    and a parameter-sized buffer."""
    for index, group in enumerate(groups):
        if any(key in group for key in _CYCLED_MOMENTUM_KEYS):
            raise ValueError(
                f"Invalid momentum (param group {index}): a scheduler cycles it (OneCycleLR or "
                "CyclicLR with cycle_momentum=True, their default), which would turn on Amos's "
                "momentum and its parameter-sized buffer. Pass cycle_momentum=False to the "
                "scheduler (and momentum= to Amos if you want momentum).")


def check_saved_state(optimizer: Any, state_dict: dict[str, Any]) -> None:
    """Raises ValueError, before anything is loaded, for the state of another optimizer (an
    AdamW's) or of a model whose parameter names differ from this optimizer's."""
    groups = state_dict.get("param_groups", [])
    for index, group in enumerate(groups):
        if isinstance(group, dict) and not all(key in group for key in _AMOS_KEYS):
            has = sorted(k for k in group if k in ("betas", "weight_decay", "momentum", "lr"))
            raise ValueError(
                f"Cannot load this optimizer state_dict into Amos: its param group {index} has "
                f"no {', '.join(k for k in _AMOS_KEYS if k not in group)} (it has "
                f"{', '.join(has) or 'other keys'}), so it was saved by another optimizer "
                "(AdamW?). Amos's slots (v, b at slot shape) cannot be made from another "
                "optimizer's moments: load only the model's weights and start Amos afresh.")
    for index, (group, saved) in enumerate(zip(optimizer.param_groups, groups)):
        ours, theirs = group.get("param_names"), saved.get("param_names")
        if ours is None or theirs is None:
            continue
        pairs = [(a, b) for a, b in zip(theirs, ours)
                 if _WRAPPER_PREFIXES.sub("", a) != _WRAPPER_PREFIXES.sub("", b)]
        if pairs:
            a, b = pairs[0]
            raise ValueError(
                f"Cannot load this optimizer state_dict: its param group {index} was saved for "
                f"parameters with other names ({len(pairs)} differ; the first: saved {a!r}, "
                f"here {b!r}), so it belongs to another model or another parameter order. Build "
                "the optimizer from the model that saved it; if only the names changed, put "
                "the new names in state_dict['param_groups'][i]['param_names'] before loading.")
