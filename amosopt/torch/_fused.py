r"""``Amos(fused=True)``: the functions of :mod:`amosopt.torch._functional`, compiled.

In eager PyTorch each operation of the update is one pass over the tensor: some five for the
parameter update with factored slots, some twenty with full-size slots. ``torch.compile``
(Inductor: C++/OpenMP on CPU, Triton on CUDA) turns each function below into one generated
kernel that reads every input once. Nothing here restates the math: the kernels are the
functional code, traced. Results equal the eager path's up to rounding (a generated kernel may
contract a multiply and an add, or sum in another order), not bit for bit.

A parameter with factored slots is seen as a matrix ``(R, C)`` whose slot-shaped factors are
``(R, 1)``, ``(1, C)`` or ``(1, 1)`` (:func:`matrix_shape`), so that one kernel with dynamic
shapes serves every tensor of a layout and dtype. Which tensors come here is decided by
``_routes.route``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from amosopt.hyperparameters import DEFAULTS
from amosopt.rules import Shape
from amosopt.torch import _functional as functional
from amosopt.torch._functional import Hyper

#: ``((R, C), axis)``: the matrix view, and the axis the slot reduces (1: rows kept, 0: columns
#: kept, -1: nothing kept, a scalar slot)
Matrix = tuple[tuple[int, int], int]
_AXES = {1: (1,), 0: (0,), -1: (0, 1)}


def matrix_shape(shape: Shape, slot_shape: Shape) -> Optional[Matrix]:
    """The parameter as an ``R x C`` matrix whose slot keeps its rows (``axis = 1`` is
    reduced), its columns (``axis = 0``) or nothing (``axis = -1``, a scalar slot); ``None``
    for full-size slots or kept and reduced axes interleaved (e.g. slot ``(1, n, 1)``)."""
    if slot_shape == ():
        slot_shape = (1,) * len(shape)
    kept = [s == n for n, s in zip(shape, slot_shape) if n > 1]  # size-1 axes are either
    if not kept or all(kept):
        return None
    big = [n for n in shape if n > 1]
    if not any(kept):
        return (1, math.prod(big)), -1
    split = kept.index(not kept[0])
    if kept[0] in kept[split:]:
        return None
    return (math.prod(big[:split]), math.prod(big[split:])), (1 if kept[0] else 0)


def _clipped_mean_square(g: Tensor, h: Hyper, axes: tuple[int, ...], dtype: torch.dtype
                         ) -> Tensor:
    return functional.mean_square(functional.clip(g, h), axes, dtype)


def _update(theta: Tensor, g: Tensor, decay: Tensor, step: Tensor, m: Optional[Tensor],
            h: Hyper) -> None:
    functional.apply_update(theta, functional.clip(g, h), decay, step, m, h)


@functools.cache
def _compiled(fn: Callable, *variant: object) -> Callable:
    """``fn`` compiled for one variant (dtypes, layout, options), on its own copy of ``fn``'s
    code: dynamo caps recompilations per code object (8), and a model with several layouts
    and dtypes would hit that cap and fall back to eager with one code object for all. Called
    through :func:`with_constant_floats`; a number that changes from step to step must come
    as a tensor."""
    code_copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                                   fn.__defaults__)
    compiled = torch.compile(code_copy, dynamic=True)
    return lambda *args: with_constant_floats(compiled, *args)


def with_constant_floats(compiled: Callable, *args: object, **kwargs: object) -> Any:
    """``compiled(*args, **kwargs)`` with dynamo's Python floats specialised: each is a
    constant of the graph, guarded (another value compiles again) and part of the cache keys.

    Dynamo's default makes a float argument a 0-d tensor input of the graph. Where the code
    hands it on as a Python number (``alpha=`` and ``value=`` of ``add_`` and ``addcmul_``:
    beta, the momentum, the sign), torch 2.13's decompositions then write the first call's
    number into the kernel without a guard; a later call with another momentum ran the first
    one's. The AOTAutograd cache, whose key does not hold the number either, also served it to
    another process (measured: momentum 0.5 stepped with 0.9's constant). Set and restored by
    hand: ``torch._dynamo.config.patch`` measured some 0.5 ms a call, this some 4 us."""
    config = torch._dynamo.config
    before = config.specialize_float
    config.specialize_float = True
    try:
        return compiled(*args, **kwargs)
    finally:
        config.specialize_float = before


def _kernel(fn: Callable, *variant: object) -> Callable:
    """The compiled ``fn`` for ``variant``; ``fn`` itself inside a region that is being
    compiled already (a user's ``torch.compile`` of the training step), which fuses it."""
    return fn if torch.compiler.is_compiling() else _compiled(fn, *variant)


@torch.no_grad()
def clipped_mean_square(g: Tensor, matrix: Matrix, slot_shape: Shape, dtype: torch.dtype,
                        h: Hyper) -> Tensor:
    r""":math:`M(\mathrm{clip}(g)^2)` in slot shape and ``dtype``, from one pass over ``g``."""
    (rows, cols), axis = matrix
    kernel = _kernel(_clipped_mean_square, g.dtype, dtype, axis)
    return kernel(g.view(rows, cols), h, _AXES[axis], dtype).reshape(slot_shape)


@torch.no_grad()
def update(p: Tensor, decay: Tensor, step: Tensor, m: Optional[Tensor], matrix: Matrix,
           h: Hyper) -> None:
    """``apply_update(p, clip(p.grad), decay, step, m, h)`` as one kernel."""
    (rows, cols), axis = matrix
    factor = {1: (rows, 1), 0: (1, cols), -1: (1, 1)}[axis]
    kernel = _kernel(_update, p.dtype, p.grad.dtype, decay.dtype, axis, m is None,
                     h.clip is None)
    kernel(p.view(rows, cols), p.grad.view(rows, cols), decay.reshape(factor),
           step.reshape(factor), None if m is None else m.view(rows, cols), h)


@torch.no_grad()
def full_slot_update(p: Tensor, v: Tensor, b: Tensor, m: Optional[Tensor], h: Hyper,
                     scalars: tuple[float, float, float]) -> None:
    """:func:`~amosopt.torch._functional.full_slot_step` as one kernel that reads the
    gradient, the parameter and the slots once (contiguous tensors, seen flat)."""
    flat = [None if x is None else x.view(-1) for x in (p, p.grad, v, b, m)]
    kernel = _kernel(functional.full_slot_step, p.dtype, p.grad.dtype, v.dtype, m is None,
                     h.clip is None)
    if not torch.compiler.is_compiling():  # the numbers of this step, as tensors
        h = dataclasses.replace(h, xi=torch.as_tensor(h.xi, dtype=torch.float64))
        scalars = tuple(torch.as_tensor(x, dtype=torch.float64) for x in scalars)
    kernel(*flat, h, *scalars)


@functools.cache
def _probe(device_type: str) -> Optional[str]:
    try:
        x = torch.ones(4, 4, device=device_type)
        # the plain update (b0 is where b starts, not a symbol of the step)
        h = Hyper(xi=1.0, mu=0.0, sign=1.0, clip=None,
                  **{k: v for k, v in DEFAULTS.items() if k != "b0"})
        torch.compile(_update, dynamic=True)(x, x.clone(), x[:, :1] * 0.5, x[:1] * 0.25, None, h)
    except Exception as error:  # noqa: BLE001 (any failure means: not available here)
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
    return None


def check_available(device_type: str) -> None:
    """Compiles a tiny kernel once per process and device type, so that ``fused=True`` fails at
    construction, with the reason, where ``torch.compile`` cannot work (no C++ compiler for
    the CPU, no Triton for the GPU), rather than in the middle of a step."""
    reason = _probe(device_type)
    if reason is not None:
        raise RuntimeError(
            f"Amos(fused=True) needs torch.compile on {device_type!r}, which failed here "
            f"({reason}). Install a C++ compiler (CPU) or Triton (CUDA), or use fused=False."
        )
