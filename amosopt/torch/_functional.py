r"""The Amos update of one tensor, in the paper's symbols (Tian & Parikh, arXiv 2210.11693).

The numbers are those of the authors' reference code (``jestimator.amos``); the optax backend's
``_amos_leaf`` is the same update, written functionally. Here the slots ``v``, ``b`` and the
parameter change in place, and the update is split where the optimizer needs to split it:

* :func:`mean_square` -- :math:`M(g_t^2)`, in phase 1, where a non-finite gradient must be found
  before anything changes;
* :func:`slot_coefficients` -- :math:`v_t, b_t` and the slot-shaped factors of the update;
* :func:`column_scaled` -- with ``second_moment="row-col"``, the column factor :math:`u_t` and
  the gradient it rescales entry by entry;
* :func:`apply_update` -- :math:`\theta_t` (through the momentum EMA :math:`m_t` if any).

Every path of :class:`amosopt.torch.Amos` runs these functions: one tensor at a time, on
concatenations of small slots, on blocks of a large tensor, on lists of tensors (see
:class:`TensorList`), or compiled by ``torch.compile`` (``fused=True``). Each operation is written
once, so those paths agree bit for bit (compiled kernels: up to rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor

#: a Python float for one tensor, a per-element tensor for concatenated slots
Scalar = Union[float, Tensor]
#: one tensor, or a :class:`TensorList` (the batched update: one ``torch._foreach_*`` call per
#: operation)
Tensors = Union[Tensor, "TensorList"]

#: the 16-bit dtypes: float32 slots and arithmetic, and a choice of rounding when stored
LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Hyper:
    """The hyper-parameters of one param group at one step, in the paper's symbols."""

    #: ξ, the global learning rate (the group's lr, read at every step); inside torch.compile a
    #: tensor lr stays a (float64) tensor, so that a scheduler's new value is not a new constant
    xi: Scalar
    beta: float  # β, decay of the running mean v of M(g^2)
    c_coef: float  # c, in c_t = (1 + c sqrt(ξ) b)^(-1/2)
    d_coef: float  # d, in d_t = (1 + d sqrt(ξη) b)^(-1)
    extra_l2: float  # λ, the reference's constant L2 term
    epsilon: float  # ε, the floor on v
    mu: float  # μ, the momentum EMA of the update (0: none)
    sign: float  # 1 to minimise, -1 to maximise
    clip: Optional[float]  # element-wise clipping of g to [-clip, clip], or None
    #: how a 16-bit parameter stores its float32 update (see apply_update): "nearest",
    #: "stochastic" (bfloat16) or "compensated"
    rounding: str = "nearest"
    #: ρ: the decay (γ_t, c_t) runs on the global rate ρξ instead of ξ; 1 is the paper's
    decay_ratio: float = 1.0

    @classmethod
    def of(cls, group: dict[str, Any]) -> Hyper:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            # eager: a Python double; compiled: .item() would break the graph, a float would
            # be guarded on and recompile at every change of lr
            xi = lr.to(torch.float64) if torch.compiler.is_compiling() else lr.item()
        else:
            xi = float(lr)
        return cls(xi=xi, beta=group["beta"],
                   c_coef=group["c_coef"], d_coef=group["d_coef"], extra_l2=group["extra_l2"],
                   epsilon=group["epsilon"], mu=group["momentum"],
                   sign=-1.0 if group["maximize"] else 1.0, clip=group["clip_value"],
                   rounding=group["rounding"], decay_ratio=group["decay_ratio"])


def slot_dtype(p: Tensor) -> torch.dtype:
    """Slots are float32 for bf16/fp16 parameters (kept in float32 after loading), else the
    parameter's dtype."""
    return torch.float32 if p.dtype in LOW_PRECISION else p.dtype


def per_tensor(h: Hyper, eta: float, t: Scalar) -> tuple[Scalar, Scalar, Scalar]:
    r"""The per-tensor numbers of :func:`slot_coefficients`: :math:`\xi\eta`,
    :math:`d\sqrt{\xi\eta}` and :math:`1-\beta^t`, computed in double precision: Python
    floats, or float64 0-d tensors where ``h.xi`` or the step ``t`` is one (inside
    ``torch.compile``, where they must stay graph inputs rather than per-step constants)."""
    xi_eta = h.xi * eta
    return xi_eta, h.d_coef * sqrt(xi_eta), 1.0 - h.beta**t


