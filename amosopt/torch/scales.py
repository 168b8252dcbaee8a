"""Automatic ``eta`` and slot shapes for PyTorch models: :func:`auto_scales`, :func:`auto_amos`.

The principles are in :mod:`amosopt.scales`. Here they meet torch's modules and layouts:

* ``nn.Linear`` / ``nn.Bilinear`` weight (out, in...): fan-in ``prod(shape[1:])``, slot
  ``(out, 1, ...)``; ``nn.Conv{1,2,3}d`` weight (out, in/groups, *kernel): fan-in
  ``in/groups * prod(kernel)``, slot ``(out, 1, ...)``; ``nn.ConvTranspose*d`` weight
  (in, out/groups, *kernel): fan-in ``in/groups * prod(kernel)``, slot ``(1, out/groups, 1, ...)``;
  Hugging Face ``Conv1D`` weight (in, out): fan-in ``in``, slot ``(1, out)``;
  ``nn.MultiheadAttention`` ``in_proj_weight`` (3E, E) and ``{q,k,v}_proj_weight``: fan-in E
  (or kdim / vdim), slot ``(rows, 1)``.
* ``nn.Embedding`` / ``nn.EmbeddingBag`` (V, d): ``sqrt(2/d)``, slot ``(V, 1)``; an embedding
  whose path says ``relative`` / ``rel_pos`` / ``relpos`` (T5's ``relative_attention_bias``) is a
  relative-position table added to logits: 0.5 with one slot per row (the authors' RPE rule);
  learned vectors such as ViT's ``cls_token`` / ``position_embeddings`` (any parameter named
  ``*token``, ``*pos_emb*``, ``*embedding*``, rank >= 2): ``sqrt(2/d)``, one slot per row.
* norm gains (``LayerNorm``, ``RMSNorm``, ``BatchNorm*``, ``GroupNorm``, ``InstanceNorm*`` and any
  module whose class name contains "Norm") 1.0; biases 0.5; scalar slots.
* anything else: the rank-based fallback of :func:`amosopt.scales.fallback_scale`, with one warning
  listing every guessed parameter. With ``example_inputs``, a parameter of an unknown module that
  the forward pass uses as the weight of ``F.linear`` / ``conv`` / ``embedding`` / a norm gets that
  rule instead, without a warning.

Tied parameters appear once, under their first name in ``named_parameters()`` and with the rule of
that module (a word embedding tied to the output layer stays an embedding, as in the authors'
configurations). Frozen parameters (``requires_grad=False``) are left out.

**Is a kernel's input after an activation (k = 2)?** With ``example_inputs``, one forward pass runs
under a :class:`torch.overrides.TorchFunctionMode` (model in eval mode, ``torch.no_grad()``, the
mode restored afterwards) that records the op producing every tensor. From each ``linear`` /
``conv`` / ``addmm`` / ``matmul`` call whose weight is a parameter, the input is walked back through
shape and identity ops (view, reshape, transpose, dropout, pooling, ``to``, indexing, chunk...) to
its producer: a ReLU/GELU/SiLU-family function or module (forward hooks mark activation modules,
such as Hugging Face's ``NewGELUActivation`` which is written with ``tanh`` and ``mul``) gives
k = 2; so does a product with an activation or a sigmoid/tanh/erf gate (GLU, SwiGLU, GELU written
out by hand). A kernel used several times gets k = 2 only if every use is after an activation.
The pass keeps every intermediate tensor alive until it ends (ids must stay unique), so give
small example inputs (batch 1, a short sequence): only the structure matters.

Without example inputs a heuristic decides: (a) the leaf module registered just before the kernel
(skipping dropout, identity, pooling and flatten) is an activation module, itself registered right
after another kernel (linear -> activation -> linear), in the kernel's own module, a sibling
module or its parent (BERT's ``intermediate.intermediate_act_fn`` before
``output.dense``; not the activation at the end of the previous block), or (b) the kernel's name
is an MLP output projection (``fc2``, ``c_proj``, ``down_proj``, ``wo``, ``w2``, ``linear2``,
``lin2``, ``dense_4h_to_h``, ``dense2``, ``fc_out``) and its parent module holds an activation (a
child module or a function attribute such as ``TransformerEncoderLayer.activation``). Pass
``example_inputs`` for the exact answer.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from amosopt.hyperparameters import WARM_START_B0, WARM_START_ETA_FLOOR
from amosopt.rules import Shape
from amosopt.scales import (
    GATES,
    LORA_RELATIVE_UPDATE,
    MLP_OUTPUT_NAMES,
    RELATIVE_POSITION,
    Scale,
    ScaleTable,
    build_table,
    additive_scale,
    canonical_op,
    check_lora_update,
    dora_magnitude_scale,
    embedding_scale,
    fallback_scale,
    gain_scale,
    is_activation,
    kernel_scale,
    lora_scale,
    relative_position_scale,
    warm_start,
)
from amosopt.torch._sharding import check_not_flattened
from amosopt.torch.optimizer import Amos

if TYPE_CHECKING:  # imported at call time in auto_amos: optimizer imports this module
    from amosopt.torch.optimizer import Amos

__all__ = ["auto_amos", "auto_scales"]


_NORMS = (
    nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_LEARNED_VECTORS = re.compile(r"(^|_)token(s)?$|pos(ition)?_emb|embedding")
_GAIN_NAMES = {"weight", "scale", "gamma", "g", "gain"}
_ADDITIVE_NAMES = {"bias", "beta", "shift", "b"}
#: ops (canonical names) that pass their first tensor input through unchanged in kind.
_PASSTHROUGH = {
    "view", "reshape", "transpose", "permute", "contiguous", "to", "clone", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "alphadropout", "featurealphadropout", "flatten",
    "unflatten", "squeeze", "unsqueeze", "expand", "expandas", "viewas", "reshapeas", "getitem",
    "chunk", "split", "unbind", "narrow", "float", "half", "bfloat16", "double", "type", "typeas",
    "detach", "t", "movedim", "swapaxes", "swapdims", "pad", "maxpool1d", "maxpool2d",
    "maxpool3d", "avgpool1d", "avgpool2d", "avgpool3d", "adaptiveavgpool1d", "adaptiveavgpool2d",
    "adaptiveavgpool3d", "adaptivemaxpool1d", "adaptivemaxpool2d", "adaptivemaxpool3d",
    "maxpool1dwithindices", "maxpool2dwithindices", "contiguousformat", "select", "slice",
}
_AFFINE = {"mul", "rmul", "add", "radd", "sub", "rsub", "div", "truediv", "rtruediv"}
_SKIP_MODULES = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
    nn.Flatten, nn.Unflatten, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)
_PRETTY = {
    "relu": "ReLU", "relu6": "ReLU6", "leakyrelu": "LeakyReLU", "gelu": "GELU", "silu": "SiLU",
    "mish": "Mish", "elu": "ELU", "selu": "SELU", "celu": "CELU", "glu": "GLU", "prelu": "PReLU",
    "softplus": "Softplus", "hardswish": "Hardswish", "swish": "Swish",
}


# ------------------------------------------------------------------------------------------------
# Static rules: what a parameter is, from its module and attribute name


@dataclass(frozen=True)
class _Kernel:
    """A kernel whose k (input after an activation or not) is still to be decided."""

    kind: str
    fan_in: int
    slot_shape: Shape


def _module_rule(module: nn.Module, path: str, local: str, shape: Shape
                 ) -> Scale | _Kernel | None:
    """The rule for parameter ``local`` of ``module`` (at ``path``); None when no rule knows it."""
    cls = type(module).__name__
    if isinstance(module, nn.Embedding) and RELATIVE_POSITION.search(path):
        return relative_position_scale(f"{cls} weight", shape)
    if isinstance(module, (nn.Linear, nn.Bilinear)) and local == "weight":
        return _Kernel(f"{cls} weight", math.prod(shape[1:]), (shape[0],) + (1,) * (len(shape) - 1))
    if isinstance(module, nn.modules.conv._ConvNd) and local == "weight":
        ones = (1,) * (len(shape) - 2)
        if module.transposed:  # (in, out/groups, *kernel)
            fan_in = shape[0] // module.groups * math.prod(shape[2:])
            return _Kernel(f"{cls} weight", fan_in, (1, shape[1]) + ones)
        return _Kernel(f"{cls} weight", math.prod(shape[1:]), (shape[0], 1) + ones)
    if cls == "Conv1D" and local == "weight" and len(shape) == 2 and \
            getattr(module, "nf", None) == shape[1]:  # Hugging Face GPT-2 layout (in, out)
        return _Kernel("Conv1D weight (in, out)", shape[0], (1, shape[1]))
    if isinstance(module, nn.MultiheadAttention) and local.endswith("proj_weight"):
        return _Kernel(f"MultiheadAttention {local}", shape[1], (shape[0], 1))
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and local == "weight":
        return embedding_scale(f"{cls} weight", shape)
    if isinstance(module, nn.PReLU) and local == "weight":
        return additive_scale("PReLU slope")
    is_norm = isinstance(module, _NORMS) or "norm" in cls.lower()
    if is_norm and len(shape) <= 1 and local in _GAIN_NAMES:
        return gain_scale(f"{cls} {local}")
    if (local in _ADDITIVE_NAMES or local.endswith("bias")) and len(shape) <= 1:
        return additive_scale(f"{cls} {local}" if local != "bias" else f"{cls} bias")
    if isinstance(module, nn.MultiheadAttention) and local in ("bias_k", "bias_v"):
        return additive_scale(f"MultiheadAttention {local}")
    if len(shape) >= 2 and _LEARNED_VECTORS.search(local):  # ViT cls_token, position_embeddings
        d = shape[-1]
        return Scale(math.sqrt(2 / d), shape[:-1] + (1,),
                     f"{cls} {local}, learned vectors of width {d}: sqrt(2/{d}), one slot per row")
    return None


def _use_rule(use: str, shape: Shape) -> Scale | _Kernel | None:
    """The rule for a parameter of an unknown module, from how the forward pass used it."""
    if use == "linear" and len(shape) == 2:
        return _Kernel("weight of F.linear", shape[1], (shape[0], 1))
    if use.startswith("conv") and "transpose" not in use and len(shape) >= 3:
        return _Kernel(f"weight of {use}", math.prod(shape[1:]),
                       (shape[0],) + (1,) * (len(shape) - 1))
    if use == "matmul_right" and len(shape) == 2:
        return _Kernel("right operand of matmul (in, out)", shape[0], (1, shape[1]))
    if use == "matmul_left" and len(shape) == 2:
        return _Kernel("left operand of matmul (out, in)", shape[1], (shape[0], 1))
    if use == "embedding" and len(shape) == 2:
        return embedding_scale("weight of F.embedding", shape)
    if use == "norm_weight" and len(shape) <= 1:
        return gain_scale("weight of a norm op")
    if use == "norm_bias" and len(shape) <= 1:
        return additive_scale("bias of a norm op")
    return None


#: the adapter matrices of a ``peft`` LoRA layer, by the name of their ModuleDict (Linear, Conv)
#: or ParameterDict (Embedding): "A" the random factor, "B" the zero-initialised one, each with
#: the name of the other factor and the label its reason gives
_LORA_MATRICES = {
    "lora_A": ("A", "lora_B", "LoRA A"),
    "lora_B": ("B", "lora_A", "LoRA B"),
    "lora_embedding_A": ("B", "lora_embedding_B", "LoRA embedding A (zero-initialised)"),
    "lora_embedding_B": ("A", "lora_embedding_A", "LoRA embedding B"),
}


def _rms(tensor: Tensor) -> float:
    """The RMS of a tensor's values, in float32 or wider, without a float copy."""
    if tensor.numel() == 0:
        return 0.0
    dtype = torch.promote_types(tensor.dtype, torch.float32)
    norm = torch.linalg.vector_norm(tensor.detach(), dtype=dtype)
    return float(norm) / math.sqrt(tensor.numel())


