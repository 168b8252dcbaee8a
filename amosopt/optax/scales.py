"""Automatic ``eta`` and slot shapes for JAX parameter trees (flax linen, nnx): :func:`auto_scales`.

The principles are in :mod:`amosopt.scales`; here they meet flax's names and layouts. Names are
the key-path tuples that :func:`amosopt.optax.amos` passes to ``eta_fn`` / ``shape_fn``
(:func:`amosopt.optax.path_to_name`; nnx's trailing ``value`` dropped).

From names and shapes (flax kernels are ``(..., in, out)``):

* ``.../kernel`` of rank 2 ``(in, out)``: fan-in ``in``, slot ``(1, out)``; of rank 3 under
  ``query`` / ``key`` / ``value`` (``DenseGeneral`` ``(in, heads, head_dim)``): fan-in ``in``, slot
  ``(1, heads, head_dim)``; any other rank >= 3 (convolutions ``(*window, in/groups, out)``, the
  attention ``out`` kernel ``(heads, head_dim, out)``): fan-in ``prod(shape[:-1])``, slot
  ``(1, ..., 1, out)``;
* ``.../embedding`` ``(V, d)``: ``sqrt(2/d)``, slot ``(V, 1)``; a name part containing
  ``relative`` / ``relpos`` / ``rel_pos`` / ``rel_embed`` (jestimator's ``relpos_embed``, T5X's
  ``relpos_bias/rel_embedding``): 0.5 with one slot per row;
* ``.../scale`` (norm gains) 1.0, ``.../bias`` 0.5 (any rank), scalar slots;
* anything else: kernel-like fallback in flax layout (>= 2-d: fan-in ``prod(shape[:-1])``, slot
  ``(1, ..., out)``; else additive 0.5), with one warning listing them.

**k (input after an activation?)** With ``model`` (or ``apply_fn``) and ``example_inputs``, the
forward pass is traced with :func:`jax.make_jaxpr` (nothing is compiled or run) and, from every
``dot_general`` / ``conv_general_dilated`` whose operand is a parameter, the other operand is walked
back through shape ops and affine ops with constants to its producer: a call named after a
ReLU/GELU/SiLU-family function (``jax.nn.relu`` is a ``custom_jvp_call`` named ``relu``,
``jax.nn.silu`` a ``jit`` named ``silu``), ``max(x, 0)``, or a product with a ``tanh`` /
``logistic`` / ``erf(c)`` gate gives k = 2. The product rule covers GLU / SwiGLU and also GELU,
which JAX inlines as ``x * 0.5 * (1 + tanh(...))`` (or ``erfc``): GELU is itself a self-gated
product. The same trace gives each kernel's exact contracting axes, hence its fan-in and slot. Calls
(``jit``, ``remat``, custom derivatives) and ``scan`` bodies are followed inside (a layer stack
from ``nn.scan``, kernel ``(L, in, out)``, gets fan-in ``in`` and slot ``(L, 1, out)``); kernels
used only where the trace does not look (``while`` bodies) fall back to the name rules below.
Without a trace, k = 2 only for MLP output kernels by name: a parent named ``dense2``, ``fc2``,
``wo``, ``w2``, ``down_proj``, ``linear2``, ``fc_out``, ``c_proj`` or ``dense_4h_to_h`` below an
ancestor whose name contains ``mlp``, ``ffn`` or ``feed`` (jestimator's ``mlp_block/dense2``, T5's
``mlp/wo``).

flax is imported lazily (only for ``model``); plain nested dicts of arrays work without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax

from amosopt.hyperparameters import WARM_START_B0, WARM_START_ETA_FLOOR
from amosopt.optax.transform import path_to_name
from amosopt.rules import PathName, Shape
from amosopt.scales import (
    GATES,
    MLP_OUTPUT_NAMES,
    RELATIVE_POSITION,
    Scale,
    ScaleTable,
    build_table,
    additive_scale,
    embedding_scale,
    fallback_scale,
    gain_scale,
    is_activation,
    kernel_scale,
    relative_position_scale,
    warm_start,
)

__all__ = ["auto_scales"]


_MLP_ANCESTORS = ("mlp", "ffn", "feed")
_QKV = {"query", "key", "value"}
#: primitives that pass their first operand through unchanged in kind
_PASSTHROUGH = {"scan_slice", "reshape", "transpose", "convert_element_type", "squeeze",
                "expand_dims", "broadcast_in_dim", "copy", "copy_p", "slice", "dynamic_slice",
                "pad",
                "reduce_window_sum", "reduce_window_max", "reduce_precision", "rev",
                "sharding_constraint", "optimization_barrier"}
_AFFINE = {"mul", "div", "add", "sub"}
_SUB_JAXPRS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
#: call-like primitives whose inner jaxpr takes the operands unchanged
_CALLS = {"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call",
          "custom_vjp_call", "custom_vjp_call_jaxpr"}
_GATE_LABELS = {
    "tanh": "tanh-gated product (GELU-style x*(1+tanh))",
    "erf": "erf-gated product (GELU)",
    "erfc": "erfc-gated product (GELU)",
    "logistic": "sigmoid-gated product (SiLU / GLU)",
}


# ------------------------------------------------------------------------------------------------
# Data flow from a jaxpr


@dataclass(eq=False)
class _Value:
    """A value in the traced program: a parameter, a constant, or the output of an op."""

    op: str
    inputs: list[_Value] = field(default_factory=list)
    param: int | None = None  # index of the parameter leaf
    constant: bool = False
    activation: str | None = None


@dataclass
class _KernelUse:
    contracting: tuple[int, ...]
    source: str | None


def _is_literal(var: Any) -> bool:
    return type(var).__name__ == "Literal"


class _Tracer:
    """Interprets a jaxpr symbolically, recording how parameters are used as kernels."""

    def __init__(self) -> None:
        self.uses: dict[int, list[_KernelUse]] = {}

    def run(self, jaxpr: Any, inputs: Sequence[_Value]) -> list[_Value]:
        env: dict[Any, _Value] = dict(zip(jaxpr.invars, inputs))
        for var in getattr(jaxpr, "constvars", []):
            env[var] = _Value("const", constant=True)

        def read(var: Any) -> _Value:
            if _is_literal(var):
                return _Value("literal", constant=True)
            return env.get(var) or _Value("unknown")

        for eqn in jaxpr.eqns:
            values = [read(v) for v in eqn.invars]
            outputs = self._eqn(eqn, values)
            env.update(zip(eqn.outvars, outputs))
        return [read(v) for v in jaxpr.outvars]

    def _eqn(self, eqn: Any, values: list[_Value]) -> list[_Value]:
        prim = eqn.primitive.name
        name = str(eqn.params.get("name", "")) if prim not in _PASSTHROUGH else ""
        if name and is_activation(name):
            return [_Value(name, values, activation=name) for _ in eqn.outvars]
        inner = next((eqn.params[k] for k in _SUB_JAXPRS if k in eqn.params), None)
        if inner is not None and prim in _CALLS:  # not scan/while: their operands are sliced
            inner = getattr(inner, "jaxpr", inner)
            if len(inner.invars) == len(values) and len(inner.outvars) == len(eqn.outvars):
                return self.run(inner, values)
        if prim == "scan" and inner is not None:
            return self._scan(eqn, values, getattr(inner, "jaxpr", inner))
        if prim == "dot_general":
            (lhs_c, rhs_c), _ = eqn.params["dimension_numbers"]
            self._use(values[1], tuple(rhs_c), values[0])
            self._use(values[0], tuple(lhs_c), values[1])
        elif prim == "conv_general_dilated":
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec
            self._use(values[1], tuple(rhs_spec[1:]), values[0])
        return [_Value(prim, values) for _ in eqn.outvars]

    def _scan(self, eqn: Any, values: list[_Value], inner: Any) -> list[_Value]:
        """Follows a ``scan`` body (``nn.scan`` layer stacks): its ``xs`` operands are the outer
        arrays sliced along axis 0, marked so that kernel axes shift back by one."""
        n_fixed = eqn.params["num_consts"] + eqn.params["num_carry"]
        inner_values = values[:n_fixed] + [_Value("scan_slice", [v]) for v in values[n_fixed:]]
        if len(inner.invars) != len(inner_values):
            return [_Value("scan", values) for _ in eqn.outvars]
        self.run(inner, inner_values)
        return [_Value("scan", values) for _ in eqn.outvars]

    def _use(self, kernel: _Value, contracting: tuple[int, ...], x: _Value) -> None:
        while kernel.op in ("convert_element_type", "copy", "copy_p", "scan_slice") and \
                kernel.inputs:
            if kernel.op == "scan_slice":  # a per-layer slice of a stacked (L, ...) kernel
                contracting = tuple(axis + 1 for axis in contracting)
            kernel = kernel.inputs[0]  # dtype casts keep the axes
        if kernel.param is not None and x.param is None:
            self.uses.setdefault(kernel.param, []).append(_KernelUse(contracting, source(x)))


def _through(value: _Value) -> _Value:
    """The first producer that is not a shape op or an affine op with a constant."""
    for _ in range(512):
        if value.activation or not value.inputs:
            return value
        if value.op in _PASSTHROUGH:
            value = value.inputs[0]
        elif value.op in _AFFINE and len(value.inputs) == 2 and \
                sum(v.constant for v in value.inputs) == 1:
            value = next(v for v in value.inputs if not v.constant)
        else:
            return value
    return value


def source(x: _Value) -> str | None:
    """The activation (or gated product) ``x`` comes straight from, else None."""
    node = _through(x)
    if node.activation:
        return node.activation
    if node.op == "max" and any(v.constant for v in node.inputs):
        return "relu (max with 0)"
    if node.op == "mul" and len(node.inputs) == 2 and not any(v.constant for v in node.inputs):
        for operand in node.inputs:
            gate = _through(operand)
            if gate.activation or gate.op in GATES:
                return _GATE_LABELS.get(gate.op, f"{gate.activation or gate.op}-gated product")
    return None


def _trace(apply_fn: Callable, params: Any, example_inputs: Any) -> tuple[_Tracer, int]:
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        closed = jax.make_jaxpr(lambda p: apply_fn(p, *inputs))(params)
    except Exception as error:
        raise ValueError(
            f"auto_scales: tracing the model with example_inputs failed ({type(error).__name__}: "
            f"{error}). Pass the inputs the model's __call__ takes (a tuple for several). A model "
            "that needs more than its params (BatchNorm's batch_stats, a train flag, rngs): pass "
            "apply_fn=lambda params, x: model.apply({'params': params, 'batch_stats': "
            "batch_stats}, x) instead of model="
        ) from error
    jaxpr = closed.jaxpr
    tracer = _Tracer()
    leaves = [_Value("param", param=i) for i in range(len(jaxpr.invars))]
    tracer.run(jaxpr, leaves)
    return tracer, len(jaxpr.invars)


def _check_not_variables(params: Any, model: Any) -> None:
    """Raises for a flax linen ``variables`` dict passed whole where its ``params`` belong:
    Amos would otherwise get a scale (and later update) for BatchNorm's running statistics."""
    if model is None or not isinstance(params, Mapping) or "params" not in params:
        return
    from flax import linen  # lazy: only a linen model gets here with a 'params' collection

    if isinstance(model, linen.Module):
        others = sorted(str(k) for k in params if k != "params")
        stats = others[0] if others else "batch_stats"
        raise ValueError(
            "auto_scales: params is the whole flax variables dict (collections "
            f"{sorted(str(k) for k in params)}); pass variables['params'], the trainable "
            "leaves Amos updates" + (
                f", and, since the model needs its {', '.join(others)}, apply_fn=lambda params, "
                f"x: model.apply({{'params': params, '{stats}': variables['{stats}']}}, x) "
                "instead of model=" if others else ""))