def sqrt(x: Scalar) -> Scalar:
    """``math.sqrt`` of a float, ``torch.sqrt`` of a tensor (both correctly rounded)."""
    return x.sqrt() if isinstance(x, Tensor) else math.sqrt(x)


def clip(g: Tensor, h: Hyper, out: Optional[Tensor] = None) -> Tensor:
    """Element-wise clipping to [-clip, clip], as ``optax.clip`` in the reference (an inf
    becomes ``clip``, a NaN stays NaN), into ``out`` if given. A temporary: callers clip again
    rather than keep one per parameter between the phases, which would double gradient memory."""
    if h.clip is None:
        return g
    return g.clamp(-h.clip, h.clip) if out is None else torch.clamp(g, -h.clip, h.clip, out=out)


def mean_square(g: Tensor, axes: tuple[int, ...], dtype: torch.dtype, keepdim: bool = True
                ) -> Tensor:
    r""":math:`M(g^2)`: :math:`g^2` averaged over ``axes`` (none: a full-size slot), in
    ``dtype``; ``keepdim=False`` for a scalar slot ``()``.

    How the reduction is computed is chosen here, at each call, and is not a route (see
    :mod:`amosopt.torch._routes`): it is the kernel of one reduction, whose result is the
    same mean up to rounding, and it depends on whether the call is being traced, which
    ``route()`` cannot know (it runs outside any graph, and a kept route serves eager and
    compiled steps alike; the compiled kernels and the full step call this too):

    * traced (``torch.compile``): the plain mean of squares, which Inductor fuses into one
      reduction (its ``vector_norm`` measured twice as slow, ``benchmarks/torch_step_ab.py``);
    * eager, keeping the innermost axis: sums of squares by blocks of leading rows
      (:func:`_sum_of_squares_by_blocks`), as ``vector_norm`` over a leading axis is slow;
    * eager otherwise: :math:`\|g\|_2^2 / n` over the axes (``vector_norm``), which needs no
      full-size temporary.
    """
    if not axes:
        return g.to(dtype).square()
    if torch.compiler.is_compiling():
        return g.to(dtype).square().mean(axes, keepdim=keepdim)
    n = math.prod(g.shape[a] for a in axes)
    # kept innermost, as (1, C); the blocks keep dims (keepdim=False is for a scalar slot)
    if keepdim and g.dim() - 1 not in axes and type(g) is Tensor and g.numel():
        return _sum_of_squares_by_blocks(g, axes, dtype).div_(n)
    norm = torch.linalg.vector_norm(g, dim=axes, keepdim=keepdim, dtype=dtype)
    return norm.square().div_(n)


#: entries per block of :func:`_sum_of_squares_by_blocks` (512 KiB of float32)
_SQUARES_BLOCK = 1 << 17


