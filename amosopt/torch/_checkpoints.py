"""Amos's ``state_dict`` and ``load_state_dict``: plain data out, checked data in.

What torch's :class:`~torch.optim.Optimizer` does, with these differences:

* saving: an ``eta`` / ``slot_shape`` spec that is not plain data (a callable, a ``ScaleTable``,
  a ``Rules`` object) is replaced by a marker, so that the state loads with ``torch.load``'s
  ``weights_only=True``; each group records the layout of its state (:data:`FORMAT_KEY`);
* loading: the format and the saved slots' shapes are checked before anything changes; the
  slots keep float32 for 16-bit parameters (torch would cast them to the parameter's dtype); a
  ``step`` saved as a number becomes a tensor; a marker keeps the loading optimizer's own spec;
  options added after a release get their defaults.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from amosopt.rules import as_shape_fn, column_shape
from amosopt.torch import _mistakes
from amosopt.torch._functional import slot_dtype

if TYPE_CHECKING:
    from amosopt.torch.optimizer import Amos

#: Slots that stay float32 for low-precision parameters (``load_state_dict`` must not cast them).
_SLOT_KEYS = ("v", "b", "u", "momentum_buffer")
#: 0-d float32 counters besides ``step`` (which torch leaves uncast): ``nonfinite="skip"``'s
_COUNTERS = ("skipped",)
#: state of the parameter's shape (the compensation buffer also has the parameter's dtype)
_PARAMETER_SHAPED = ("momentum_buffer", "compensation")
#: every tensor of a parameter's state but ``step``: the slot-shape check reads them
_STATE_TENSORS = ("v", "b", "u", *_PARAMETER_SHAPED)
#: stands in a state_dict for an eta / slot_shape spec that is not plain data (a callable, a
#: ScaleTable, a Rules object): the optimizer that loads the state keeps its own
_NOT_PLAIN = "<not plain data: kept from the optimizer that loads this state>"
_PLAIN_TYPES = (bool, int, float, str, type(None))
#: the per-parameter specs of a group (a number, a rule table or a callable of the name)
SPEC_KEYS = ("eta", "slot_shape", "b0")
#: key of every param group of a state_dict: the layout of the state it goes with. Per group,
#: not top-level, because tools that rebuild optimizer state dicts (torch.distributed.checkpoint,
#: FSDP) keep the groups' keys but only the "state" and "param_groups" entries.
FORMAT_KEY = "amosopt_format"
#: 1: per-parameter ``step``, ``eta``, ``slot_shape``, ``v``, ``b`` (slot shape),
#: ``momentum_buffer`` (parameter shape), with ``second_moment="row-col"`` ``u`` (the column
#: factor's shape, :func:`amosopt.rules.column_shape`, where there is one) and, with
#: ``rounding="compensated"`` for a 16-bit parameter, ``compensation`` (its shape and dtype;
#: optional: made at the next step where a state lacks it); with ``nonfinite="skip"``,
#: ``skipped`` (0-d float32; optional alike). A state_dict without the key was written before
#: it was added (amosopt 0.x up to this change), in the same layout: it reads as format 1.
FORMAT = 1


def _is_plain(value: Any) -> bool:
    """Loads with ``torch.load(weights_only=True)``: numbers, strings, None, and tuples, lists
    and dicts of them."""
    if isinstance(value, _PLAIN_TYPES):
        return True
    if type(value) in (tuple, list):
        return all(_is_plain(v) for v in value)
    if type(value) is dict:
        return all(_is_plain(k) and _is_plain(v) for k, v in value.items())
    return False


def to_plain(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` (torch's, of an Amos) with each group's specs as plain data or the marker,
    and the format key; changed in place and returned."""
    for group in state_dict["param_groups"]:
        for key in SPEC_KEYS:
            if key in group and not _is_plain(group[key]):
                group[key] = _NOT_PLAIN
        group[FORMAT_KEY] = FORMAT
    return state_dict


@contextlib.contextmanager
def loading(optimizer: Amos) -> Iterator[None]:
    """Around torch's ``load_state_dict``: checks the saved state after every user pre-hook
    (the check is registered last) and before torch changes anything, keeps its slots for
    :func:`restore`, and afterwards puts back the specs that were saved as the marker.
    ``nonfinite`` stays the loading optimizer's: it is how this run treats its device, not a
    hyper-parameter of the saved run (a checkpoint written before the option existed would
    otherwise turn a "skip" back into the default)."""
    specs = [{key: g[key] for key in SPEC_KEYS} for g in optimizer.param_groups]
    optimizer._own_nonfinite = optimizer.param_groups[0]["nonfinite"]
    handle = optimizer.register_load_state_dict_pre_hook(_check_and_remember_saved_state)
    try:
        yield
    finally:
        handle.remove()
        optimizer._saved_slots = None
        optimizer._own_nonfinite = None
    for group, own in zip(optimizer.param_groups, specs):
        group.pop(FORMAT_KEY, None)  # describes the saved form, not a hyper-parameter
        for key in SPEC_KEYS:
            if isinstance(group.get(key), str) and group[key] == _NOT_PLAIN:
                group[key] = own[key]