def _apply_fn(model: Any) -> Callable:
    """``(params, *inputs) -> outputs`` for a flax linen or nnx module."""
    from flax import linen, nnx  # lazy: flax is not a dependency of amosopt[jax]

    if isinstance(model, nnx.Module):
        graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        return lambda p, *x: nnx.merge(graphdef, p, rest)(*x)
    if isinstance(model, linen.Module):
        return lambda p, *x: model.apply({"params": p}, *x)
    raise TypeError(
        f"auto_scales: model must be a flax linen or nnx Module, got {type(model).__name__}; "
        "for anything else pass apply_fn=(params, *inputs) -> outputs"
    )


# ------------------------------------------------------------------------------------------------
# Rules by name and shape


def _kernel_geometry(name: PathName, shape: Shape) -> tuple[tuple[int, ...], str]:
    """Contracting (fan-in) axes of a flax kernel from its name and shape, and its kind."""
    parent = name[-2] if len(name) >= 2 else ""
    if len(shape) == 3 and parent in _QKV:
        return (0,), f"{parent} kernel (in, heads, head_dim)"
    if len(shape) >= 3:
        return tuple(range(len(shape) - 1)), f"{len(shape)}-d kernel (..., in, out)"
    return (0,), "Dense kernel (in, out)"


def _slot(shape: Shape, contracting: Sequence[int]) -> Shape:
    return tuple(1 if i in contracting else d for i, d in enumerate(shape))