def _adapter(model: nn.Module, name: str) -> tuple[nn.Module, str, str] | None:
    """``(layer, matrix, adapter)`` for a ``peft`` adapter parameter: ``<layer>.lora_A.<adapter>
    .weight`` (and ``lora_B``, ``lora_magnitude_vector``) or ``<layer>.lora_embedding_A.
    <adapter>`` (and ``_B``); None for any other parameter."""
    parts = name.split(".")
    if len(parts) >= 4 and parts[-1] == "weight" and (
            parts[-3] in ("lora_A", "lora_B", "lora_magnitude_vector")):
        layer_path, matrix, adapter = ".".join(parts[:-3]), parts[-3], parts[-2]
    elif len(parts) >= 3 and parts[-2] in ("lora_embedding_A", "lora_embedding_B"):
        layer_path, matrix, adapter = ".".join(parts[:-2]), parts[-2], parts[-1]
    else:
        return None
    layer = model.get_submodule(layer_path)
    if adapter not in getattr(layer, "r", {}) or not hasattr(layer, "get_base_layer"):
        return None
    return layer, matrix, adapter


def _factor(layer: nn.Module, matrix: str, adapter: str) -> Tensor:
    """An adapter's factor ``matrix`` (a module's weight, or an embedding's parameter)."""
    factor = getattr(layer, matrix)[adapter]
    return factor.weight if isinstance(factor, nn.Module) else factor


