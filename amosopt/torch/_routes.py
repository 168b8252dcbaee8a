"""Which way each tensor takes through an Amos step, and the two phases that follow it.

:func:`route` is the one place that reads the size thresholds, DTensor and contiguity. It
returns a :class:`Route` with one choice for each step of the step, and the step only looks
each up: phase 1 (:func:`measure`) ``route.measure``; phase 2 (:func:`update`)
``route.coefficients`` for the slot coefficients, then ``route.update``. The math is
:mod:`amosopt.torch._functional`'s, whatever the way. One row per ``route.update``:

===================  ===========  ============  ==============================================
update               measure      coefficients  taken by
===================  ===========  ============  ==============================================
loop                 mean square  own           every tensor with ``foreach=False``: slot
                                                coefficients and update, one tensor at a time
batched update       mean square  flat or own   parameters under ``_LARGE`` entries with
                                                factored or flat slots: one
                                                ``torch._foreach_*`` call per operation of
                                                ``apply_update``
full step in blocks  peak         own           parameters of ``_LARGE`` entries or more with
                                                full-size slots, not sharded, all contiguous:
                                                ``M(g^2)``, slots and parameter together, by
                                                blocks, so that the some twenty passes stay
                                                in the cache
full step            peak         own           the same, not contiguous: the tensor whole
compiled full step   peak         own           the same with ``fused=True``, contiguous and
                                                uncompensated: one kernel (see ``_fused``)
compiled update      kernel       flat or own   ``fused=True``: a factored, contiguous,
                                                uncompensated matrix of ``_FUSED_MIN`` entries
                                                or more (no clipping nor momentum:
                                                ``_FUSED_MIN_PLAIN``): its update one kernel;
                                                with clipping, its ``M(clip(g)^2)`` too (else
                                                measure: mean square)
one by one           mean square  flat or own   the rest: full-size slots between the two
                                                sizes, large factored or sharded tensors
===================  ===========  ============  ==============================================

* measure: ``peak`` only checks the peak of ``clip(g)^2``, as the full step recomputes
  ``M(g^2)``; ``kernel`` computes ``M(clip(g)^2)`` as one compiled kernel, ``mean square``
  eagerly (:func:`~amosopt.torch._functional.mean_square`, whose choice of reduction kernel is
  made per call, not here), and ``mean squares`` both ``M_R`` and ``M_K`` for a tensor with a
  column factor (``second_moment="row-col"``), which takes the eager ways only.
* coefficients: ``flat`` for slots of up to ``_FLAT_MAX`` entries (full-size:
  ``_FLAT_MAX_FULL``), not sharded: concatenated per (device, dtype) into one vector, so that
  each operation of ``slot_coefficients`` is one kernel; ``own``: each tensor's, in its way.

The rest of a route is data that the chosen ways read, never combined into a choice:
``axes`` and ``keepdim`` (the reduction of ``M(g^2)``), ``columns`` (that of ``M_K(g^2)``, then
:func:`~amosopt.torch._functional.column_scaled`), ``matrix`` (the compiled kernels' view),
``sharded`` (a DTensor: its checks are collectives) and ``scratch`` (where :func:`clipped`
writes: a gradient of ``_LARGE`` entries or more, not sharded, that a way clips eagerly and
whole goes into the step's buffer).

The numbers behind the thresholds are in ``benchmarks/README.md`` (``benchmarks/torch_step.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from amosopt.rules import Shape, column_shape, reduced_axes
from amosopt.torch import _functional as functional
from amosopt.torch import _fused
from amosopt.torch._functional import Hyper


#: parameter entries from which the update runs tensor by tensor: its few full-size passes
#: then reuse the cache (measured faster on CPU than op-by-op over all tensors)
_LARGE = 1 << 16
#: slot entries up to which slots are concatenated, factored and full-size: copying more
#: costs more than the kernel launches it saves; a full-size slot is parameter-sized, and
#: larger ones take the loop way, whose some twenty passes then stay in the cache (measured
#: on 198 tensors of 0.84M parameters: 4096 entries 15% faster than the loop way, 16384 2.3x
#: slower)
_FLAT_MAX, _FLAT_MAX_FULL = 1 << 14, 1 << 12
#: entries per block of the full step (512 KiB of float32: the best on CPU)
_BLOCK = 1 << 17
#: smallest parameter that gets compiled kernels, with clipping or momentum, and without: a
#: compiled call costs some 30 us more than an eager op (dynamo's guards)
_FUSED_MIN, _FUSED_MIN_PLAIN = 1 << 19, 1 << 20

try:
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # torch built without distributed
    _DTensor = None


def is_dtensor(x: Any) -> bool:
    return _DTensor is not None and isinstance(x, _DTensor)


class Measure:
    """Phase 1's ways of a tensor (:func:`measure`): plain strings, as an ``enum`` member
    costs some 10x more to look up in the per-tensor loop."""

    PEAK = "peak"  # full step: only the peak of clip(g)^2 is checked, M(g^2) comes in phase 2
    KERNEL = "kernel"  # M(clip(g)^2) as one compiled kernel (fused, factored, clipped)
    MEAN_SQUARE = "mean square"  # M(clip(g)^2) eagerly
    #: M_R(clip(g)^2) and M_K(clip(g)^2) eagerly: a tensor with a column factor
    MEAN_SQUARES = "mean squares"


class Coefficients:
    """Phase 2's ways to the slot coefficients of a tensor (:func:`update`; strings, as
    :class:`Measure`)."""

    FLAT = "flat"  # concatenated with the other small slots' of its (device, dtype)
    OWN = "own"  # its own, within its update way


class Update:
    """Phase 2's ways of a tensor (:func:`update`), the rows of the module's table (strings,
    as :class:`Measure`)."""

    LOOP = "loop"  # foreach=False: slot coefficients and update, one tensor at a time
    FULL_STEP = "full step"  # M(g^2), slots and parameter together, the tensor whole
    FULL_STEP_BLOCKS = "full step in blocks"  # the same, in blocks of _BLOCK entries
    FULL_STEP_KERNEL = "compiled full step"  # the same, as one compiled kernel
    KERNEL = "compiled update"  # a factored tensor's update as one compiled kernel
    BATCHED = "batched update"  # with the other small tensors', one _foreach call per op
    ALONE = "one by one"  # the rest: apply_update of this tensor alone


_FULL_STEPS = (Update.FULL_STEP, Update.FULL_STEP_BLOCKS, Update.FULL_STEP_KERNEL)
#: the update way of the table's flags ``(full_step, blocks, compiled, batched)``, which
#: :class:`Route`'s constructor accepts in its place
_UPDATE_OF_FLAGS = {
    (False, False, False, False): Update.ALONE,
    (False, False, False, True): Update.BATCHED,
    (False, False, True, False): Update.KERNEL,
    (True, False, False, False): Update.FULL_STEP,
    (True, True, False, False): Update.FULL_STEP_BLOCKS,
    (True, True, True, False): Update.FULL_STEP_KERNEL,
    (True, False, True, False): Update.FULL_STEP_KERNEL,
}


@dataclass(frozen=True, init=False)
class Route:
    """The way of one tensor through the step (see the module's table): one choice for each
    step of the step, and the data that the chosen ways read.

    The constructor also takes the table's flags (``full_step``, ``blocks``, ``compiled``,
    ``batched``) for ``update``, and ``flat`` for ``coefficients``; they are read back as
    properties. Without them the route is the multi-tensor step's "one by one" with its own
    coefficients, and ``measure`` the eager one of its update (:func:`route` names the
    compiled kernel's)."""

    measure: str  # phase 1: a Measure
    coefficients: str  # phase 2, the slot coefficients: a Coefficients
    update: str  # phase 2, the update: an Update
    axes: tuple[int, ...]  # the axes M(g^2) averages over (none: full-size slots)
    keepdim: bool  # False for a scalar slot ``()``
    #: the axes M_K(g^2) averages over for the column factor u (the slot's kept axes), or None:
    #: no column factor (second_moment="slot", or a full-size or one-entry slot)
    columns: Optional[tuple[int, ...]]
    matrix: Optional[_fused.Matrix]  # the compiled kernels' view of a factored tensor
    sharded: bool  # a DTensor: its M(g^2) and checks involve every rank
    scratch: bool  # clipped eagerly and whole, into the step's Scratch buffer

    def __init__(self, axes: tuple[int, ...], keepdim: bool = True, sharded: bool = False, *,
                 measure: Optional[str] = None, coefficients: Optional[str] = None,
                 update: Optional[str] = None, matrix: Optional[_fused.Matrix] = None,
                 flat: bool = False, scratch: bool = False, full_step: bool = False,
                 blocks: bool = False, compiled: bool = False, batched: bool = False,
                 columns: Optional[tuple[int, ...]] = None) -> None:
        if update is None:
            update = _UPDATE_OF_FLAGS[full_step, blocks, compiled, batched]
        if measure is None:
            measure = (Measure.PEAK if update in _FULL_STEPS
                       else Measure.MEAN_SQUARE if columns is None else Measure.MEAN_SQUARES)
        if coefficients is None:
            coefficients = Coefficients.FLAT if flat else Coefficients.OWN
        for name, value in (("measure", measure), ("coefficients", coefficients),
                            ("update", update), ("axes", axes), ("keepdim", keepdim),
                            ("columns", columns), ("matrix", matrix), ("sharded", sharded),
                            ("scratch", scratch)):
            object.__setattr__(self, name, value)

    @property
    def flat(self) -> bool:
        """Slot coefficients concatenated with the other small slots'."""
        return self.coefficients == Coefficients.FLAT

    @property
    def full_step(self) -> bool:
        """Phase 1 checks the peak of clip(g)^2; phase 2 does the rest."""
        return self.update in _FULL_STEPS

    @property
    def blocks(self) -> bool:
        """The full step in blocks of _BLOCK entries (all contiguous)."""
        return self.update == Update.FULL_STEP_BLOCKS

    @property
    def compiled(self) -> bool:
        """fused: the full step, or the factored update, as one kernel."""
        return self.update in (Update.FULL_STEP_KERNEL, Update.KERNEL)

    @property
    def batched(self) -> bool:
        """The update batched with the other small tensors'."""
        return self.update == Update.BATCHED


def route(p: Tensor, slot_shape: Shape, group: dict[str, Any], state: dict[str, Any]) -> Route:
    """How ``p`` (with gradient, slot shape, ``state`` if it has one yet) is stepped: each
    choice of the module's table, made here and nowhere else."""
    shape = tuple(p.shape)
    axes = reduced_axes(shape, slot_shape)
    keepdim = slot_shape != ()
    sharded = is_dtensor(p)
    n = p.numel()
    clip = group["clip_value"] is not None
    scratch = clip and n >= _LARGE and not sharded
    columns = None
    if group["second_moment"] == "row-col" and column_shape(shape, slot_shape) is not None:
        columns = tuple(i for i in range(len(shape)) if i not in axes)
    eager = Measure.MEAN_SQUARE if columns is None else Measure.MEAN_SQUARES
    # foreach=None takes the multi-tensor ways: fewer launches on CUDA, and on CPU measured as
    # fast as the loop for a few large tensors, faster for many small ones
    if group["foreach"] is False:
        return Route(axes, keepdim, sharded, measure=eager, update=Update.LOOP,
                     scratch=scratch, columns=columns)
    m = state.get("momentum_buffer") if group["momentum"] > 0 else None
    tensors = (p, p.grad, m, state.get("v"), state.get("b"), state.get("compensation"))
    contiguous = not sharded and all(x is None or x.is_contiguous() for x in tensors)
    full = not axes
    # the compiled kernels have no compensation buffer: compensated tensors stay eager
    fused = group["fused"] and contiguous and not compensated(p, group)
    if full and n >= _LARGE and not sharded:
        return Route(axes, keepdim, measure=Measure.PEAK, update=(
            Update.FULL_STEP_KERNEL if fused
            else Update.FULL_STEP_BLOCKS if contiguous else Update.FULL_STEP))
    matrix = None
    if fused and not full and columns is None:  # the kernels know no column factor
        plain = not clip and group["momentum"] == 0
        if n >= (_FUSED_MIN_PLAIN if plain else _FUSED_MIN):
            matrix = _fused.matrix_shape(shape, slot_shape)
    flat = not sharded and math.prod(slot_shape) <= (_FLAT_MAX_FULL if full else _FLAT_MAX)
    coefficients = Coefficients.FLAT if flat else Coefficients.OWN
    if matrix is not None:  # without clipping the eager M(g^2) reads g once already
        return Route(axes, keepdim, sharded, matrix=matrix, coefficients=coefficients,
                     update=Update.KERNEL, measure=Measure.KERNEL if clip else eager)
    return Route(axes, keepdim, sharded, measure=eager, coefficients=coefficients,
                 scratch=scratch, columns=columns,
                 update=Update.BATCHED if n < _LARGE and (flat or not full) else Update.ALONE)


def group_signature(group: dict[str, Any]) -> tuple:
    """What :func:`route` reads of a param group."""
    return (group["foreach"], group["fused"], group["clip_value"] is None, group["momentum"] > 0,
            group["rounding"], group["second_moment"])


def compensated(p: Tensor, group: dict[str, Any]) -> bool:
    """Does ``p`` keep a Kahan compensation buffer (``rounding="compensated"``, 16-bit)?"""
    return group["rounding"] == "compensated" and p.dtype in functional.LOW_PRECISION


def layout(p: Tensor) -> tuple:
    """What :func:`route` reads of a parameter that may change between steps (the slots'
    layout changes only with ``load_state_dict``, which forgets every route)."""
    return p.shape, p.is_contiguous(), p.grad.is_contiguous()


@dataclass(eq=False)
class Record:
    """One parameter in the steps, kept from step to step while its ``signature``
    (:func:`group_signature`, :func:`layout`) holds; phase 2 of its first step fills ``state``.
    What one step computes for it is in that step's :class:`Measured`."""

    p: Tensor
    index: int  # in its param group, to name it in errors
    eta: float
    slot_shape: Shape
    route: Route
    signature: tuple
    state: Optional[dict[str, Any]] = None

    def slots(self, h: Hyper) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """``(v, b, m, c)``: ``m`` None without momentum, ``c`` (the compensation buffer of
        ``rounding="compensated"``) None without one."""
        s = self.state
        return (s["v"], s["b"], (s["momentum_buffer"] if h.mu > 0 else None),
                (s.get("compensation") if h.rounding == "compensated" else None))

    def scalars(self, h: Hyper) -> tuple[functional.Scalar, functional.Scalar, functional.Scalar]:
        """:func:`~amosopt.torch._functional.per_tensor`'s numbers at this step: floats, or
        inside ``torch.compile`` tensors computed from the step tensor (``int(step)`` would
        break the graph and make ``1 - beta^t`` a new constant, so a recompile, every step),
        as also where the step tensor lives on an accelerator (``nonfinite="skip"``), which
        ``int(step)`` would make wait for the device."""
        step = self.state["step"]
        on_host = step.device.type == "cpu" and not torch.compiler.is_compiling()
        t = int(step) if on_host else step.to(torch.float64)
        return functional.per_tensor(h, self.eta, t)


# ------------------------------------------------------------------------------------------------
# Phase 1


@dataclass
class Scratch:
    """What one step keeps aside: a flat buffer per (device, dtype) for the gradients that
    :func:`clipped` writes, and where it is a list (the compiled whole step of ``fused=True``),
    every slot's ``(decay, step)`` (see :meth:`output`)."""

    buffers: dict[tuple[torch.device, torch.dtype], Tensor] = field(default_factory=dict)
    coefficients: Optional[list[Tensor]] = None

    def output(self, decay: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        """``(decay, step)``, listed in :attr:`coefficients` if it is a list, which the
        compiled step returns as outputs of its graph. Inductor then computes each slot
        coefficient once, into a buffer: used only by the update, whose loop broadcasts it over
        the slot's axes, its dozen operations (a division, square roots) would be inlined and
        repeated for every entry of the parameter. Measured on one CPU thread: the compiled
        step 7-9% faster at 1M and 10M parameters without momentum (``torch_step_ab.py``);
        the minimal factored step of ``torch_step_floor.py``, 0.95x fused AdamW inlined
        against 0.71x as outputs, at 10M (``benchmarks/README.md``)."""
        if self.coefficients is not None:
            self.coefficients += (decay, step)
        return decay, step


class Measured(NamedTuple):
    """Phase 1's result for a group's records, by position, for one step only."""

    g2: list[Optional[Tensor]]  # M(clip(g)^2), slot-shaped; None: the full step recomputes it
    checks: list[Tensor]  # what must be finite: g2, or the peak of clip(g)^2
    #: M_K(clip(g)^2) for the column factor u, column-shaped; None: no column factor
    g2_columns: list[Optional[Tensor]]


def clipped(r: Record, h: Hyper, scratch: Scratch) -> Tensor:
    """``clip(g)`` of ``r``'s gradient; a large one is written into the step's ``scratch``
    buffer, valid until the next call, rather than into a fresh tensor: that costs an
    allocation and, on CPU, where the allocator gives the memory back to the system between
    calls, fresh pages, twice per parameter and step (50M-parameter model with clipping: in
    some runs 117 ms a step without the buffer against 52 ms with it, and 22 times the page
    faults; in others equal, benchmarks/torch_step_ab.py)."""
    g = r.p.grad
    if not r.route.scratch:
        return functional.clip(g, h)
    buffer = scratch.buffers[g.device, g.dtype]
    return functional.clip(g, h, out=buffer[: g.numel()].view(g.shape))


def measure(records: list[Record], h: Hyper, scratch: Scratch) -> Measured:
    """Phase 1: ``M(clip(g)^2)`` of each record and what must be finite; changes nothing but
    ``scratch``, which grows to the largest gradient that :func:`clipped` takes."""
    sizes: dict[tuple[torch.device, torch.dtype], int] = {}
    for r in records:
        if r.route.scratch:
            key = r.p.grad.device, r.p.grad.dtype
            sizes[key] = max(sizes.get(key, 0), r.p.grad.numel())
    for (device, dtype), size in sizes.items():
        buffer = scratch.buffers.get((device, dtype))
        if buffer is None or buffer.numel() < size:
            scratch.buffers[device, dtype] = torch.empty(size, device=device, dtype=dtype)
    measured = Measured([], [], [])
    for r in records:
        grad, dtype = r.p.grad, functional.slot_dtype(r.p)
        g2_column = None
        if r.route.measure == Measure.PEAK:
            g2, check = None, _peak_square(grad, h, dtype)
        elif r.route.measure == Measure.KERNEL:
            g2 = check = _fused.clipped_mean_square(grad, r.route.matrix, r.slot_shape, dtype, h)
        elif r.route.measure == Measure.MEAN_SQUARES:
            g = clipped(r, h, scratch)
            g2 = functional.mean_square(g, r.route.axes, dtype, r.route.keepdim)
            g2_column = functional.mean_square(g, r.route.columns, dtype)
            check = torch.maximum(g2.amax(), g2_column.amax())  # NaN propagates
        else:
            g2 = check = functional.mean_square(clipped(r, h, scratch), r.route.axes, dtype,
                                                r.route.keepdim)
        measured.g2.append(g2)
        measured.checks.append(check)
        measured.g2_columns.append(g2_column)
    return measured


def _peak_square(grad: Tensor, h: Hyper, dtype: torch.dtype) -> Tensor:
    """``max clip(g)^2`` (0-d): finite exactly when every entry of ``clip(g)^2`` is (NaN
    propagates; an inf gradient is clipped, or makes the peak inf)."""
    low, high = torch.aminmax(grad)  # vectorised; vector_norm(ord=inf) measured 20x slower
    peak = torch.maximum(-low, high).to(dtype)
    if h.clip is not None:
        peak = peak.clamp_max(h.clip)
    return peak * peak


def _peaks(records: list[Record], checks: list[Tensor]) -> dict[torch.device, list[Tensor]]:
    """The peak of each of ``checks`` (by position in ``records``), by device: finite exactly
    when the check is (max propagates NaN and keeps inf)."""
    peaks: dict[torch.device, list[Tensor]] = {}
    local: dict[torch.device, list[Tensor]] = {}
    for r, check in zip(records, checks):
        if r.route.sharded:  # full_tensor is a collective: all ranks decide alike
            peak = check.amax().full_tensor()
            peaks.setdefault(peak.device, []).append(peak)
        else:
            local.setdefault(check.device, []).append(check)
    for device, checks in local.items():
        # dynamo cannot trace _foreach_max
        peaks.setdefault(device, []).extend(
            [x.amax() for x in checks] if torch.compiler.is_compiling()
            else torch._foreach_max(checks))
    return peaks


def all_finite(records: list[Record], checks: list[Tensor]) -> Tensor:
    """``nonfinite="skip"``: are all ``checks`` finite? A 0-d bool tensor on the first
    record's device, from one reduction per device and no host sync."""
    flags = [torch.isfinite(torch.stack(x)).all() for x in _peaks(records, checks).values()]
    return torch.stack([f.to(flags[0].device) for f in flags]).all()


def raise_if_not_finite(records: list[Record], checks: list[Tensor], name_of: Any) -> None:
    """One host sync per device: are all ``checks`` (by position in ``records``) finite? If
    not, raises FloatingPointError naming the first culprit (``name_of(record)``)."""
    peaks = _peaks(records, checks)
    # stack promotes mixed dtypes; one host sync per device. Inside torch.compile this is the
    # step's one graph break: outside any loop or generator, so that dynamo can resume after it
    flags = [torch.isfinite(torch.stack(x)).all().cpu() for x in peaks.values()]
    if bool(torch.stack(flags).all()):
        return
    for r, check in zip(records, checks):
        peak = check.amax()
        if not bool(torch.isfinite(peak.full_tensor() if r.route.sharded else peak)):
            raise FloatingPointError(
                f"Amos: non-finite gradient (inf or NaN, or its square overflows) for parameter "
                f"{name_of(r)!r} with shape {tuple(r.p.shape)}; no parameter or optimizer state "
                "was changed. Check the loss, lower lr, or set clip_value.")


def unscale(records: list[Record], grad_scale: Tensor) -> None:
    """Divides the gradients by ``grad_scale`` in place (``torch.amp.GradScaler``'s scale,
    which it passes to optimizers that unscale themselves), multiplying by its reciprocal
    as ``GradScaler.unscale_`` does; on the device, no host sync."""
    by_device: dict[torch.device, list[Tensor]] = {}
    for r in records:
        by_device.setdefault(r.p.grad.device, []).append(r.p.grad)
    inv_scale = grad_scale.double().reciprocal().float()
    for device, grads in by_device.items():
        torch._foreach_mul_(grads, inv_scale.to(device))


def count(records: list[Record], ok: Tensor, skipped: bool = True) -> None:
    """A step decided on the device: adds ``ok`` (a 0-d bool) to each record's ``step`` and,
    if ``skipped``, ``not ok`` to its ``skipped``, on the counters' device."""
    for key, value in (("step", ok), ("skipped", ~ok))[:2 if skipped else 1]:
        counters: dict[torch.device, list[Tensor]] = {}
        for r in records:
            counters.setdefault(r.state[key].device, []).append(r.state[key])
        for device, tensors in counters.items():
            # a list of 0-d tensors: dynamo turns a tensor scalar into .item(), a graph break
            torch._foreach_add_(tensors, [value.to(device, torch.float32)] * len(tensors))


# ------------------------------------------------------------------------------------------------
# Phase 2


def update(records: list[Record], measured: Measured, h: Hyper, scratch: Scratch,
           ok: Optional[Tensor] = None) -> None:
    """Phase 2: each record on its way (``route.update``), with its ``g2`` (and ``g2_column``)
    from :func:`measure`; one pass per (device, dtype), as concatenations and lists need one
    dtype (tensors of one device keep their order, and so their draws of stochastic
    rounding).

    With ``ok`` (``nonfinite="skip"``: a 0-d bool tensor, all gradients finite), every tensor
    that a way changes is copied first and afterwards put back where ``ok`` is false
    (:func:`_keep`): the step is undone on the device, whatever the way, without a host
    branch. A large tensor is copied alone, just before its update; small ones (flat slots,
    the batched update) per bucket."""
    buckets: dict[tuple[torch.device, torch.dtype], list[tuple[Record, Any, Any]]] = {}
    for r, g2, g2_column in zip(records, measured.g2, measured.g2_columns):
        buckets.setdefault((r.p.device, r.p.dtype), []).append((r, g2, g2_column))
    for bucket in buckets.values():
        flat = [(r, g2) for r, g2, _ in bucket if r.route.coefficients == Coefficients.FLAT]
        kept = [] if ok is None else _keep(
            [x for r, _ in flat for x in _slot_state(r)]
            + [x for r, _, _ in bucket if r.route.update == Update.BATCHED for x in _changed(r)])
        flat_coefficients = dict(zip([r for r, _ in flat],
                                     _flat_slot_coefficients(flat, h, scratch))) if flat else {}
        batched = []
        for r, g2, g2_column in bucket:
            if r.route.update == Update.BATCHED:
                batched.append(_step_one(r, g2, g2_column, h, scratch, flat_coefficients))
                continue
            alone = None if ok is None else _keep(_changed(r))
            _step_one(r, g2, g2_column, h, scratch, flat_coefficients)
            if alone:
                _put_back(ok, alone)
        if batched:
            p, g, decay, step, m, c = (functional.TensorList(list(x)) for x in zip(*batched))
            # one dtype per bucket, so every tensor of it has a buffer or none has
            functional.apply_update(p, g, decay, step, m if h.mu > 0 else None, h,
                                    c if c.tensors[0] is not None else None)
        if kept:
            _put_back(ok, kept)


#: state that :func:`_changed` leaves out: counted apart (:func:`count`), or parameter-sized
_COUNTERS, _PARAMETER_SIZED = ("step", "skipped"), ("momentum_buffer", "compensation")


def _slot_state(r: Record) -> list[Tensor]:
    """``r``'s slot-sized state tensors (``v``, ``b``, any other), each of which a step may
    change: listed from the state, so that a slot added to it is kept too."""
    return [x for k, x in r.state.items()
            if isinstance(x, Tensor) and k not in _COUNTERS + _PARAMETER_SIZED]


def _changed(r: Record) -> list[Tensor]:
    """What phase 2 changes of ``r`` besides what :func:`_flat_slot_coefficients` does: the
    parameter, its momentum and compensation buffers, and the slots unless they are flat."""
    return ([r.p, *(r.state[k] for k in _PARAMETER_SIZED if k in r.state)]
            + ([] if r.route.coefficients == Coefficients.FLAT else _slot_state(r)))


def _keep(tensors: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """``(tensor, copy)`` of each of ``tensors``, for :func:`_put_back`."""
    return [(x, x.clone()) for x in tensors]


def _put_back(ok: Tensor, kept: list[tuple[Tensor, Tensor]]) -> None:
    """Where ``ok`` is false, each tensor gets back its copy, bit for bit (``torch.where``);
    a 0-d tensor through its 1-element view (see :func:`_loop_step`), a non-contiguous one
    through a copy (dynamo traces no ``out=`` that is not contiguous)."""
    for x, old in kept:
        if is_dtensor(x):  # the same element-wise choice on each rank's shard
            x, old = x.to_local(), old.to_local()
        if x.dim() == 0:
            x, old = x.view(1), old.view(1)
        if x.is_contiguous():
            torch.where(ok, x, old, out=x)
        else:
            x.copy_(torch.where(ok, x, old))


def _step_one(r: Record, g2: Optional[Tensor], g2_column: Optional[Tensor], h: Hyper,
              scratch: Scratch, flat_coefficients: dict[Record, tuple[Tensor, Tensor]]
              ) -> Optional[tuple]:
    """One record of :func:`update` on its way, with its slot coefficients from
    ``flat_coefficients`` where they are flat; the batched way only computes its own and returns
    the arguments of its share of the batched update."""
    way = r.route.update
    if way == Update.LOOP:
        _loop_step(r, g2, g2_column, h, scratch)
        return None
    v, b, m, c = r.slots(h)
    if way == Update.FULL_STEP_KERNEL:
        _fused.full_slot_update(r.p, v, b, m, h, r.scalars(h))
        return None
    if way == Update.FULL_STEP or way == Update.FULL_STEP_BLOCKS:
        _full_step(r.p, v, b, m, c, h, r.scalars(h), way == Update.FULL_STEP_BLOCKS)
        return None
    if r.route.coefficients == Coefficients.FLAT:
        decay, step = flat_coefficients[r]
    else:
        decay, step = scratch.output(*functional.slot_coefficients(g2, v, b, h, *r.scalars(h)))
    if way == Update.KERNEL:
        _fused.update(r.p, decay, step, m, r.route.matrix, h)
    elif way == Update.BATCHED:
        g = scaled_gradient(r, functional.clip(r.p.grad, h), g2_column, h)
        return r.p, g, decay, step, m, c
    else:
        g = scaled_gradient(r, clipped(r, h, scratch), g2_column, h)
        functional.apply_update(r.p, g, decay, step, m, h, c)
    return None


def _loop_step(r: Record, g2: Tensor, g2_column: Optional[Tensor], h: Hyper, scratch: Scratch
               ) -> None:
    """The loop's way (``foreach=False``), the reference path: one parameter's slot
    coefficients, then its update."""
    v, b, m, c = r.slots(h)
    p, g = r.p, clipped(r, h, scratch)
    if torch.compiler.is_compiling() and (p.dim() == 0 or v.dim() == 0):
        # torch 2.13 can lose an in-place update of a 0-d float64 graph input under
        # torch.compile (aot_eager, inductor); of its 1-element view it does not
        p, g, m, c = (x if x is None or x.dim() else x.view(1) for x in (p, g, m, c))
        v, b, g2 = (x if x.dim() else x.view(1) for x in (v, b, g2))
    decay, step = scratch.output(*functional.slot_coefficients(g2, v, b, h, *r.scalars(h)))
    functional.apply_update(p, scaled_gradient(r, g, g2_column, h), decay, step, m, h, c)


def scaled_gradient(r: Record, g: Tensor, g2_column: Optional[Tensor], h: Hyper) -> Tensor:
    """``g``, or where ``r`` has a column factor, ``g`` rescaled by it
    (:func:`~amosopt.torch._functional.column_scaled`, which updates ``u``); after ``r``'s
    slot coefficients, which it reads ``v_t`` of."""
    if r.route.columns is None:
        return g
    return functional.column_scaled(g, g2_column, r.state["v"], r.state["u"], h)


def _flat_slot_coefficients(pairs: list[tuple[Record, Tensor]], h: Hyper, scratch: Scratch
                            ) -> list[tuple[Tensor, Tensor]]:
    """:func:`~amosopt.torch._functional.slot_coefficients` of many small slots at once (each
    record with its ``g2``): concatenated, the per-tensor numbers repeated per element, then
    ``v`` and ``b`` copied back. The same operations on the same values, so the result equals
    the loop's bit for bit."""
    records = [r for r, _ in pairs]
    v, b = [r.state["v"] for r in records], [r.state["b"] for r in records]
    sizes = [x.numel() for x in v]
    v_flat, b_flat = torch.cat([x.reshape(-1) for x in v]), torch.cat([x.reshape(-1) for x in b])
    g2 = torch.cat([g2.reshape(-1) for _, g2 in pairs])
    per_element = [_repeated(_vector(values, v_flat), sizes)
                   for values in zip(*(r.scalars(h) for r in records))]
    decay, step = scratch.output(*functional.slot_coefficients(g2, v_flat, b_flat, h,
                                                             *per_element))
    torch._foreach_copy_(v, [x.view(y.shape) for x, y in zip(v_flat.split(sizes), v)])
    torch._foreach_copy_(b, [x.view(y.shape) for x, y in zip(b_flat.split(sizes), b)])
    return [(d.view(x.shape), s.view(x.shape))
            for d, s, x in zip(decay.split(sizes), step.split(sizes), v)]


def _repeated(values: Tensor, sizes: list[int]) -> Tensor:
    """Each of ``values`` repeated ``sizes`` times, one vector. Traced, as a concatenation of
    broadcasts, which Inductor fuses into the loops that read it: its lowering of
    ``repeat_interleave`` searches the cumulative sizes for every entry (``searchsorted``),
    measured 0.7 ms of a 7 ms compiled step at 10M parameters."""
    if torch.compiler.is_compiling():
        return torch.cat([x.expand(n) for x, n in zip(values, sizes)])
    counts = torch.tensor(sizes, device=values.device)
    return values.repeat_interleave(counts, output_size=sum(sizes))


def _vector(values: tuple[functional.Scalar, ...], like: Tensor) -> Tensor:
    """``values`` (floats, or float64 0-d tensors inside ``torch.compile``) as one vector of
    ``like``'s dtype and device, each rounded once from double."""
    if not any(isinstance(x, Tensor) for x in values):
        return torch.tensor(values, dtype=like.dtype, device=like.device)
    return torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in values]).to(like)


def _full_step(p: Tensor, v: Tensor, b: Tensor, m: Optional[Tensor], c: Optional[Tensor],
               h: Hyper, scalars: tuple[functional.Scalar, ...], blocks: bool) -> None:
    """:func:`~amosopt.torch._functional.full_slot_step` of a large tensor, with ``blocks``
    (all contiguous) on blocks of :data:`_BLOCK` entries: its some twenty passes then run on
    data that stays in the cache. Element-wise the loop's operations: the same bits."""
    if not blocks:
        functional.full_slot_step(p, p.grad, v, b, m, h, *scalars, c)
        return
    views = [None if x is None else x.view(-1) for x in (p, p.grad, v, b, m, c)]
    for start in range(0, p.numel(), _BLOCK):
        p_, g_, v_, b_, m_, c_ = (None if x is None else x[block] for x in views
                                  for block in [slice(start, start + _BLOCK)])
        functional.full_slot_step(p_, g_, v_, b_, m_, h, *scalars, c_)