def _mlp_output(name: PathName) -> bool:
    return len(name) >= 2 and name[-2] in MLP_OUTPUT_NAMES and any(
        key in part.lower() for part in name[:-2] for key in _MLP_ANCESTORS)


def _rule(name: PathName, shape: Shape, uses: list[_KernelUse] | None) -> tuple[Scale, bool]:
    """``(Scale, guessed)`` for one leaf."""
    last = name[-1] if name else ""
    if any(RELATIVE_POSITION.search(part) for part in name) and len(shape) >= 1:
        return relative_position_scale("relative-position table", shape), False
    if last == "embedding" and len(shape) == 2:
        return embedding_scale("Embed embedding (V, d)", shape), False
    if last == "scale":  # any rank: attention / DenseGeneral gains and biases are 2-d
        return gain_scale("scale"), False
    if last == "bias":
        return additive_scale("bias"), False
    if last == "kernel" or uses:
        if len(shape) < 2:
            return additive_scale(f"1-d {last}"), True
        contracting, kind = _kernel_geometry(name, shape)
        if uses:  # the exact contracting axes, from the trace
            contracting = uses[0].contracting
            if last != "kernel":
                kind = f"{last} (contracted by dot_general/conv)"
        fan_in = math.prod(shape[i] for i in contracting)
        if uses:  # traced: every use after an activation
            sources = [use.source for use in uses]
            activation = sources[0] if all(s is not None for s in sources) else None
        else:  # not traced, or used where the trace does not look (inside scan / while)
            activation = "an activation (MLP output, by name)" if _mlp_output(name) else None
        return kernel_scale(kind, fan_in, _slot(shape, contracting), activation), False
    return fallback_scale(shape, out_first=False), True