def _lora_rule(model: nn.Module, name: str, shape: Shape, kappa: float) -> Scale | None:
    """The scale of a ``peft`` adapter parameter, from the adapter's rank and scaling and the
    layer it adapts: LoRA matrices (:func:`amosopt.scales.lora_scale`, the zero-initialised one
    aimed at a relative update ``kappa``), DoRA's magnitude
    (:func:`amosopt.scales.dora_magnitude_scale`); None for any other parameter."""
    found = _adapter(model, name)
    if found is None:
        return None
    layer, matrix, adapter = found
    kind = f"{type(layer.get_base_layer()).__name__} adapter"
    if matrix == "lora_magnitude_vector":
        return dora_magnitude_scale(f"{kind}, DoRA magnitude", _rms(model.get_parameter(name)),
                                    fallback=1.0)
    rank, scaling = layer.r[adapter], layer.scaling.get(adapter)
    if scaling is None:
        return None
    role, other, label = _LORA_MATRICES[matrix]
    random_factor = _factor(layer, matrix if role == "A" else other, adapter)
    base = getattr(layer.get_base_layer(), "weight", None)
    if matrix == "lora_embedding_A":  # (r, V): one slot per token, as the embedding's rows
        slot = (1, shape[1])
        fan_in = rank
    else:  # one slot per output row: (out, in...) layout
        slot = (shape[0],) + (1,) * (len(shape) - 1)
        fan_in = math.prod(random_factor.shape[1:])
    return lora_scale(kind, shape, slot, matrix=role, rank=int(rank), scaling=float(scaling),
                      a_rms=_rms(random_factor), w_rms=0.0 if base is None else _rms(base),
                      fan_in=fan_in, label=label, kappa=kappa)