def restore(optimizer: Amos, defaults: dict[str, Any]) -> None:
    """For ``__setstate__`` (inside ``load_state_dict``, before the post-hooks): options added
    after a release get ``defaults``, a ``step`` saved as a number becomes a tensor, the
    slots of 16-bit parameters and the counters get back their saved float32 values, and with
    ``nonfinite="skip"`` or ``fused=True`` (steps decided on the device) the counters move to
    the parameter's device (otherwise ``step`` stays where it was saved, as torch keeps it)."""
    own_nonfinite = getattr(optimizer, "_own_nonfinite", None)
    for group in optimizer.param_groups:
        for key, default in defaults.items():
            group.setdefault(key, default)
        if own_nonfinite is not None:
            group["nonfinite"] = own_nonfinite
    saved = getattr(optimizer, "_saved_slots", None)
    params = [(p, group["nonfinite"] == "skip" or group["fused"])
              for group in optimizer.param_groups
              for p in group["params"]]
    for index, (p, skip) in enumerate(params):
        entry = optimizer.state.get(p)
        if not entry:
            continue
        if "step" in entry and not isinstance(entry["step"], Tensor):
            entry["step"] = torch.tensor(float(entry["step"]), dtype=torch.float32)
        for key, value in (saved[index] if saved else {}).items():
            if key in _COUNTERS and key in entry:
                entry[key] = value.to(device=entry[key].device, dtype=torch.float32)
            elif key in entry and entry[key].dtype != slot_dtype(p):
                entry[key] = value.to(device=entry[key].device, dtype=slot_dtype(p))
        if skip:
            for key in ("step", *_COUNTERS):
                if key in entry:
                    entry[key] = entry[key].to(device=p.device, dtype=torch.float32)


def _check_and_remember_saved_state(optimizer: Amos, state_dict: dict[str, Any]) -> None:
    """A load_state_dict pre-hook (the last): checks the format and the slot shapes of the
    saved state (see :func:`_check_saved_state`), then keeps the saved slot tensors, by
    parameter position, for :func:`restore`."""
    _mistakes.check_saved_state(optimizer, state_dict)  # another optimizer's, or model's
    _check_saved_state(optimizer, state_dict)
    ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    optimizer._saved_slots = [
        {k: v for k, v in state_dict["state"].get(i, {}).items()
         if k in _SLOT_KEYS + _COUNTERS and isinstance(v, Tensor)} for i in ids]


def _check_saved_state(optimizer: Amos, state_dict: dict[str, Any]) -> None:
    """Raises ValueError for a state_dict of an unknown format, or one whose slots do not have
    the shapes that the ``slot_shape`` rules in force after loading give the parameters: the
    saved group's spec where it is plain data (saved hyper-parameters win, as in torch), else
    (a callable, a ``ScaleTable``, saved as a marker) ``optimizer``'s own.

    The slots must match those rules, not only broadcast to the parameters: a slot of another
    shape would broadcast silently (``(n, 1)`` saved where ``(1, m)`` is wanted runs, and
    averages over the wrong axis). Parameters are paired by position, as torch does; the
    group-count and size checks are torch's own, later.
    """
    groups = state_dict.get("param_groups", [])
    formats = {g.get(FORMAT_KEY, FORMAT) if isinstance(g, dict) else FORMAT for g in groups}
    for version in sorted(formats, key=repr):
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"Invalid optimizer state_dict: {FORMAT_KEY} is {version!r}, "
                             f"expected an int >= 1 (this amosopt writes {FORMAT})")
        if version > FORMAT:
            raise ValueError(
                f"This optimizer state_dict has {FORMAT_KEY} {version}, written by a newer "
                f"amosopt; this version reads formats up to {FORMAT}. Upgrade amosopt to load it."
            )
    saved_state = state_dict.get("state", {})
    for group_index, (group, saved) in enumerate(zip(optimizer.param_groups, groups)):
        spec = saved.get("slot_shape", group["slot_shape"])
        if isinstance(spec, str) and spec == _NOT_PLAIN:
            spec = group["slot_shape"]
        shape_fn = as_shape_fn(spec)
        for i, (p, saved_id) in enumerate(zip(group["params"], saved.get("params", []))):
            entry = saved_state.get(saved_id)
            if not entry or not any(k in entry for k in _STATE_TENSORS):
                continue
            name = optimizer._param_name(group, group_index, i)
            shape = tuple(p.shape)
            want = shape if shape_fn is None else shape_fn(name, shape)
            found = {k: tuple(entry[k].shape) for k in _STATE_TENSORS
                     if isinstance(entry.get(k), Tensor)}
            if "slot_shape" in entry:
                found["slot_shape"] = tuple(entry["slot_shape"])
            expected = {k: shape for k in _PARAMETER_SHAPED}
            expected["u"] = column_shape(shape, want)  # None: a u where none belongs
            wrong = {k: got for k, got in found.items() if got != expected.get(k, want)}
            if wrong:
                raise ValueError(
                    f"Cannot load the optimizer state of parameter {name!r} with shape {shape}: "
                    f"its slot_shape rule gives {want}, but the saved state has "
                    + ", ".join(f"{k} {got}" if k == "slot_shape" else f"{k} of shape {got}"
                                for k, got in wrong.items())
                    + ". The checkpoint was written with other slot_shape rules (or for another "
                    "model): build the optimizer with the same slot_shape as the one that "
                    "saved it."
                )