# ------------------------------------------------------------------------------------------------
# Public API


def auto_scales(
    params: Any,
    model: Any = None,
    example_inputs: Any = None,
    *,
    apply_fn: Callable | None = None,
    eta_overrides: Any = None,
    slot_shape_overrides: Any = None,
    pretrained: bool = False,
    b0: float = WARM_START_B0,
    eta_floor: float = WARM_START_ETA_FLOOR,
) -> ScaleTable:
    """The automatic ``eta`` and slot shape of every leaf of a JAX parameter tree.

    With ``pretrained=True`` (fine-tuning), each leaf's ``eta`` is the RMS of its values,
    floored at ``eta_floor`` times the automatic ``eta``, and its ``b`` starts at ``b0``:
    ``amos(..., b0=table.b0)`` (a leaf that is exactly zero keeps the automatic scale and
    ``b0 = 0``); see :mod:`amosopt.scales` and ``b0`` of :func:`amosopt.optax.amos`.

    Args:
        params: the parameters: a flax linen ``variables['params']`` dict, an nnx
            ``nnx.state(model, nnx.Param)``, or any pytree of arrays.
        model: optional flax ``linen.Module`` or ``nnx.Module``; with ``example_inputs`` its
            forward pass is traced (``jax.make_jaxpr``, nothing runs) for the data flow.
        example_inputs: the model's inputs (an array, or a tuple of positional arguments).
        apply_fn: instead of ``model``: ``(params, *inputs) -> outputs``.
        eta_overrides: a rule table ``{regex: eta}`` matched (``re.match``) against the names
            joined with ``'/'``; unmatched names keep the automatic value.
        slot_shape_overrides: the same for slot shapes.
        pretrained: take ``eta`` from the values of ``params`` and start ``b`` at ``b0`` (the
            warm start; default False, the paper's fresh start).
        b0: with ``pretrained=True``, where a pretrained leaf's ``b`` starts (default
            :data:`amosopt.hyperparameters.WARM_START_B0`).
        eta_floor: with ``pretrained=True``, the floor on ``eta`` as a fraction of the
            automatic ``eta`` (default :data:`amosopt.hyperparameters.WARM_START_ETA_FLOOR`).

    Returns:
        A :class:`~amosopt.scales.ScaleTable` keyed by name tuples, in ``tree_flatten`` order.
        ``amos(learning_rate, eta_fn=table.eta, shape_fn=table.slot_shape)`` uses it.

    Example:
        >>> import jax.numpy as jnp
        >>> params = {"embed": {"embedding": jnp.zeros((100, 16))},
        ...           "mlp": {"dense2": {"kernel": jnp.zeros((64, 16)), "bias": jnp.zeros(16)}}}
        >>> table = auto_scales(params)
        >>> table["mlp/dense2/kernel"].eta == (2 / 64) ** 0.5, table["mlp/dense2/kernel"].slot_shape
        (True, (1, 16))
    """
    if (model is not None or apply_fn is not None) and example_inputs is None:
        raise ValueError("auto_scales: model / apply_fn needs example_inputs to trace the "
                         "data flow")
    if model is not None and apply_fn is not None:
        raise ValueError("auto_scales: pass model or apply_fn, not both")
    _check_not_variables(params, model)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not leaves:
        raise ValueError("auto_scales: params has no array leaves")
    tracer = None
    if example_inputs is not None:
        if model is None and apply_fn is None:
            raise ValueError("auto_scales: example_inputs needs model= or apply_fn=")
        tracer, n = _trace(apply_fn or _apply_fn(model), params, example_inputs)
        if n != len(leaves):
            raise ValueError(f"auto_scales: the traced function takes {n} parameter arrays but "
                             f"params has {len(leaves)}; pass the params the model uses")
    entries, guessed = [], []
    for i, (path, leaf) in enumerate(leaves):
        name: Hashable = path_to_name(path)
        shape = tuple(int(d) for d in getattr(leaf, "shape", ()))
        uses = tracer.uses.get(i) if tracer is not None else None
        scale, was_guessed = _rule(name, shape, uses)
        if was_guessed:
            guessed.append(("/".join(name), shape))
        entries.append((name, shape, scale))
    if pretrained:
        entries = warm_start(entries, {name: _rms(name, leaf) for (name, _, _), (_, leaf)
                                       in zip(entries, leaves)}, b0=b0, eta_floor=eta_floor)
    return build_table(entries, guessed, eta_overrides, slot_shape_overrides)


def _rms(name: PathName, leaf: Any) -> float:
    """The RMS of a leaf's values, in float32 or wider."""
    if isinstance(leaf, (jax.ShapeDtypeStruct, jax.core.Tracer)):
        raise ValueError(f"auto_scales(pretrained=True): {'/'.join(name)!r} is {leaf!r}, not "
                         "an array of values; pass the pretrained parameters themselves")
    x = jax.numpy.asarray(leaf)
    if x.size == 0:
        return 0.0
    x = x.astype(jax.numpy.promote_types(x.dtype, jax.numpy.float32))
    return float(jax.numpy.sqrt(jax.numpy.mean(jax.numpy.square(x))))