def _sum_of_squares_by_blocks(g: Tensor, axes: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Sum of ``g^2`` over ``axes`` (keepdim), which keep the innermost axis: block by block of
    leading rows, so that the temporary squares stay small. Eager ``vector_norm`` over a
    leading axis measured 8-17x slower than this (one thread, a 768 x 3072 gradient with a
    (1, 3072) slot: 7.1-7.4 ms against 0.4-0.9 ms; ``benchmarks/README.md``), the layout of
    Hugging Face's ``Conv1D`` weights."""
    rows = max(1, _SQUARES_BLOCK // math.prod(g.shape[1:]))
    parts = torch.cat([block.to(dtype).square().sum(axes, keepdim=True)
                       for block in g.split(rows, 0)])
    return parts.sum(0, keepdim=True) if 0 in axes else parts


def slot_coefficients(g2: Tensor, v: Tensor, b: Tensor, h: Hyper, xi_eta: Scalar,
                      d_scale: Scalar, bias_correction: Scalar) -> tuple[Tensor, Tensor]:
    r"""Updates ``v`` and ``b`` in place; returns the slot-shaped ``(decay, step)`` of
    :math:`\theta_t = \theta_{t-1} - \text{decay}\,\theta_{t-1} - \text{step}\,g_t`:

    .. math::
        \begin{aligned}
        & v_t = \beta v_{t-1} + (1-\beta) M(g_t^2), \qquad
          1/\hat v_t = (1-\beta^t) / \max(v_t, \epsilon) \\
        & c_t = (1 + c\sqrt{\rho\xi}\, b_{t-1})^{-1/2}, \qquad
          d_t = (1 + d\sqrt{\xi\eta}\, b_{t-1})^{-1}, \qquad
          \gamma_t = c_t\, (\rho\xi)^2 M(g_t^2) / \hat v_t \\
        & b_t = b_{t-1} + \gamma_t (1 + b_{t-1}), \qquad
          \text{decay} = d_t (\tfrac12\gamma_t + \lambda), \qquad
          \text{step} = d_t\, \xi\eta / \sqrt{\hat v_t}
        \end{aligned}

    ``xi_eta``, ``d_scale`` and ``bias_correction`` are :func:`per_tensor`'s numbers;
    :math:`\rho` is ``h.decay_ratio`` (1 in the paper, where the decay runs on :math:`\xi`).
    """
    v.mul_(h.beta).add_(g2, alpha=1.0 - h.beta)
    rcpl_v_hat = v.clamp_min(h.epsilon).reciprocal_().mul_(bias_correction)  # 1 / v_hat_t
    xi_g = h.xi if h.decay_ratio == 1.0 else h.xi * h.decay_ratio  # ρξ, the decay's rate
    c_t = b.mul(h.c_coef * sqrt(xi_g)).add_(1.0).rsqrt_()
    gamma = c_t.mul_(xi_g * xi_g).mul_(rcpl_v_hat).mul_(g2)
    d_t = b.mul(d_scale).add_(1.0).reciprocal_()
    b.addcmul_(gamma, b + 1.0)
    decay = gamma.mul(0.5).add_(h.extra_l2).mul_(d_t)
    step = rcpl_v_hat.sqrt_().mul_(d_t).mul_(xi_eta)
    return decay, step


def column_scaled(g: Tensor, g2_column: Tensor, v: Tensor, u: Tensor, h: Hyper) -> Tensor:
    r"""Updates the column factor ``u`` in place (``second_moment="row-col"``); returns
    :math:`\tilde g_t`, a new tensor, which :func:`apply_update` takes for :math:`g_t`:

    .. math::
        u_t = \beta u_{t-1} + (1-\beta) M_K(g_t^2), \qquad
        w_t = \max(u_t, \epsilon) / \max(\mathrm{mean}(v_t), \epsilon), \qquad
        \tilde g_t = g_t / \sqrt{w_t}

    with :math:`M_K` the mean over the axes the slot keeps (``g2_column``). Then
    :math:`\xi\eta\, d_t \tilde g_t / \sqrt{\hat v_t}` is :math:`\xi\eta\, d_t g_t` over
    the square root of Adafactor's rank-1 estimate
    :math:`\hat v_t \hat u_t / \mathrm{mean}(\hat v_t)` (Shazeer & Stern 2018, arXiv
    1804.04235; the bias corrections :math:`1-\beta^t` cancel in :math:`w_t`). ``v`` must be
    :math:`v_t` already (:func:`slot_coefficients` has run)."""
    u.mul_(h.beta).add_(g2_column, alpha=1.0 - h.beta)
    w = u.clamp_min(h.epsilon).div_(v.mean().clamp_min(h.epsilon))
    return g * w.rsqrt_()


def apply_update(p: Tensors, g: Tensors, decay: Tensors, step: Tensors, m: Optional[Tensors],
                 h: Hyper, c: Optional[Tensors] = None) -> None:
    r""":math:`\theta_t = \theta_{t-1} + \Delta_t` with
    :math:`\Delta_t = -\text{decay}\,\theta_{t-1} - \text{sign}\cdot\text{step}\,g_t`, or, with
    momentum, :math:`m_t = \mu m_{t-1} + (1-\mu)\Delta_t` and :math:`\theta_t = \theta_{t-1} + m_t`.

    A 16-bit parameter is updated in float32 and stored once, as ``h.rounding`` says: rounded
    to nearest; for bfloat16, rounded stochastically (:func:`stochastic_round`); or
    "compensated" (Kahan summation, Kahan 1965): ``c``, a buffer of the parameter's dtype,
    holds what rounding lost, :math:`c = \theta - \mathrm{round}(\theta)`, and is added back
    before the next update, so that :math:`p + c` carries about twice the parameter's
    significant bits."""
    low = p.dtype in LOW_PRECISION
    theta = p.float() if low else p
    if c is not None:
        theta.add_(c)
    if m is None:
        theta.mul_(1.0 - decay).addcmul_(g, step, value=-h.sign)
    else:
        m.mul_(h.mu).addcmul_(theta, decay, value=h.mu - 1.0)
        m.addcmul_(g, step, value=h.sign * (h.mu - 1.0))
        theta.add_(m)
    if not low:
        return
    sr = h.rounding == "stochastic" and p.dtype == torch.bfloat16
    p.copy_(stochastic_round(theta) if sr else theta)
    if c is not None:
        c.copy_(theta.sub_(p.float()))


def stochastic_round(x: Tensors) -> Tensors:
    r"""Float32 ``x`` rounded to bfloat16 up or down at random, up with probability
    :math:`(x - \lfloor x \rfloor) / (\lceil x \rceil - \lfloor x \rfloor)` (the bfloat16
    neighbours of :math:`x`), so that :math:`E[\mathrm{round}(x)] = x`: an update smaller than
    half a unit in the last place survives in expectation instead of being lost (Gupta et al.
    2015, arXiv 1502.02551; Zamirai et al. 2020, arXiv 2010.06192).

    bfloat16 is the upper half of float32's bits: adding uniform random 16-bit integers to the
    lower half and truncating it carries into the upper half with exactly that probability
    (integer addition on the bits grows the magnitude, so negative numbers round alike). The
    random bits come from torch's default generator of ``x``'s device. ``x`` may be a tensor or
    a :class:`TensorList`."""
    if not isinstance(x, Tensor):
        return x.map(stochastic_round)
    bits = x.view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << 16)
    return bits.add(noise).bitwise_and_(-(1 << 16)).view(torch.float32).to(torch.bfloat16)


def full_slot_step(p: Tensor, grad: Tensor, v: Tensor, b: Tensor, m: Optional[Tensor], h: Hyper,
                   xi_eta: float, d_scale: float, bias_correction: float,
                   c: Optional[Tensor] = None) -> None:
    """The whole step of a tensor with full-size slots, from its raw gradient: there
    :math:`M(g^2) = g^2` needs no reduction, so phase 1 only checks its peak and this recomputes
    it, instead of keeping a parameter-sized ``g2`` between the phases."""
    g = clip(grad, h)
    decay, step = slot_coefficients(mean_square(g, (), v.dtype), v, b, h, xi_eta, d_scale,
                                    bias_correction)
    apply_update(p, g, decay, step, m, h, c)


class TensorList:
    """A list of tensors of one dtype and device that answers the few tensor methods of
    :func:`apply_update` and :func:`stochastic_round` with one ``torch._foreach_*`` call each,
    so that the batched update runs those functions themselves. ``1 - x`` is computed as
    ``(-x) + 1``, which rounds the same."""

    def __init__(self, tensors: list[Any]) -> None:
        self.tensors = tensors

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors[0].dtype

    def float(self) -> TensorList:
        return TensorList([x.float() for x in self.tensors])

    def map(self, fn: Any) -> TensorList:
        return TensorList([fn(x) for x in self.tensors])

    def __rsub__(self, scalar: float) -> TensorList:
        out = torch._foreach_neg(self.tensors)
        torch._foreach_add_(out, scalar)
        return TensorList(out)

    def mul_(self, other: Any) -> TensorList:
        torch._foreach_mul_(self.tensors, _unwrap(other))
        return self

    def add_(self, other: Any) -> TensorList:
        torch._foreach_add_(self.tensors, _unwrap(other))
        return self

    def sub_(self, other: TensorList) -> TensorList:
        torch._foreach_sub_(self.tensors, other.tensors)
        return self

    def addcmul_(self, a: TensorList, b: TensorList, value: float) -> TensorList:
        torch._foreach_addcmul_(self.tensors, a.tensors, b.tensors, value=value)
        return self

    def copy_(self, other: TensorList) -> TensorList:
        torch._foreach_copy_(self.tensors, other.tensors)
        return self


def _unwrap(x: Any) -> Any:
    return x.tensors if isinstance(x, TensorList) else x