# ------------------------------------------------------------------------------------------------
# Data flow: one recorded forward pass


@dataclass(eq=False)
class _Node:
    op: str  # canonical op name, or the activation label set by a module hook
    inputs: list[Tensor]
    activation: str | None = None


def _tensors(values: Iterable[Any]) -> list[Tensor]:
    found = []
    for value in values:
        if isinstance(value, Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, Tensor))
    return found


class _Recorder(TorchFunctionMode):
    """Records, for every torch function call, its output tensors' producer and weight uses."""

    def __init__(self, params: dict[int, nn.Parameter]):
        super().__init__()
        self.params = params
        self.producer: dict[int, _Node] = {}
        self.keep: list[Any] = []  # outputs stay alive, so their ids stay unique
        self.sources: dict[int, list[str | None]] = {}  # kernel id -> what each use's input is
        self.uses: dict[int, str] = {}  # param id -> how an op first used it

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = canonical_op(getattr(func, "__name__", "").strip("_"))
        node = _Node(op, _tensors(list(args) + list(kwargs.values())))
        outputs = _tensors([out]) if not isinstance(out, Tensor) else [out]
        for tensor in outputs:
            if op in _PASSTHROUGH and any(tensor is x for x in node.inputs):
                continue  # returned its input unchanged (dropout in eval): keep its producer
            self.producer[id(tensor)] = node
        self.keep.append(out)
        self._record_uses(func, op, args, kwargs)
        return out

    def mark(self, output: Any, label: str) -> None:
        """Marks a module's output as an activation (forward hook of activation modules)."""
        if isinstance(output, Tensor):
            self.producer[id(output)] = _Node(label, [], activation=label)
            self.keep.append(output)

    # -- which parameter is used as a weight, and what is its input -----------------------------

    def _record_uses(self, func: Callable, op: str, args: tuple, kwargs: dict) -> None:
        def arg(i: int, key: str) -> Any:
            return args[i] if len(args) > i else kwargs.get(key)

        if op == "linear" or op.startswith("conv"):
            self._kernel_use(op, arg(1, "weight"), arg(0, "input"))
        elif op == "addmm":  # HF Conv1D: addmm(bias, x, weight)
            self._kernel_use("linear", arg(2, "mat2"), arg(1, "mat1"))
        elif op in ("matmul", "mm", "bmm", "rmatmul"):
            a, b = arg(0, "input"), arg(1, "other")
            if op == "rmatmul":
                a, b = b, a
            if self._param(b) is not None and self._param(a) is None:
                self._kernel_use("matmul_right", b, a)  # x @ W: W is (..., in, out)
            elif self._param(a) is not None and self._param(b) is None:
                self._kernel_use("matmul_left", a, b)  # W @ x: W is (..., out, in)
        elif op == "multiheadattentionforward":
            self._mha_uses(func, args, kwargs)
        elif op == "embedding":
            self._plain_use("embedding", arg(1, "weight"))
        elif op in ("layernorm", "groupnorm", "rmsnorm", "batchnorm", "instancenorm"):
            bound = _bind(func, args, kwargs)
            self._plain_use("norm_weight", bound.get("weight"))
            self._plain_use("norm_bias", bound.get("bias"))

    def _param(self, tensor: Any) -> nn.Parameter | None:
        """The parameter ``tensor`` is (possibly through views such as ``.t()``), if any."""
        for _ in range(64):
            if not isinstance(tensor, Tensor):
                return None
            if id(tensor) in self.params:
                return self.params[id(tensor)]
            node = self.producer.get(id(tensor))
            if node is None or node.op not in _PASSTHROUGH or not node.inputs:
                return None
            tensor = node.inputs[0]
        return None

    def _kernel_use(self, op: str, weight: Any, x: Any) -> None:
        param = self._param(weight)
        if param is None:
            return
        self.uses.setdefault(id(param), op)
        self.sources.setdefault(id(param), []).append(self.source(x))

    def _plain_use(self, use: str, weight: Any) -> None:
        param = self._param(weight)
        if param is not None:
            self.uses.setdefault(id(param), use)

    def _mha_uses(self, func: Callable, args: tuple, kwargs: dict) -> None:
        bound = _bind(func, args, kwargs)
        pairs = [("in_proj_weight", "query"), ("q_proj_weight", "query"),
                 ("k_proj_weight", "key"), ("v_proj_weight", "value")]
        for weight, x in pairs:
            if bound.get(weight) is not None:
                self._kernel_use("linear", bound[weight], bound.get(x))
        out = self._param(bound.get("out_proj_weight"))
        if out is not None:  # its input is the attention context: k = 1
            self.sources.setdefault(id(out), []).append(None)

    # -- walking back from a kernel's input ---------------------------------------------------

    def _producer(self, tensor: Any) -> _Node | None:
        """The first producer of ``tensor`` that is not a shape/identity op or an affine op
        with a Python number (``0.5 * t``, ``1.0 + t``)."""
        for _ in range(256):
            if not isinstance(tensor, Tensor):
                return None
            node = self.producer.get(id(tensor))
            if node is None or node.activation or not node.inputs:
                return node
            if node.op not in _PASSTHROUGH and not (node.op in _AFFINE and len(node.inputs) == 1):
                return node
            tensor = node.inputs[0]
        return None

    def source(self, x: Any) -> str | None:
        """The activation (or ``"gated product"``) ``x`` comes straight from, else None."""
        node = self._producer(x)
        if node is None:
            return None
        if node.activation:
            return node.activation
        if is_activation(node.op):
            return _PRETTY.get(node.op, node.op)
        if node.op in ("mul", "rmul") and len(node.inputs) == 2:
            for operand in node.inputs:
                gate = self._producer(operand)
                if gate is not None and (gate.activation or is_activation(gate.op)
                                         or gate.op in GATES):
                    return f"gated product ({gate.activation or gate.op})"
        return None


