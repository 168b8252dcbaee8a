"""Framework-free principles for automatic model-oriented scales (``eta``) and slot shapes.

Amos needs, for every variable, ``eta``: the expected magnitude of its entries after training
(Tian & Parikh, arXiv:2210.11693). The authors wrote these tables by hand (``jestimator``'s BERT,
T5X, LSTM and MNIST configurations); the rules below reproduce every one of their BERT and MNIST
choices from the model's structure alone:

===========================  =============================  =====================================
variable                     ``eta``                        slot shape (``v`` and ``b``)
===========================  =============================  =====================================
kernel of a linear map       :math:`\\sqrt{k / n}`, n the     one slot per output unit (the fan-in
(dense, conv, attention)     fan-in; k = 2 when the input   axes reduced), whatever the layout
                             comes straight from a ReLU /
                             GELU / SiLU-family activation
                             or a gated (GLU) product, else
                             k = 1
embedding table (V, d)       :math:`\\sqrt{2 / d}`            one slot per row, ``(V, 1)``
relative-position table      0.5                            one slot per row
norm gain                    1.0                            scalar ``()``
bias, other additive vector  0.5                            scalar ``()``
anything else (fallback)     >= 2-d: kernel with fan-in     >= 2-d: ``(shape[0], 1, ...)``;
                             ``prod(shape[1:])``, k = 1;    else ``()``; a warning lists it
                             else 0.5
===========================  =============================  =====================================

Why (arXiv 2210.11693, and Su Jianlin's re-derivation of it): a randomly initialised matrix with
entry std :math:`\\sigma` moves about :math:`\\sqrt{2}\\sigma` per entry, and He/LeCun
initialisation gives :math:`\\sigma^2 = k/n`, so the expected scale is :math:`\\sqrt{k/n}`
(k = 2 after ReLU-like units, which zero about half of the inputs). Zero-initialised biases and
gains initialised to 1 move by a prior :math:`\\sigma = 0.5` (gains keep their scale, 1.0).
Convolutions count fan-in as ``in_channels / groups * prod(kernel_size)``.

**Warm start from pretrained weights** (``auto_scales(..., pretrained=True)``,
:func:`pretrained_scale`). A pretrained tensor has learned its scale: Amos's weight decay pulls
it toward an RMS of ``eta`` (the equilibrium of the step :math:`\\xi\\eta` against the decay
:math:`\\tfrac12\\xi^2`), so the automatic ``eta`` of a fresh initialisation would pull it away
from what it learned. Its ``eta`` is its RMS instead (over the whole tensor: the automatic
``eta`` is one number per tensor), floored at :data:`~amosopt.hyperparameters.WARM_START_ETA_FLOOR`
times the automatic one so that a nearly-zero tensor is not frozen (its step is
:math:`\\xi\\eta`); and its ``b`` starts at ``b0`` (default
:data:`~amosopt.hyperparameters.WARM_START_B0`): :math:`d_0 = 1/(1 + d\\sqrt{\\xi\\eta}\\, b_0)`
is how far along its own decay it already is, and the weight decay :math:`\\gamma` starts
shrunk by :math:`c_0 = (1 + c\\sqrt{\\xi}\\, b_0)^{-1/2}`. A tensor that is exactly zero (a
zero-initialised bias or layer) has learned nothing: it keeps the automatic ``eta`` and
``b0 = 0``, a fresh start.

**LoRA adapters** (Hu et al. 2021, arXiv:2106.09685; :func:`lora_scale`). The adapter adds
:math:`s\\, B A x` to the frozen layer's :math:`W x`, with :math:`s` = alpha / r (or
alpha / sqrt(r) with rsLoRA). ``A`` (r, n) is randomly initialised: its ``eta`` is the RMS of its
initialisation. ``B`` (m, r) starts at zero, so it has no RMS to read: its ``eta`` is the scale at
which the adapter's change :math:`s B A` has entries of RMS :math:`\\kappa` times the RMS of
:math:`W` (entries of :math:`BA` sum r products, so their RMS is
:math:`\\eta_B\\,\\mathrm{rms}(A)\\sqrt r`): :math:`\\eta_B = \\kappa\\,\\mathrm{rms}(W) /
(s\\,\\mathrm{rms}(A)\\sqrt r)`, with :math:`\\kappa` = :data:`LORA_RELATIVE_UPDATE` (0.1) unless
``auto_scales(..., lora_update=kappa)`` says otherwise. Both keep one slot per output row and
start at ``b0 = 0``: adapters are trained from scratch even on a pretrained model. An
embedding's LoRA (peft's ``lora_embedding_A`` (r, V), zero, and ``lora_embedding_B`` (d, r),
random) follows the same two rules with the roles swapped, ``lora_embedding_A`` with one slot
per token (``(1, V)``, as the embedding's own rows). DoRA's magnitude vector (Liu et al. 2024)
starts at the frozen weight's row norms: its ``eta`` is their RMS, with a scalar slot
(:func:`dora_magnitude_scale`).

This module holds the record type (:class:`Scale`), the rule functions shared by the PyTorch and
flax front ends (:mod:`amosopt.torch.scales`, :mod:`amosopt.optax.scales`), the ordered table
(:class:`ScaleTable`) usable directly as ``eta`` / ``slot_shape`` of the optimizers, and the
optimizer-state memory arithmetic used by ``amos inspect`` (which formats the tables itself,
:mod:`amosopt.commands.inspect`).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from amosopt.hyperparameters import check_interval
from amosopt.rules import (
    Rules,
    Shape,
    check_eta,
    column_shape,
    is_rule_table,
    validate_slot_shape,
    warn_unused_rules,
)


__all__ = [
    "ACTIVATIONS",
    "GATES",
    "MLP_OUTPUT_NAMES",
    "RELATIVE_POSITION",
    "Scale",
    "ScaleTable",
    "StateMemory",
    "additive_scale",
    "build_table",
    "canonical_op",
    "check_lora_update",
    "embedding_scale",
    "fallback_scale",
    "LORA_RELATIVE_UPDATE",
    "gain_scale",
    "is_activation",
    "kernel_scale",
    "dora_magnitude_scale",
    "lora_scale",
    "pretrained_scale",
    "warm_start",
    "relative_position_scale",
    "state_memory",
    "warn_guessed",
]

#: Activations after which a kernel's input counts as ReLU-like (k = 2): about half of the
#: units are (near) zero, as in He initialisation. Compared after :func:`canonical_op`, so
#: ``F.leaky_relu``, ``nn.LeakyReLU``, HF ``NewGELUActivation`` and ``jax.nn.gelu`` all match.
ACTIVATIONS = frozenset({
    "relu", "relu6", "leakyrelu", "rrelu", "prelu", "gelu", "gelunew", "gelufast",
    "gelupytorchtanh", "pytorchgelutanh", "newgelu", "fastgelu", "quickgelu", "accurategelu",
    "silu", "swish", "mish", "elu", "selu", "celu", "softplus", "hardswish", "glu",
    "relusquared", "squaredrelu",
})

#: Gating nonlinearities: a product with one of these (or with an activation above) is a
#: GLU-style gated product, whose output also counts as k = 2. GELU written out by hand,
#: ``0.5 * x * (1 + tanh(...))`` or ``x * (1 + erf(x / sqrt(2))) / 2``, is such a product too.
GATES = frozenset({"sigmoid", "hardsigmoid", "logistic", "tanh", "erf", "erfc"})

#: Module names of an MLP's output projection (GPT-2, LLaMA, T5, BERT, ... and their ports):
#: the input of such a kernel is the MLP's activation even where the model's code does not
#: show it (both front ends match on them by name).
MLP_OUTPUT_NAMES = frozenset({
    "fc2", "c_proj", "down_proj", "wo", "w2", "linear2", "dense_4h_to_h", "dense2", "fc_out",
    "lin2",
})

#: A relative-position table, by the name of the variable or one of its modules.
RELATIVE_POSITION = re.compile(r"relative|rel_pos|relpos|rel_embed")


def canonical_op(name: str) -> str:
    """Lower case without underscores, a trailing in-place ``_`` or the word "activation":
    ``'leaky_relu_'``, ``'LeakyReLU'`` -> ``'leakyrelu'``; ``'GELUActivation'`` -> ``'gelu'``."""
    return name.lower().replace("activation", "").replace("_", "")


def is_activation(name: str) -> bool:
    """True if ``name`` (a function or module class name) is a ReLU/GELU/SiLU-family unit."""
    return canonical_op(name) in ACTIVATIONS


@dataclass(frozen=True)
class Scale:
    """One variable's automatic setting.

    Attributes:
        eta: the model-oriented scale, a positive float.
        slot_shape: the shape of the ``v`` / ``b`` slots; ``()`` is one scalar per tensor.
        reason: a short human-readable justification, e.g.
            ``"Linear weight, fan-in 3072, input after GELU: sqrt(2/3072)"``.
        b0: the value the variable's slot ``b`` starts at: 0 (the paper's fresh start), or a
            warm start's (:func:`pretrained_scale`).
    """

    eta: float
    slot_shape: Shape
    reason: str
    b0: float = 0.0


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def kernel_scale(
    kind: str,
    fan_in: int,
    slot_shape: Sequence[int],
    activation: str | None = None,
) -> Scale:
    """``eta = sqrt(k / fan_in)`` for the kernel of a linear map.

    Args:
        kind: what the variable is, for the reason (``"Linear weight"``).
        fan_in: n, the number of inputs summed into each output unit.
        slot_shape: one slot per output unit (the caller knows the layout).
        activation: the activation (or ``"gated product"``) its input comes straight from,
            which makes k = 2; ``None`` (normalised, linear or raw input) makes k = 1.
    """
    if fan_in <= 0:
        raise ValueError(f"kernel_scale: fan_in must be positive, got {fan_in} ({kind})")
    k = 1 if activation is None else 2
    source = "" if activation is None else f", input after {activation}"
    return Scale(
        eta=math.sqrt(k / fan_in),
        slot_shape=tuple(int(d) for d in slot_shape),
        reason=f"{kind}, fan-in {fan_in}{source}: sqrt({k}/{fan_in})",
    )


def embedding_scale(kind: str, shape: Sequence[int], row_axis: int = 0) -> Scale:
    """``eta = sqrt(2 / d)`` for an embedding table, one slot per row (the authors' BERT rule)."""
    shape = tuple(int(d) for d in shape)
    row_axis %= len(shape)
    d = math.prod(s for i, s in enumerate(shape) if i != row_axis)
    slot = tuple(s if i == row_axis else 1 for i, s in enumerate(shape))
    return Scale(math.sqrt(2 / d), slot, f"{kind}, width {d}: sqrt(2/{d}), one slot per row")


def relative_position_scale(kind: str, shape: Sequence[int]) -> Scale:
    """``eta = 0.5`` with one slot per row for a relative-position table whose entries are added
    to attention logits (the authors' RPE-BERT ``relpos_embed`` and T5X ``rel_embedding``)."""
    shape = tuple(int(d) for d in shape)
    slot = (shape[0],) + (1,) * (len(shape) - 1) if shape else ()
    return Scale(0.5, slot, f"{kind} (relative positions, added to logits): 0.5, one slot per row")


def gain_scale(kind: str) -> Scale:
    """``eta = 1.0`` with a scalar slot for a multiplicative gain initialised to 1."""
    return Scale(1.0, (), f"{kind} (gain): 1.0")


def additive_scale(kind: str) -> Scale:
    """``eta = 0.5`` with a scalar slot for a bias or other additive vector."""
    return Scale(0.5, (), f"{kind} (additive): 0.5")


def fallback_scale(shape: Sequence[int], *, out_first: bool = True) -> Scale:
    """The documented guess for a variable no rule knows, by rank.

    >= 2-d: a kernel, k = 1, one slot per output unit; its output axis is the first (torch
    layout, fan-in ``prod(shape[1:])``) or, with ``out_first=False``, the last (flax layout
    ``(..., in, out)``, fan-in ``prod(shape[:-1])``). 1-d and scalars: additive, 0.5, scalar
    slot. The reason starts with ``"guessed"`` so callers can warn once (:func:`warn_guessed`).
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) >= 2:
        ones = (1,) * (len(shape) - 1)
        if out_first:
            fan_in, slot, layout = math.prod(shape[1:]), (shape[0],) + ones, "out first"
        else:
            fan_in, slot, layout = math.prod(shape[:-1]), ones + (shape[-1],), "..., in, out"
        return Scale(
            math.sqrt(1 / fan_in), slot,
            f"guessed: unknown {len(shape)}-d variable as a kernel ({layout}), "
            f"fan-in {fan_in}: sqrt(1/{fan_in})",
        )
    return Scale(0.5, (), f"guessed: unknown {len(shape)}-d variable as additive: 0.5")


#: kappa of the LoRA ``B`` scale: the adapter's change of the frozen weight, entry RMS over the
#: weight's own. Hu et al. (arXiv:2106.09685, section 7.3) measure the trained update
#: :math:`\\|\Delta W\\|_F` of GPT-3's attention at about a tenth of :math:`\\|W\\|_F` or less.
#: ``auto_scales(..., lora_update=kappa)`` changes it (``benchmarks/finetune.py``: 0.4 matched
#: AdamW's LoRA where 0.1 ended behind, on one small model).
LORA_RELATIVE_UPDATE = 0.1


def check_lora_update(kappa: float) -> None:
    """Raises ValueError unless ``kappa`` (``lora_update``) is a finite number > 0."""
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not (
            math.isfinite(kappa) and kappa > 0):
        raise ValueError(f"Invalid lora_update: {kappa!r}; it must be a finite number > 0, the "
                         "size of a LoRA adapter's update s*B*A as a fraction of the adapted "
                         f"weight's RMS (default {LORA_RELATIVE_UPDATE:g})")


def pretrained_scale(automatic: Scale, rms: float, *, b0: float, eta_floor: float) -> Scale:
    """A pretrained tensor's scale: ``eta`` = its RMS, floored at ``eta_floor`` times the
    automatic ``eta``, and ``b`` starting at ``b0``; a tensor that is exactly zero keeps the
    automatic scale and ``b0 = 0`` (see the module docstring). ``rms`` must be finite.

    >>> auto = Scale(0.125, (8, 1), "Linear weight, fan-in 64: sqrt(1/64)")
    >>> pretrained_scale(auto, 0.04, b0=100.0, eta_floor=0.1).eta
    0.04
    >>> pretrained_scale(auto, 0.001, b0=100.0, eta_floor=0.1).eta
    0.0125
    >>> pretrained_scale(auto, 0.0, b0=100.0, eta_floor=0.1).b0
    0.0
    """
    if rms == 0.0:
        return replace(automatic, b0=0.0, reason=f"all zero, trained from scratch: "
                                                 f"{automatic.reason}")
    floor = eta_floor * automatic.eta
    eta = max(rms, floor)
    found = (f"RMS {_fmt(rms)}" if rms >= floor else
             f"RMS {_fmt(rms)} below the floor {eta_floor:g} x automatic, {_fmt(floor)}")
    return Scale(eta, automatic.slot_shape,
                 f"pretrained, {found}, b0 {b0:g} (automatic {_fmt(automatic.eta)}: "
                 f"{automatic.reason})", b0)


def warm_start(entries: Iterable[tuple[Hashable, Shape, Scale]], rms: Mapping[Hashable, float],
               *, b0: float, eta_floor: float, skip: Iterable[Hashable] = ()
               ) -> list[tuple[Hashable, Shape, Scale]]:
    """``entries`` with :func:`pretrained_scale` applied to each name in ``rms`` (the RMS of
    each tensor's values), except those in ``skip`` (adapters, trained from scratch).

    Raises:
        ValueError: ``b0`` or ``eta_floor`` negative or not finite; a tensor whose values are
            not finite (NaN or inf in the pretrained weights).
    """
    check_interval("b0", b0)
    if not (math.isfinite(eta_floor) and eta_floor >= 0):
        raise ValueError(f"Invalid eta_floor: {eta_floor!r}; it must be a finite number >= 0, "
                         "the warm start's floor on eta as a fraction of the automatic eta")
    skip = set(skip)
    out = []
    for name, shape, scale in entries:
        if name in rms and name not in skip:
            if not math.isfinite(rms[name]):
                raise ValueError(
                    f"auto_scales(pretrained=True): parameter {_join(name)!r} with shape "
                    f"{tuple(shape)} has non-finite values (RMS {rms[name]}); load weights "
                    "without NaN or inf before fine-tuning")
            scale = pretrained_scale(scale, rms[name], b0=b0, eta_floor=eta_floor)
        out.append((name, shape, scale))
    return out


def lora_scale(kind: str, shape: Shape, slot_shape: Shape, *, matrix: str, rank: int,
               scaling: float, a_rms: float, w_rms: float, fan_in: int,
               label: str | None = None, kappa: float = LORA_RELATIVE_UPDATE) -> Scale:
    """The scale of a LoRA matrix (see the module docstring): ``matrix="A"``, the randomly
    initialised factor, the RMS of its initialisation (``a_rms``); ``matrix="B"``, the
    zero-initialised factor, :math:`\\kappa\\,\\mathrm{rms}(W) / (s\\,\\mathrm{rms}(A)\\sqrt r)`
    with ``scaling`` :math:`s`, ``a_rms`` the other factor's RMS and ``kappa`` the relative
    update aimed at (default :data:`LORA_RELATIVE_UPDATE`). (An embedding's LoRA swaps
    the roles: peft's ``lora_embedding_A`` starts at zero and ``lora_embedding_B`` is random;
    ``label`` names the matrix in the reason, by default ``"LoRA A"`` / ``"LoRA B"``.) A zero
    ``a_rms`` / ``w_rms`` (nothing to read) is replaced by ``sqrt(1/fan_in)``, the automatic
    kernel scale of the adapted layer's fan-in. ``b0`` is 0: adapters start fresh.

    >>> lora_scale("lora_B", (96, 4), (96, 1), matrix="B", rank=4, scaling=2.0,
    ...            a_rms=0.1, w_rms=0.2, fan_in=32).eta  # 0.1 * 0.2 / (2 * 0.1 * sqrt(4))
    0.05000000000000001
    """
    fresh = math.sqrt(1 / fan_in)
    a_rms = a_rms if a_rms > 0 else fresh
    label = label or f"LoRA {matrix}"
    if matrix == "A":
        return Scale(a_rms, slot_shape, f"{kind}, {label} of rank {rank}: RMS of its "
                                        f"initialisation {_fmt(a_rms)}")
    w_rms = w_rms if w_rms > 0 else fresh
    eta = kappa * w_rms / (scaling * a_rms * math.sqrt(rank))
    return Scale(eta, slot_shape,
                 f"{kind}, {label} of rank {rank}, scaling {scaling:g}: the update s*B*A at "
                 f"{kappa:g} x the adapted weight's RMS {_fmt(w_rms)}: "
                 f"{kappa:g}*{_fmt(w_rms)}/({scaling:g}*{_fmt(a_rms)}*sqrt({rank}))")


def dora_magnitude_scale(kind: str, rms: float, fallback: float) -> Scale:
    """The scale of a DoRA magnitude vector ``m`` (Liu et al. 2024, arXiv:2402.09353: the
    adapted weight is :math:`m \\cdot (W + sBA) / \\lVert W + sBA \\rVert`, per output row).
    ``m`` starts at the frozen weight's row norms, so its ``eta`` is its own RMS (what the
    decay holds it at), with one scalar slot; ``fallback`` if it is zero. ``b0`` is 0, as for
    the other adapter matrices.

    >>> dora_magnitude_scale("DoRA magnitude", 0.58, 0.5).eta
    0.58
    """
    eta = rms if rms > 0 else fallback
    return Scale(eta, (), f"{kind}: RMS of its initialisation, the adapted weight's row "
                          f"norms {_fmt(eta)}")


def warn_guessed(guessed: Sequence[tuple[str, Shape]], stacklevel: int = 3) -> None:
    """Issues ONE warning listing every parameter the rules had to guess."""
    if not guessed:
        return
    listing = ", ".join(f"{name} {tuple(shape)}" for name, shape in guessed)
    warnings.warn(
        f"amosopt auto_scales: no rule for {len(guessed)} parameter(s), used the rank-based "
        f"fallback (>=2-d: kernel with fan-in prod(shape[1:]), k=1; else additive 0.5): "
        f"{listing}. Check them and override if needed (auto_scales(..., eta_overrides={{regex: "
        "eta}, slot_shape_overrides={regex: shape}); auto_amos takes the same).",
        UserWarning,
        stacklevel=stacklevel,
    )


def build_table(entries: Iterable[tuple[Hashable, Shape, Scale]],
                guessed: Sequence[tuple[str, Shape]], eta_overrides: Any = None,
                slot_shape_overrides: Any = None) -> ScaleTable:
    """The last step of every backend's ``auto_scales``: warn once about the guessed entries,
    then apply the users' override rule tables (see :meth:`ScaleTable.with_overrides`)."""
    warn_guessed(guessed, stacklevel=4)  # the caller of the backend's auto_scales
    table = ScaleTable(entries)
    if eta_overrides is not None or slot_shape_overrides is not None:
        table = table.with_overrides(eta=eta_overrides, slot_shape=slot_shape_overrides)
    return table


def _join(name: Hashable) -> str:
    return "/".join(str(part) for part in name) if isinstance(name, tuple) else str(name)


class ScaleTable(Mapping):
    """An ordered mapping ``name -> Scale`` that plugs straight into the optimizers.

    ``table.eta`` and ``table.slot_shape`` are ``(name, shape) -> value`` callables, the form that
    ``amosopt.torch.Amos(eta=..., slot_shape=...)`` and ``amosopt.optax.amos(eta_fn=...,
    shape_fn=...)`` accept. They check the shape against the one recorded, so a table built for
    another model fails loudly instead of silently mis-scaling.

    Names are ``named_parameters()`` strings (torch) or key-path tuples (flax); lookups also accept
    the ``'/'``-joined form of a tuple.
    """

    def __init__(self, entries: Iterable[tuple[Hashable, Shape, Scale]]) -> None:
        self._scales: dict[Hashable, Scale] = {}
        self._shapes: dict[Hashable, Shape] = {}
        self._joined: dict[str, Hashable] = {}
        for name, shape, scale in entries:
            self._scales[name] = scale
            self._shapes[name] = tuple(int(d) for d in shape)
            self._joined[_join(name)] = name

    def __getitem__(self, name: Hashable) -> Scale:
        return self._scales[self._key(name)]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._scales)

    def __len__(self) -> int:
        return len(self._scales)

    def __repr__(self) -> str:
        return f"ScaleTable({len(self)} parameters)"

    def _key(self, name: Hashable) -> Hashable:
        if isinstance(name, list):
            name = tuple(name)
        if name in self._scales:
            return name
        joined = _join(name)
        if joined in self._joined:
            return self._joined[joined]
        raise KeyError(name)

    def shape(self, name: Hashable) -> Shape:
        """The parameter shape recorded for ``name``."""
        return self._shapes[self._key(name)]

    def items_with_shapes(self) -> Iterator[tuple[Hashable, Shape, Scale]]:
        """``(name, parameter shape, Scale)`` in order."""
        for name, scale in self._scales.items():
            yield name, self._shapes[name], scale

    def _lookup(self, name: Hashable, shape: Sequence[int]) -> Scale:
        try:
            key = self._key(name)
        except KeyError:
            raise ValueError(
                f"Parameter {_join(name)!r} with shape {tuple(shape)} is not in the automatic "
                f"scale table ({len(self)} entries). It is frozen, new, or from another model: "
                "build the table from the same model after freezing, or pass only trainable "
                "parameters to the optimizer. Parameters added later (add_param_group) need "
                "their own table: table = auto_scales(module), and the group {'params': "
                "list(module.named_parameters()), 'eta': table.eta, 'slot_shape': "
                "table.slot_shape}."
            ) from None
        if tuple(int(d) for d in shape) != self._shapes[key]:
            raise ValueError(
                f"Parameter {_join(name)!r} has shape {tuple(shape)} but the automatic scale "
                f"table was built for shape {self._shapes[key]}; rebuild it for this model."
            )
        return self._scales[key]

    def eta(self, name: Hashable, shape: Sequence[int]) -> float:
        """``(name, shape) -> eta``, for ``Amos(eta=...)`` / ``amos(eta_fn=...)``."""
        return self._lookup(name, shape).eta

    def slot_shape(self, name: Hashable, shape: Sequence[int]) -> Shape:
        """``(name, shape) -> slot shape``, for ``Amos(slot_shape=...)`` /
        ``amos(shape_fn=...)``."""
        return self._lookup(name, shape).slot_shape

    def b0(self, name: Hashable, shape: Sequence[int]) -> float:
        """``(name, shape) -> b0``, for ``Amos(b0=...)`` / ``amos(b0=...)``: where ``b``
        starts (0 but for the pretrained tensors of a warm start)."""
        return self._lookup(name, shape).b0

    def with_overrides(self, eta: Any = None, slot_shape: Any = None) -> ScaleTable:
        """A copy where some entries come from rule tables instead.

        Args:
            eta: ``{regex: value}`` / ``[(regex, value), ...]`` / :class:`~amosopt.rules.Rules`;
                the first regex matching the start of the name (``re.match``; tuple names joined
                with ``'/'``) gives the eta. Unmatched names keep the automatic value.
            slot_shape: the same for slot shapes (tuples or ``SHAPE`` expressions).

        Overridden entries say ``"override ..."`` in their reason. Values are checked (positive
        eta, slot shape broadcasting to the parameter) right here, before any optimizer exists.

        Warns:
            amosopt.rules.UnmatchedRuleWarning: for each rule that overrides no entry (a typo
                in its regex, most often), naming the pattern and the nearest names; an error
                under ``warnings.simplefilter("error", UnmatchedRuleWarning)``.
        """
        eta_rules = _as_rules(eta, "eta")
        shape_rules = _as_rules(slot_shape, "slot_shape")
        for rules, what in ((eta_rules, "eta_overrides"), (shape_rules, "slot_shape_overrides")):
            if rules is not None:  # stacklevel: the caller of the backend's auto_scales
                warn_unused_rules(rules, [_join(name) for name in self], what, stacklevel=4)
        entries = []
        for name, shape, scale in self.items_with_shapes():
            entries.append((name, shape, _override(name, shape, scale, eta_rules, shape_rules)))
        return ScaleTable(entries)

    def as_dict(self) -> dict[str, Any]:
        """The table as plain data (JSON- and ``weights_only``-loadable), for a checkpoint:
        :meth:`from_dict` rebuilds it. A warm start's ``eta`` is read from the weights it
        started from, so a run resumed later must not rebuild the table from the weights it
        has now: the PyTorch ``Amos`` keeps each parameter's ``eta`` and ``b`` in its
        ``state_dict``; an optax state keeps ``b`` but not ``eta``, so save this beside it."""
        return {"entries": [
            {"name": list(name) if isinstance(name, tuple) else name, "shape": list(shape),
             "eta": scale.eta, "slot_shape": list(scale.slot_shape), "reason": scale.reason,
             "b0": scale.b0} for name, shape, scale in self.items_with_shapes()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScaleTable:
        """The table that :meth:`as_dict` wrote (a list name is an optax key-path tuple)."""
        return cls(
            (tuple(e["name"]) if isinstance(e["name"], list) else e["name"], tuple(e["shape"]),
             Scale(float(e["eta"]), tuple(e["slot_shape"]), e["reason"], float(e["b0"])))
            for e in data["entries"])

    def memory(self, itemsize: int = 4) -> StateMemory:
        """Optimizer-state memory of Amos (with / without momentum) and AdamW for this table."""
        return state_memory(((shape, scale.slot_shape) for _, shape, scale in
                             self.items_with_shapes()), itemsize)


def _as_rules(spec: Any, what: str) -> Rules | None:
    if spec is None:
        return None
    if not is_rule_table(spec):
        raise ValueError(
            f"Invalid overrides for {what}: {spec!r}; pass a rule table such as "
            "{r'.*classifier.*': 1.0} or [(regex, value), ...]"
        )
    return Rules(spec)


def _override(
    name: Hashable, shape: Shape, scale: Scale, eta_rules: Rules | None,
    shape_rules: Rules | None,
) -> Scale:
    notes = []
    eta, slot = scale.eta, scale.slot_shape
    if eta_rules is not None:
        matched = eta_rules.find(name, shape)
        if matched is not None:
            eta = check_eta(matched[1], _join(name), shape)
            notes.append(f"override eta {_fmt(eta)} by {matched[0]!r}")
    if shape_rules is not None:
        matched = shape_rules.find(name, shape)
        if matched is not None:
            slot = validate_slot_shape(_join(name), shape, matched[1])
            notes.append(f"override slot {slot} by {matched[0]!r}")
    if not notes:
        return scale
    return replace(scale, eta=eta, slot_shape=slot,
                   reason="; ".join(notes) + f" (automatic: {scale.reason})")


@dataclass(frozen=True)
class StateMemory:
    """Optimizer-state bytes (slot tensors only; per-parameter step counters are excluded).

    Attributes:
        params: bytes of the parameters themselves.
        amos: ``v`` and ``b`` at their slot shapes.
        amos_momentum: ``amos`` plus a parameter-sized momentum buffer.
        adamw: AdamW's two parameter-sized moments.
        columns: the column factors ``u`` that ``second_moment="row-col"`` adds (one per
            tensor with one, :func:`amosopt.rules.column_shape`).
    """

    params: int
    amos: int
    amos_momentum: int
    adamw: int
    columns: int = 0

    @property
    def row_col_momentum(self) -> int:
        """``amos_momentum`` with ``second_moment="row-col"``: plus the column factors."""
        return self.amos_momentum + self.columns

    def percent(self, value: int) -> float:
        """``value`` as a percentage of AdamW's state."""
        return 100.0 * value / self.adamw if self.adamw else 0.0


def state_memory(entries: Iterable[tuple[Sequence[int], Sequence[int]]],
                 itemsize: int = 4) -> StateMemory:
    """Counts optimizer-state bytes for ``(parameter shape, slot shape)`` pairs.

    Amos keeps ``v`` and ``b`` at the slot shape (2 * prod(slot)), plus a parameter-sized ``m``
    with momentum, and with ``second_moment="row-col"`` a column factor ``u`` where the slot
    has one; AdamW keeps ``m`` and ``v`` (2 * prod(shape)). Every element is ``itemsize`` bytes
    (float32 by default: Amos keeps its slots in float32).
    """
    n_params = n_slots = n_columns = 0
    for shape, slot in entries:
        n_params += math.prod(shape)
        n_slots += math.prod(slot)
        column = column_shape(shape, slot)
        n_columns += 0 if column is None else math.prod(column)
    amos = 2 * n_slots * itemsize
    return StateMemory(
        params=n_params * itemsize,
        amos=amos,
        amos_momentum=amos + n_params * itemsize,
        adamw=2 * n_params * itemsize,
        columns=n_columns * itemsize,
    )