def _bind(func: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    try:
        return dict(inspect.signature(func).bind(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        return dict(kwargs)


def _is_activation_module(module: nn.Module) -> bool:
    return not list(module.children()) and is_activation(type(module).__name__)


def _call(model: nn.Module, example_inputs: Any) -> None:
    if isinstance(example_inputs, Mapping):
        model(**example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        model(*example_inputs)
    else:
        model(example_inputs)


def _trace(model: nn.Module, example_inputs: Any) -> _Recorder:
    """Runs one forward pass in eval mode without gradients, recording the data flow."""
    params = {id(p): p for p in model.parameters()}
    recorder = _Recorder(params)
    hooks = [
        module.register_forward_hook(
            lambda mod, args, out, label=type(module).__name__: recorder.mark(out, label))
        for module in model.modules() if _is_activation_module(module)
    ]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), recorder:
            _call(model, example_inputs)
    except Exception as error:
        raise ValueError(
            f"auto_scales: the forward pass with example_inputs failed ({type(error).__name__}: "
            f"{error}). Pass inputs the model accepts: a tensor, a tuple of positional "
            "arguments, or a dict of keyword arguments."
        ) from error
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    return recorder


# ------------------------------------------------------------------------------------------------
# Heuristic without example inputs


def _heuristic_sources(model: nn.Module) -> dict[str, str]:
    """``module name -> activation label`` for kernels that look like they follow an activation."""
    found: dict[str, str] = {}
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    for i, (name, module) in enumerate(leaves):
        j = i - 1
        while j >= 0 and isinstance(leaves[j][1], _SKIP_MODULES):
            j -= 1
        parent_name, _, local = name.rpartition(".")
        before = j - 1  # the activation must itself follow a kernel: linear -> act -> linear
        while before >= 0 and isinstance(leaves[before][1], _SKIP_MODULES):
            before -= 1
        if j >= 0 and _is_activation_module(leaves[j][1]) and before >= 0 and \
                _is_kernel_module(leaves[before][1]) and \
                _near(leaves[j][0].rpartition(".")[0], parent_name):
            found[name] = f"{type(leaves[j][1]).__name__} (registered before it)"
            continue
        if local in MLP_OUTPUT_NAMES:
            label = _parent_activation(model.get_submodule(parent_name))
            if label is not None:
                found[name] = f"{label} (MLP output projection, by name)"
    return found


def _is_kernel_module(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)) or \
        type(module).__name__ == "Conv1D"


def _near(act_parent: str, kernel_parent: str) -> bool:
    """The activation sits in the kernel's module, a sibling module, or the kernel module's
    parent; not, e.g., at the end of the previous transformer block."""
    up = kernel_parent.rpartition(".")[0] if kernel_parent else None
    return act_parent in (kernel_parent, up) or (
        bool(kernel_parent) and bool(act_parent) and act_parent.rpartition(".")[0] == up)


def _parent_activation(parent: nn.Module) -> str | None:
    for child in parent.children():
        if _is_activation_module(child):
            return type(child).__name__
    for value in vars(parent).values():
        if callable(value) and not isinstance(value, nn.Module) and \
                is_activation(getattr(value, "__name__", "")):
            return _PRETTY.get(canonical_op(value.__name__), value.__name__)
    return None


# ------------------------------------------------------------------------------------------------
# Public API


def auto_scales(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    eta_overrides: Any = None,
    slot_shape_overrides: Any = None,
    pretrained: bool = False,
    b0: float = WARM_START_B0,
    eta_floor: float = WARM_START_ETA_FLOOR,
    lora_update: float = LORA_RELATIVE_UPDATE,
) -> ScaleTable:
    """The automatic ``eta`` and slot shape of every trainable parameter of ``model``.

    With ``pretrained=True`` (fine-tuning), each tensor's ``eta`` is the RMS of its values,
    floored at ``eta_floor`` times the automatic ``eta``, and its ``b`` starts at ``b0``
    (``table.b0``; :math:`d_0 = 1/(1 + d\\sqrt{\\xi\\eta}\\, b_0)` is how far along its own
    decay it already is); a tensor that is exactly zero keeps the automatic scale and
    ``b0 = 0``. LoRA adapters of a ``peft`` model get their own rule either way (``lora_A``:
    the RMS of its initialisation; the zero-initialised ``lora_B``: from the rank, the scaling
    and the adapted layer, at which the adapter's update is ``lora_update`` times the adapted
    weight's RMS) and ``b0 = 0``. See :mod:`amosopt.scales`.

    Args:
        model: the ``nn.Module``.
        example_inputs: optional inputs for one forward pass that finds which kernels take an
            activation's output (k = 2 in ``eta = sqrt(k / fan_in)``): a tensor
            (``model(x)``), a tuple of positional arguments, or a dict of keyword arguments
            (``{'input_ids': ids}``). Without it a heuristic decides (see the module docstring).
        eta_overrides: a rule table ``{regex: eta}`` (first ``re.match`` wins, on the
            ``named_parameters()`` name); names no rule matches keep the automatic value.
        slot_shape_overrides: the same for slot shapes (tuples or ``SHAPE`` expressions).
        pretrained: take ``eta`` from the weights and start ``b`` at ``b0`` (the warm start
            for fine-tuning; default False, the paper's fresh start).
        b0: with ``pretrained=True``, where a pretrained tensor's ``b`` starts (default
            :data:`amosopt.hyperparameters.WARM_START_B0`).
        eta_floor: with ``pretrained=True``, the floor on ``eta`` as a fraction of the
            automatic ``eta`` (default :data:`amosopt.hyperparameters.WARM_START_ETA_FLOOR`).
        lora_update: on a ``peft`` model, the size of each LoRA adapter's update ``s*B*A`` that
            the zero-initialised factor's ``eta`` aims at, as a fraction of the adapted
            weight's RMS (default :data:`amosopt.scales.LORA_RELATIVE_UPDATE`, 0.1; on
            ``benchmarks/finetune.py`` 0.4 did better, see the fine-tuning guide).

    Returns:
        A :class:`~amosopt.scales.ScaleTable`: ``name -> Scale(eta, slot_shape, reason, b0)`` in
        ``named_parameters()`` order (tied parameters once, frozen ones left out). Use it as
        ``Amos(params, lr, eta=table.eta, slot_shape=table.slot_shape)``, or call
        :func:`auto_amos`.

    Warns:
        UserWarning: once, listing every parameter that got the rank-based fallback.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(),
        ...                             torch.nn.Linear(32, 2))
        >>> table = auto_scales(model)
        >>> table["2.weight"].reason
        'Linear weight, fan-in 32, input after GELU (registered before it): sqrt(2/32)'
        >>> table["2.weight"].slot_shape, table["2.bias"].eta
        ((2, 1), 0.5)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"auto_scales: model must be a torch.nn.Module, got {type(model).__name__}")
    check_lora_update(lora_update)
    recorder = None if example_inputs is None else _trace(model, example_inputs)
    heuristic = {} if recorder is not None else _heuristic_sources(model)
    entries, guessed, rms, adapters = [], [], {}, []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        shape = tuple(param.shape)
        module_name, _, local = name.rpartition(".")
        check_not_flattened(name, param, model.get_submodule(module_name))
        if pretrained:
            rms[name] = _rms(param)
        lora = _lora_rule(model, name, shape, lora_update)
        if lora is not None:
            entries.append((name, shape, lora))
            adapters.append(name)
            continue
        rule = _module_rule(model.get_submodule(module_name), module_name, local, shape)
        if rule is None and recorder is not None and id(param) in recorder.uses:
            rule = _use_rule(recorder.uses[id(param)], shape)
        if rule is None:
            rule = fallback_scale(shape)
            guessed.append((name, shape))
        if isinstance(rule, _Kernel):
            if recorder is not None:
                sources = recorder.sources.get(id(param)) or [None]
                activation = sources[0] if all(s is not None for s in sources) else None
            else:
                activation = heuristic.get(module_name)
            rule = kernel_scale(rule.kind, rule.fan_in, rule.slot_shape, activation)
        entries.append((name, shape, rule))
    if pretrained:
        entries = warm_start(entries, rms, b0=b0, eta_floor=eta_floor, skip=adapters)
    return build_table(entries, guessed, eta_overrides, slot_shape_overrides)


def auto_amos(
    model: nn.Module,
    lr: float,
    example_inputs: Any = None,
    *,
    eta_overrides: Any = None,
    slot_shape_overrides: Any = None,
    pretrained: bool = False,
    b0: float = WARM_START_B0,
    eta_floor: float = WARM_START_ETA_FLOOR,
    lora_update: float = LORA_RELATIVE_UPDATE,
    **amos_kwargs: Any,
) -> Amos:
    """``Amos`` for ``model``'s trainable parameters with automatic scales, in one line.

    Equivalent to ``table = auto_scales(model, example_inputs, eta_overrides=...,
    slot_shape_overrides=...)`` then ``Amos([(n, p) for n, p in model.named_parameters() if
    p.requires_grad], lr, eta=table.eta, slot_shape=table.slot_shape, **amos_kwargs)``.
    The table is kept as ``optimizer.scales``. With ``pretrained=True`` (fine-tuning) the
    table's ``eta`` comes from the weights and ``Amos(..., b0=table.b0)`` starts each
    pretrained tensor's ``b`` at ``b0``, a warm start (see :func:`auto_scales`).

    Args:
        model: the ``nn.Module``.
        lr: the global learning rate xi (about 1/sqrt(number of batches in the data)).
        example_inputs: see :func:`auto_scales`.
        eta_overrides: see :func:`auto_scales`.
        slot_shape_overrides: see :func:`auto_scales`.
        pretrained: see :func:`auto_scales`.
        b0: see :func:`auto_scales`.
        eta_floor: see :func:`auto_scales`.
        lora_update: see :func:`auto_scales`.
        **amos_kwargs: the other arguments of :class:`amosopt.torch.Amos` (``beta``,
            ``momentum``, ``clip_value``...); not ``eta`` or ``slot_shape``.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 1))
        >>> optimizer = auto_amos(model, lr=0.01, momentum=0.9,
        ...                       eta_overrides={r"2\\.": 0.1})
        >>> optimizer.scales["2.bias"].eta
        0.1
    """
    for key in ("eta", "slot_shape"):  # b0 is an argument here, so never in amos_kwargs
        if key in amos_kwargs:
            raise TypeError(
                f"auto_amos: '{key}' is computed automatically; change entries with "
                f"{key}_overrides={{regex: value}} instead"
            )
    table = auto_scales(model, example_inputs, eta_overrides=eta_overrides,
                        slot_shape_overrides=slot_shape_overrides, pretrained=pretrained,
                        b0=b0, eta_floor=eta_floor, lora_update=lora_update)
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if pretrained:  # else the paper's b_0 = 0, as a plain number
        amos_kwargs["b0"] = table.b0
    optimizer = Amos(params, lr, eta=table.eta, slot_shape=table.slot_shape, **amos_kwargs)
    optimizer.scales = table
    return optimizer
