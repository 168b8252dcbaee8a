"""Amos (Tian & Parikh, 2022) as a :class:`torch.optim.Optimizer`.

The update is the authors' reference (``jestimator.amos``, see ``shared/paper.md`` §1.2-1.3),
line by line; the docstring of :class:`Amos` gives the equations. Two implementations share the
per-parameter bookkeeping: a readable single-tensor loop (:func:`_single_tensor_amos`) and a
multi-tensor one built on ``torch._foreach_*`` (:func:`_multi_tensor_amos`).

Every step runs in two phases so that bad input never corrupts anything:

1. *check* -- resolve ``eta`` and the slot shape of new parameters, clip, and reduce the squared
   gradient to the slot shape (``g2``); one host sync decides whether every ``g2`` is finite;
2. *update* -- only then create state, and change slots and parameters.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

from amosopt.rules import as_eta_fn, as_shape_fn, is_rule_table, reduced_axes
from amosopt.torch import fused as fused_lib

__all__ = ["Amos"]

Shape = tuple[int, ...]

#: Slots that stay float32 for low-precision parameters (``load_state_dict`` must not cast them).
_SLOT_KEYS = ("v", "b", "momentum_buffer")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_LARGE = 1 << 16  # elements; see _multi_tensor_amos
_FLAT_MAX = 1 << 14  # slot elements; see _multi_tensor_amos
_BLOCK = 1 << 17  # elements (512 KiB of float32: best on CPU); see _blocked_full_slot_update
_UNPICKLABLE = "<unpicklable spec: kept from the optimizer that loads this state>"


def _slot_dtype(p: Tensor) -> torch.dtype:
    """Slots are float32 for bf16/fp16 parameters (style.md decision 3), else the param dtype."""
    return torch.float32 if p.dtype in _LOW_PRECISION else p.dtype


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


try:
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # torch built without distributed
    _DTensor = None


def _is_dtensor(x: Any) -> bool:
    return _DTensor is not None and isinstance(x, _DTensor)


# --------------------------------------------------------------------------------------------
# Validation


def _check_hyperparameters(group: dict[str, Any], where: str) -> None:
    """Raises ValueError naming the first invalid hyper-parameter of ``group``."""

    def bad(arg: str, why: str) -> ValueError:
        return ValueError(f"Invalid {arg}{where}: {group[arg]!r}; {why}")

    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise bad("lr", "a tensor lr must have one element")
        lr = lr.item()
    if not _is_number(lr) or not (math.isfinite(lr) and lr >= 0):
        raise bad("lr", "the global learning rate xi must be a finite number >= 0")
    for arg in ("beta", "momentum"):
        if not _is_number(group[arg]) or not 0.0 <= group[arg] < 1.0:
            raise bad(arg, "it must be in [0, 1)")
    clip = group["clip_value"]
    if clip is not None and (not _is_number(clip) or not clip > 0):
        raise bad("clip_value", "pass None (no clipping) or a number > 0")
    for arg in ("c_coef", "d_coef", "extra_l2"):
        if not _is_number(group[arg]) or not (math.isfinite(group[arg]) and group[arg] >= 0):
            raise bad(arg, "it must be a finite number >= 0")
    eps = group["epsilon"]
    if not _is_number(eps) or not (math.isfinite(eps) and eps > 0):
        raise bad("epsilon", "the floor on v must be a finite number > 0 (default 2**-125)")
    for arg in ("foreach", "maximize", "fused"):
        if group[arg] not in ((None, True, False) if arg == "foreach" else (True, False)):
            raise bad(arg, "it must be a bool" + (" or None (auto)" if arg == "foreach" else ""))
    if group["fused"] and group["foreach"] is False:
        raise bad("foreach", "fused=True runs on the multi-tensor path: pass foreach=None or "
                  "True with it, or fused=False for the single-tensor loop")
    _check_specs(group, where)


def _check_specs(group: dict[str, Any], where: str) -> None:
    """Checks ``eta`` / ``slot_shape`` specs, and that name-based specs have names to use."""
    eta, slot_shape = group["eta"], group["slot_shape"]
    if _is_number(eta) and not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"Invalid eta{where}: {eta!r}; eta, the expected magnitude of a "
                         "parameter's entries, must be a finite number > 0")
    try:
        as_eta_fn(eta)  # numbers are checked here; tables compile their regexes
        as_shape_fn(slot_shape)
    except ValueError as error:
        raise ValueError(f"{error}{where}") from None
    named = [arg for arg, spec in (("eta", eta), ("slot_shape", slot_shape))
             if spec is not None and not _is_number(spec)]
    if named and "param_names" not in group:
        kind = "a rule table" if is_rule_table(group[named[0]]) else "a callable"
        raise ValueError(
            f"{named[0]} is {kind}{where}, which needs parameter names, but the parameters were "
            "given without names. Pass model.named_parameters(), (name, tensor) pairs, or a "
            "param group dict {'params': [(name, tensor), ...]}; or pass a plain float eta."
        )


def _group_where(index: int) -> str:
    return f" (param group {index})"


# --------------------------------------------------------------------------------------------
# The math, one tensor at a time


def _mean_square(g: Tensor, slot_shape: Shape, dtype: torch.dtype) -> Tensor:
    r"""M(g^2): g^2 averaged over the axes the slot shares, kept as size-1 axes.

    Reduced slots use :math:`\|g\|_2^2 / n` over the reduced axes, which needs no full-size
    temporary (a scalar slot ``()`` reduces every axis to a 0-d tensor).
    """
    norm, n = _reduced_norm(g, slot_shape, dtype)
    return norm.square() if n == 0 else norm.square().div_(n)


def _reduced_norm(g: Tensor, slot_shape: Shape, dtype: torch.dtype) -> tuple[Tensor, int]:
    """``(||g||_2 over the reduced axes, n)`` so that M(g^2) = norm^2 / n; for a full-size slot
    ``(|g|, 0)``, meaning M(g^2) = g^2 with nothing reduced."""
    shape = tuple(g.shape)
    axes = reduced_axes(shape, slot_shape)
    if not axes:  # full-size slot
        return (g if g.dtype == dtype else g.to(dtype)), 0
    n = math.prod(shape[a] for a in axes)
    if slot_shape == ():
        norm = torch.linalg.vector_norm(g, dtype=dtype)
    else:
        norm = torch.linalg.vector_norm(g, dim=axes, keepdim=True, dtype=dtype)
    if _is_dtensor(norm):  # a reduction over a sharded dim is Partial: make it a plain value
        from torch.distributed.tensor import Replicate
        from torch.distributed.tensor.placement_types import Partial

        placements = [Replicate() if isinstance(pl, Partial) else pl for pl in norm.placements]
        norm = norm.redistribute(norm.device_mesh, placements)
    return norm, n


def _mean_squares(grads: list[Tensor], slot_shapes: list[Shape], dtypes: list[torch.dtype]
                  ) -> list[Tensor]:
    """:func:`_mean_square` of many tensors, with the squaring and the division by n done by
    two ``_foreach`` calls (DTensors, which need their own placements, go one by one)."""
    if not grads:
        return []
    if any(_is_dtensor(g) for g in grads):
        return [_mean_square(g, s, d) for g, s, d in zip(grads, slot_shapes, dtypes)]
    norms, ns = zip(*(_reduced_norm(g, s, d) for g, s, d in zip(grads, slot_shapes, dtypes)))
    g2 = torch._foreach_mul(norms, norms)  # |g|^2; norm * norm == norm.square() exactly
    reduced = [k for k, n in enumerate(ns) if n > 0]
    if reduced:
        torch._foreach_div_([g2[k] for k in reduced], [float(ns[k]) for k in reduced])
    return list(g2)


#: (device, dtype) -> a flat buffer that clipped large gradients are written into, one step long
Workspace = dict[tuple[torch.device, torch.dtype], Tensor]


def _reserve(workspace: Workspace, grads: Iterable[Tensor]) -> None:
    """Grows ``workspace`` to hold the largest clippable gradient of each device and dtype."""
    for g in grads:
        if g.numel() >= _LARGE and not _is_dtensor(g):
            key = (g.device, g.dtype)
            if key not in workspace or workspace[key].numel() < g.numel():
                workspace[key] = torch.empty(g.numel(), device=g.device, dtype=g.dtype)


def _clip(grad: Tensor, clip: Optional[float], workspace: Optional[Workspace] = None) -> Tensor:
    """Element-wise clipping to [-clip, clip], as ``optax.clip`` in the reference.

    The clipped gradient is a temporary that is made twice (for M(g^2), then for the update)
    rather than kept: holding one per parameter between the phases doubles gradient memory.
    A large one is written into the step's ``workspace`` (see :func:`_reserve`) instead of a
    fresh tensor, which saves an allocation, and on CPU fresh pages, per parameter and phase;
    it is then valid only until the next call with the same workspace, so callers use it at
    once. Small and sharded (DTensor) gradients get fresh tensors."""
    if clip is None:
        return grad
    buffer = None if workspace is None else workspace.get((grad.device, grad.dtype))
    if buffer is None or grad.numel() < _LARGE or _is_dtensor(grad):
        return grad.clamp(-clip, clip)
    return torch.clamp(grad, -clip, clip, out=buffer[: grad.numel()].view(grad.shape))


def _clipped_mean_square(p: Tensor, clip: float, slot_shape: Shape, workspace: Workspace,
                         fused: bool) -> Tensor:
    """:func:`_mean_square` of ``p``'s clipped gradient, by one fused kernel where
    :mod:`amosopt.torch.fused` takes it (see :func:`_fused_matrix`)."""
    matrix = _fused_matrix(p, slot_shape, clip=clip) if fused else None
    if matrix is not None:
        return fused_lib.clipped_mean_square(p.grad, clip, matrix, slot_shape, _slot_dtype(p))
    return _mean_square(_clip(p.grad, clip, workspace), slot_shape, _slot_dtype(p))


def _fused_matrix(p: Tensor, slot_shape: Shape, m: Optional[Tensor] = None, *,
                  clip: Optional[float], momentum: float = 0.0
                  ) -> Optional[tuple[tuple[int, int], int]]:
    """The matrix layout of a parameter for the fused kernels, or ``None`` (eager): too small
    to gain, or a layout or memory format that they do not take."""
    if (not fused_lib.worth_fusing(p.numel(), clip, momentum) or _is_dtensor(p)
            or not fused_lib.fusable(p, m)):
        return None
    return fused_lib.matrix_shape(tuple(p.shape), tuple(slot_shape))


def _peak_square(grad: Tensor, clip: Optional[float], dtype: torch.dtype) -> Tensor:
    """``max clip(g)^2`` (0-d): finite exactly when every entry of ``clip(g)^2`` is (NaN
    propagates; an inf gradient is clipped, or makes the peak inf)."""
    low, high = torch.aminmax(grad)  # vectorised; vector_norm(ord=inf) measured 20x slower
    peak = torch.maximum(-low, high).to(dtype)
    if clip is not None:
        peak = peak.clamp_max(clip)
    return peak * peak


def _slot_coefficients(
    g2: Tensor, v: Tensor, b: Tensor, *, xi: float, init_lr: float | Tensor,
    d_scale: float | Tensor, bias_correction: float | Tensor, beta: float, c_coef: float,
    extra_l2: float, epsilon: float,
) -> tuple[Tensor, Tensor]:
    r"""Updates ``v`` and ``b`` in place and returns the slot-shaped ``(decay, step)`` with
    :math:`\theta_t = \theta_{t-1} - \text{decay}\,\theta_{t-1} - \text{step}\, g_t`, i.e.
    ``decay`` :math:`= d_t(\tfrac12\gamma_t + \lambda)` and
    ``step`` :math:`= d_t\xi\eta/\sqrt{\hat v_t}`.

    Per parameter: ``init_lr`` :math:`= \xi\eta`, ``d_scale`` :math:`= d\sqrt{\xi\eta}` and
    ``bias_correction`` :math:`= 1 - \beta^t`; floats, or per-element tensors when several
    parameters' slots are concatenated into one vector (:func:`_flat_slot_coefficients`).
    """
    v.mul_(beta).add_(g2, alpha=1.0 - beta)  # v_t = beta v + (1 - beta) M(g^2)
    rcpl_v_hat = v.clamp_min(epsilon).reciprocal_().mul_(bias_correction)  # 1 / v_hat_t
    c_t = b.mul(c_coef * math.sqrt(xi)).add_(1.0).rsqrt_()  # (1 + c sqrt(xi) b_{t-1})^-1/2
    gamma = c_t.mul_(xi * xi).mul_(rcpl_v_hat).mul_(g2)  # c_t xi^2 M(g^2) / v_hat_t
    d_t = b.mul(d_scale).add_(1.0).reciprocal_()  # (1 + d sqrt(xi eta) b_{t-1})^-1
    b.addcmul_(gamma, b + 1.0)  # b_t = b_{t-1} + gamma_t (1 + b_{t-1})
    decay = gamma.mul(0.5).add_(extra_l2).mul_(d_t)
    step = rcpl_v_hat.sqrt_().mul_(d_t).mul_(init_lr)
    return decay, step


def _apply_update(
    p: Tensor, g: Tensor, decay: Tensor, step: Tensor, m: Optional[Tensor], mu: float,
    sign: float,
) -> None:
    r"""``theta -= decay * theta + sign * step * g`` (``sign`` is -1 when maximizing), through
    the EMA :math:`m_t = \mu m_{t-1} + (1-\mu)\Delta_t` when ``m`` is given."""
    low = p.dtype in _LOW_PRECISION
    theta = p.float() if low else p
    if m is None:
        theta.mul_(1.0 - decay).addcmul_(g, step, value=-sign)
    else:
        m.mul_(mu).addcmul_(theta, decay, value=mu - 1.0)
        m.addcmul_(g, step, value=sign * (mu - 1.0))
        theta.add_(m)
    if low:
        p.copy_(theta)


# --------------------------------------------------------------------------------------------
# The optimizer


class Amos(Optimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor,
        *,
        eta: float | Any,
        slot_shape: Any = None,
        beta: float = 0.999,
        momentum: float = 0.0,
        clip_value: Optional[float] = None,
        extra_l2: float = 0.0,
        c_coef: float = 0.25,
        d_coef: float = 0.25,
        epsilon: float = 2.0**-125,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        fused: bool = False,
    ):
        defaults = dict(
            lr=lr, eta=eta, slot_shape=slot_shape, beta=beta, momentum=momentum,
            clip_value=clip_value, extra_l2=extra_l2, c_coef=c_coef, d_coef=d_coef,
            epsilon=epsilon, foreach=foreach, maximize=maximize, fused=fused,
        )
        probe = dict(defaults, param_names=[])  # names are checked per group, below
        _check_hyperparameters(probe, "")
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # options added after a release get defaults here
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("extra_l2", 0.0)
            group.setdefault("c_coef", 0.25)
            group.setdefault("d_coef", 0.25)
            group.setdefault("epsilon", 2.0**-125)
            group.setdefault("fused", False)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group; its overrides (``eta`` and ``slot_shape`` included) are validated."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_hyperparameters(group, _group_where(len(self.param_groups) - 1))
            if group["fused"]:  # fails here, with the reason, where torch.compile cannot work
                for device_type in sorted({p.device.type for p in group["params"]}):
                    fused_lib.check_available(device_type)
        except (ValueError, RuntimeError):
            self.param_groups.pop()
            raise

    # ---- names, eta, slot shapes ------------------------------------------------------------

    @staticmethod
    def _param_name(group: dict[str, Any], group_index: int, i: int) -> str:
        names = group.get("param_names")
        if names is not None:
            return str(names[i])
        return f"params[{i}] of param group {group_index}"

    def _resolve(self, group: dict[str, Any], group_index: int, i: int, p: Tensor
                 ) -> tuple[float, Shape]:
        """``(eta, slot_shape)`` of a parameter: from its state, else from the group's specs."""
        state = self.state.get(p)
        if state:
            return state["eta"], tuple(state["slot_shape"])
        name = self._param_name(group, group_index, i)
        shape = tuple(p.shape)
        eta = as_eta_fn(group["eta"])(name, shape)
        shape_fn = as_shape_fn(group["slot_shape"])
        slot_shape = shape if shape_fn is None else shape_fn(name, shape)
        return eta, slot_shape

    # ---- step --------------------------------------------------------------------------------

    def _check_group(self, group: dict[str, Any], group_index: int, workspace: Workspace
                     ) -> list[dict[str, Any]]:
        """Phase 1 for one group: one record per parameter with a gradient; changes nothing
        (``workspace`` is the step's scratch space for clipped gradients, see :func:`_clip`)."""
        records = []
        clip = group["clip_value"]
        for i, p in enumerate(group["params"]):
            if p.grad is None or p.numel() == 0:
                continue
            grad = p.grad
            if grad.is_sparse:
                raise RuntimeError(
                    f"Amos does not support sparse gradients (parameter "
                    f"{self._param_name(group, group_index, i)!r}); use a dense embedding "
                    "(sparse=False)"
                )
            if torch.is_complex(p) or torch.is_complex(grad):
                raise RuntimeError(
                    f"Amos does not support complex parameters or gradients (parameter "
                    f"{self._param_name(group, group_index, i)!r}); optimise torch.view_as_real "
                    "of the parameter instead"
                )
            eta, slot_shape = self._resolve(group, group_index, i, p)
            records.append(dict(p=p, eta=eta, slot_shape=slot_shape, index=i, clip=clip,
                                workspace=workspace))
        # A full-size-slot kernel computes M(g^2) = clip(g)^2 itself: here only its peak, for
        # the finiteness check, so that no parameter-sized g2 is written and read back.
        in_kernel = [r for r in records if self._takes_full_slot_kernel(group, r)]
        for r in in_kernel:
            r["g2"], r["check"] = None, _peak_square(r["p"].grad, clip, _slot_dtype(r["p"]))
        rest = [r for r in records if "check" not in r]
        if clip is None:
            g2 = _mean_squares([r["p"].grad for r in rest], [r["slot_shape"] for r in rest],
                               [_slot_dtype(r["p"]) for r in rest])
        else:  # one clipped temporary alive at a time (see _clip)
            _reserve(workspace, (r["p"].grad for r in rest))
            g2 = [_clipped_mean_square(r["p"], clip, r["slot_shape"], workspace, group["fused"])
                  for r in rest]
        for r, x in zip(rest, g2):
            r["g2"] = r["check"] = x
        return records

    def _takes_full_slot_kernel(self, group: dict[str, Any], r: dict[str, Any]) -> bool:
        """Whether a parameter with full-size slots is updated by one fused kernel (see
        :func:`amosopt.torch.fused.full_slot_update`): everything contiguous, and as large as
        the eager code would update alone (smaller ones share its batched operations). Its
        some twenty eager passes make the kernel worth its call from there on."""
        p = r["p"]
        if (not group["fused"] or group["foreach"] is False  # the loop computes M(g^2) itself
                or tuple(r["slot_shape"]) != tuple(p.shape) or _is_dtensor(p)
                or p.numel() < _LARGE):
            return False
        state = self.state.get(p, {})
        m = state.get("momentum_buffer") if group["momentum"] > 0 else None
        slots = [state[key] for key in ("v", "b") if key in state]
        return fused_lib.fusable(p, m) and all(x.is_contiguous() for x in slots)

    def _raise_if_not_finite(self, checked: list[tuple[dict, int, list[dict]]]) -> None:
        """One host sync per device: are all M(g^2) finite (``r["check"]``: M(g^2), or the
        peak of clip(g)^2 where a kernel computes M(g^2))? If not, name the first culprit."""
        by_device: dict[torch.device, list[Tensor]] = {}
        peaks_by_device: dict[torch.device, list[Tensor]] = {}
        for _, _, records in checked:
            for r in records:
                if _is_dtensor(r["check"]):  # full_tensor is a collective: all ranks decide alike
                    peak = r["check"].amax().full_tensor()
                    peaks_by_device.setdefault(peak.device, []).append(peak)
                else:
                    by_device.setdefault(r["check"].device, []).append(r["check"])
        for device, g2 in by_device.items():
            # max propagates NaN and keeps inf; dynamo cannot trace _foreach_max
            peaks = ([x.amax() for x in g2] if torch.compiler.is_compiling()
                     else torch._foreach_max(g2))
            peaks_by_device.setdefault(device, []).extend(peaks)
        # stack promotes mixed dtypes; one host sync per device
        if all(bool(torch.isfinite(torch.stack(p)).all()) for p in peaks_by_device.values()):
            return
        for group, group_index, records in checked:
            for r in records:
                peak = r["check"].amax()
                if _is_dtensor(peak):
                    peak = peak.full_tensor()
                if not bool(torch.isfinite(peak)):
                    name = self._param_name(group, group_index, r["index"])
                    raise FloatingPointError(
                        f"Amos: non-finite gradient (inf or NaN, or its square overflows) for "
                        f"parameter {name!r} with shape {tuple(r['p'].shape)}; no parameter or "
                        "optimizer state was changed. Check the loss, lower lr, or set "
                        "clip_value."
                    )

    def _init_state(self, r: dict[str, Any], momentum: float) -> dict[str, Any]:
        state = self.state[r["p"]]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["eta"] = float(r["eta"])
            state["slot_shape"] = tuple(r["slot_shape"])
            # slot shape, slot dtype, g2's placement (a full-size slot whose M(g^2) a fused
            # kernel computes has none: the parameter's shape, contiguous for the kernel)
            like = r["g2"] if r["g2"] is not None else torch.empty_like(
                r["p"], dtype=_slot_dtype(r["p"]), memory_format=torch.contiguous_format)
            state["v"] = torch.zeros_like(like)
            state["b"] = torch.zeros_like(like)
        if momentum > 0 and "momentum_buffer" not in state:
            p = r["p"]
            state["momentum_buffer"] = torch.zeros_like(
                p, dtype=_slot_dtype(p), memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Performs one Amos step.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Raises:
            FloatingPointError: a gradient is not finite; nothing has been changed.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        workspace: Workspace = {}
        checked = [(group, gi, self._check_group(group, gi, workspace))
                   for gi, group in enumerate(self.param_groups)]
        if not any(records for _, _, records in checked):
            return loss
        self._raise_if_not_finite(checked)
        for group, _, records in checked:
            if records:
                self._update_group(group, records)
        return loss

    def _update_group(self, group: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """Phase 2: state init, slots and parameters of one group."""
        states = [self._init_state(r, group["momentum"]) for r in records]
        torch._foreach_add_([state["step"] for state in states], 1.0)
        xi = group["lr"].item() if isinstance(group["lr"], Tensor) else float(group["lr"])
        kwargs = dict(
            xi=xi, beta=group["beta"], momentum=group["momentum"], c_coef=group["c_coef"],
            d_coef=group["d_coef"], extra_l2=group["extra_l2"], epsilon=group["epsilon"],
            maximize=group["maximize"], fused=group["fused"],
        )
        # foreach=None picks the multi-tensor path everywhere: fewer launches on CUDA, and on
        # CPU it measured as fast as the loop for a few large tensors (it updates those one by
        # one as well) and faster for many small ones.
        fn = _single_tensor_amos if group["foreach"] is False else _multi_tensor_amos
        fn(records, states, **kwargs)

    # ---- state dict ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """As torch's, with unpicklable ``eta`` / ``slot_shape`` specs (lambdas) replaced by a
        marker; :meth:`load_state_dict` then keeps the loading optimizer's own specs."""
        import pickle

        state_dict = super().state_dict()
        for group in state_dict["param_groups"]:
            for key in ("eta", "slot_shape"):
                try:
                    pickle.dumps(group[key])
                except Exception:  # lambdas, local functions, ...
                    group[key] = _UNPICKLABLE
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but the slots keep float32 for low-precision parameters (torch would cast
        them to the parameter's dtype) and unpicklable specs are kept from this optimizer."""
        specs = [(g["eta"], g["slot_shape"]) for g in self.param_groups]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        saved_slots = {i: {k: state_dict["state"][i][k] for k in _SLOT_KEYS
                           if k in state_dict["state"].get(i, {})} for i in saved_ids}
        super().load_state_dict(state_dict)
        for group, (eta, slot_shape) in zip(self.param_groups, specs):
            if isinstance(group["eta"], str) and group["eta"] == _UNPICKLABLE:
                group["eta"] = eta
            if isinstance(group["slot_shape"], str) and group["slot_shape"] == _UNPICKLABLE:
                group["slot_shape"] = slot_shape
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, params):
            state = self.state.get(p, {})
            for key, saved in saved_slots[i].items():
                if isinstance(saved, Tensor) and state[key].dtype != _slot_dtype(p):
                    state[key] = saved.to(device=state[key].device, dtype=_slot_dtype(p))


# --------------------------------------------------------------------------------------------
# Implementations


def _single_tensor_amos(
    records: list[dict[str, Any]], states: list[dict[str, Any]], *, xi: float, beta: float,
    momentum: float, c_coef: float, d_coef: float, extra_l2: float, epsilon: float,
    maximize: bool, fused: bool = False,
) -> None:
    """The readable reference path: one parameter at a time (``fused`` is not for it)."""
    sign = -1.0 if maximize else 1.0
    for r, state in zip(records, states):
        init_lr = xi * state["eta"]
        decay, step = _slot_coefficients(
            r["g2"], state["v"], state["b"], xi=xi, init_lr=init_lr,
            d_scale=d_coef * math.sqrt(init_lr), bias_correction=1.0 - beta ** int(state["step"]),
            beta=beta, c_coef=c_coef, extra_l2=extra_l2, epsilon=epsilon,
        )
        m = state["momentum_buffer"] if momentum > 0 else None
        g = _clip(r["p"].grad, r["clip"], r["workspace"])  # clipped again (see _clip)
        _apply_update(r["p"], g, decay, step, m, momentum, sign)


def _flat_slot_coefficients(
    g2: list[Tensor], v: list[Tensor], b: list[Tensor], *, init_lr: list[float],
    d_scale: list[float], bias_correction: list[float], **kwargs: Any,
) -> tuple[list[Tensor], list[Tensor]]:
    """:func:`_slot_coefficients` of many small slots at once: concatenated, the per-parameter
    scalars repeated per element, then ``v`` and ``b`` copied back. Elementwise the same
    operations on the same values, so the result equals the loop's bit for bit."""
    sizes = [x.numel() for x in v]
    v_flat, b_flat = torch.cat([x.reshape(-1) for x in v]), torch.cat([x.reshape(-1) for x in b])
    counts = torch.tensor(sizes, device=v_flat.device)

    def per_element(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=v_flat.dtype, device=v_flat.device).repeat_interleave(
            counts, output_size=v_flat.numel())

    decay, step = _slot_coefficients(
        torch.cat([x.reshape(-1) for x in g2]), v_flat, b_flat, init_lr=per_element(init_lr),
        d_scale=per_element(d_scale), bias_correction=per_element(bias_correction), **kwargs)
    torch._foreach_copy_(v, [x.view(y.shape) for x, y in zip(v_flat.split(sizes), v)])
    torch._foreach_copy_(b, [x.view(y.shape) for x, y in zip(b_flat.split(sizes), b)])
    return ([x.view(y.shape) for x, y in zip(decay.split(sizes), v)],
            [x.view(y.shape) for x, y in zip(step.split(sizes), v)])


def _foreach_slot_coefficients(
    g2: list[Tensor], v: list[Tensor], b: list[Tensor], *, xi: float, init_lr: list[float],
    d_scale: list[float], bias_correction: list[float], beta: float, c_coef: float,
    extra_l2: float, epsilon: float,
) -> tuple[list[Tensor], list[Tensor]]:
    """:func:`_slot_coefficients` on lists, op for op with ``torch._foreach_*``."""
    torch._foreach_mul_(v, beta)
    torch._foreach_add_(v, g2, alpha=1.0 - beta)  # v_t = beta v + (1 - beta) M(g^2)
    rcpl_v_hat = torch._foreach_clamp_min(v, epsilon)
    torch._foreach_reciprocal_(rcpl_v_hat)
    torch._foreach_mul_(rcpl_v_hat, bias_correction)  # 1 / v_hat_t
    gamma = torch._foreach_mul(b, c_coef * math.sqrt(xi))
    torch._foreach_add_(gamma, 1.0)
    torch._foreach_rsqrt_(gamma)  # c_t, from b_{t-1}
    torch._foreach_mul_(gamma, xi * xi)
    torch._foreach_mul_(gamma, rcpl_v_hat)
    torch._foreach_mul_(gamma, g2)  # gamma_t = c_t xi^2 M(g^2) / v_hat_t
    d_t = torch._foreach_mul(b, d_scale)
    torch._foreach_add_(d_t, 1.0)
    torch._foreach_reciprocal_(d_t)  # d_t, from b_{t-1}
    torch._foreach_addcmul_(b, gamma, torch._foreach_add(b, 1.0))  # b_t
    decay = torch._foreach_mul(gamma, 0.5)
    torch._foreach_add_(decay, extra_l2)
    torch._foreach_mul_(decay, d_t)  # d_t (gamma_t / 2 + lambda)
    torch._foreach_sqrt_(rcpl_v_hat)
    step = rcpl_v_hat
    torch._foreach_mul_(step, d_t)
    torch._foreach_mul_(step, init_lr)  # d_t xi eta / sqrt(v_hat_t)
    return decay, step


def _multi_tensor_amos(
    records: list[dict[str, Any]], states: list[dict[str, Any]], *, xi: float, beta: float,
    momentum: float, c_coef: float, d_coef: float, extra_l2: float, epsilon: float,
    maximize: bool, fused: bool = False,
) -> None:
    """The same update as :func:`_single_tensor_amos`, op for op, on lists (``torch._foreach_*``),
    one list per (device, dtype). Slot-shaped factors broadcast against the parameters. With
    ``fused``, large parameters that :mod:`amosopt.torch.fused` takes get one kernel each."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for k, r in enumerate(records):
        buckets.setdefault((r["p"].device, r["p"].dtype), []).append(k)
    sign = -1.0 if maximize else 1.0
    for ks in buckets.values():
        params = [records[k]["p"] for k in ks]
        g2 = [records[k]["g2"] for k in ks]
        v = [states[k]["v"] for k in ks]
        b = [states[k]["b"] for k in ks]
        init_lr = [xi * states[k]["eta"] for k in ks]
        scalars = dict(init_lr=init_lr, d_scale=[d_coef * math.sqrt(lr) for lr in init_lr],
                       bias_correction=[1.0 - beta ** int(states[k]["step"]) for k in ks])
        # Large full-size slots block by block, each with its parameter; small slots (factored
        # or scalar) as one concatenated vector: one kernel per op instead of one per tensor;
        # other large or sharded slots as lists.
        # Those that phase 1 gave to a fused kernel (``g2`` is None) get it instead.
        in_kernel = {j for j in range(len(v)) if g2[j] is None}
        blocked = {j for j in range(len(v))
                   if j not in in_kernel and _blockable(params[j], g2[j], v[j], b[j])}
        for j in sorted(in_kernel | blocked):
            m = states[ks[j]]["momentum_buffer"] if momentum > 0 else None
            if j in in_kernel:
                update, args = fused_lib.full_slot_update, (params[j], v[j], b[j], m)
            else:
                update, args = _blocked_full_slot_update, (params[j], g2[j], v[j], b[j], m)
            update(*args, clip=records[ks[j]]["clip"], mu=momentum, sign=sign, xi=xi,
                   beta=beta, c_coef=c_coef, extra_l2=extra_l2, epsilon=epsilon,
                   **{key: values[j] for key, values in scalars.items()})
        done = in_kernel | blocked
        flat = [j for j, x in enumerate(v)
                if x.numel() <= _FLAT_MAX and not _is_dtensor(x) and j not in done]
        listed = sorted(set(range(len(v))) - set(flat) - done)
        decay, step = [None] * len(v), [None] * len(v)
        for fn, js in ((_flat_slot_coefficients, flat), (_foreach_slot_coefficients, listed)):
            if js:
                out = fn([g2[j] for j in js], [v[j] for j in js], [b[j] for j in js],
                         **{key: [values[j] for j in js] for key, values in scalars.items()},
                         xi=xi, beta=beta, c_coef=c_coef, extra_l2=extra_l2, epsilon=epsilon)
                for j, dj, sj in zip(js, *out):
                    decay[j], step[j] = dj, sj

        # Large tensors one at a time: their few full-size ops then reuse the cache (measured
        # faster on CPU than op-by-op over all tensors); small ones together, to save launches.
        small = []
        for j, p in enumerate(params):
            if j in done:
                continue
            m = states[ks[j]]["momentum_buffer"] if momentum > 0 else None
            clip = records[ks[j]]["clip"]
            matrix = (_fused_matrix(p, states[ks[j]]["slot_shape"], m, clip=clip,
                                    momentum=momentum) if fused else None)
            if matrix is not None:
                fused_lib.update(p, decay[j], step[j], m, matrix=matrix, clip=clip, mu=momentum,
                                 sign=sign)
            elif p.numel() >= _LARGE:
                g = _clip(p.grad, clip, records[ks[j]]["workspace"])
                _apply_update(p, g, decay[j], step[j], m, momentum, sign)
            else:
                small.append((p, _clip(p.grad, clip), decay[j], step[j], m))
        if small:
            _foreach_apply_update(*map(list, zip(*small)), mu=momentum, sign=sign)


def _blockable(p: Tensor, g2: Tensor, v: Tensor, b: Tensor) -> bool:
    """A large parameter with full-size slots, every tensor contiguous and unsharded."""
    tensors = (p, p.grad, g2, v, b)
    return (p.numel() >= _LARGE and v.shape == p.shape and not _is_dtensor(p)
            and all(x.is_contiguous() for x in tensors))


def _blocked_full_slot_update(
    p: Tensor, g2: Tensor, v: Tensor, b: Tensor, m: Optional[Tensor], *, clip: Optional[float],
    mu: float, sign: float, **coefficients: Any,
) -> None:
    """Slots and parameter of a large tensor with full-size slots, block by block.

    With full-size slots every one of the ~20 element-wise operations of
    :func:`_slot_coefficients` and :func:`_apply_update` is a pass over parameter-sized memory;
    on blocks of :data:`_BLOCK` elements they run on data that stays in the cache. The
    operations are the loop's, element for element, so the result is bit for bit the same."""
    views = [x.view(-1) for x in (p, p.grad, g2, v, b)]
    m_flat = None if m is None or not m.is_contiguous() else m.view(-1)
    if m is not None and m_flat is None:  # a non-contiguous buffer: update it as a whole
        decay, step = _slot_coefficients(g2, v, b, **coefficients)
        _apply_update(p, _clip(p.grad, clip), decay, step, m, mu, sign)
        return
    for start in range(0, p.numel(), _BLOCK):
        block = slice(start, start + _BLOCK)
        theta, grad, g2_block, v_block, b_block = (x[block] for x in views)
        decay, step = _slot_coefficients(g2_block, v_block, b_block, **coefficients)
        m_block = None if m_flat is None else m_flat[block]
        _apply_update(theta, _clip(grad, clip), decay, step, m_block, mu, sign)


def _foreach_apply_update(
    params: list[Tensor], g: list[Tensor], decay: list[Tensor], step: list[Tensor],
    m: list[Optional[Tensor]], *, mu: float, sign: float,
) -> None:
    """:func:`_apply_update` on lists of one dtype, op for op with ``torch._foreach_*``."""
    low = params[0].dtype in _LOW_PRECISION
    theta = [p.float() for p in params] if low else params
    if mu > 0:
        torch._foreach_mul_(m, mu)
        torch._foreach_addcmul_(m, theta, decay, value=mu - 1.0)
        torch._foreach_addcmul_(m, g, step, value=sign * (mu - 1.0))
        torch._foreach_add_(theta, m)
    else:
        torch._foreach_neg_(decay)
        torch._foreach_add_(decay, 1.0)  # 1 - decay
        torch._foreach_mul_(theta, decay)
        torch._foreach_addcmul_(theta, g, step, value=-sign)
    if low:
        torch._foreach_copy_(params, theta)


Amos.__doc__ = r"""Implements Amos (Tian & Parikh, 2022), exactly as the authors' reference code.

Amos is Adam with adaptive learning-rate decay and weight decay, driven by a per-variable
*model-oriented scale* :math:`\eta` (the expected magnitude of the variable's entries).
Let :math:`\xi` be the group's ``lr`` (read at every step, so torch LR schedulers give
:math:`\xi_t`), :math:`\eta` the parameter's ``eta``, :math:`\beta` ``beta``, :math:`\lambda`
``extra_l2``, :math:`c, d` ``c_coef, d_coef``, :math:`\epsilon` ``epsilon``, :math:`\mu`
``momentum`` and :math:`M(\cdot)` the mean over the axes that the slot shape (``slot_shape``)
reduces. :math:`v` and :math:`b` have the slot shape; so do :math:`\gamma_t, c_t, d_t`.

.. math::
    \begin{aligned}
    & g_t = \mathrm{clip}(\nabla_\theta f_t(\theta_{t-1}), -\text{clip\_value}, \text{clip\_value})
        \quad (\text{element-wise, optional}) \\
    & v_t = \beta v_{t-1} + (1-\beta) M(g_t^2), \qquad
      \hat v_t = \max(v_t, \epsilon) / (1-\beta^t) \\
    & c_t = (1 + c\sqrt{\xi_t}\, b_{t-1})^{-1/2}, \qquad
      d_t = (1 + d\sqrt{\xi_t\eta}\, b_{t-1})^{-1} \\
    & \gamma_t = c_t\, \xi_t^2\, M(g_t^2) / \hat v_t \\
    & \Delta_t = -d_t \big( \xi_t \eta\, g_t / \sqrt{\hat v_t}
        + (\tfrac12\gamma_t + \lambda)\, \theta_{t-1} \big) \\
    & b_t = b_{t-1} + \gamma_t (1 + b_{t-1}) \\
    & \text{if } \mu > 0:\ m_t = \mu m_{t-1} + (1-\mu)\Delta_t,\ \Delta_t \leftarrow m_t \\
    & \theta_t = \theta_{t-1} + \Delta_t
    \end{aligned}

with :math:`v_0 = b_0 = m_0 = 0` and the 1-based step :math:`t`.

Args:
    params: tensors, ``(name, tensor)`` pairs such as ``model.named_parameters()``, or param
        group dicts. A group may override any argument below, ``eta`` and ``slot_shape`` too.
    lr: :math:`\xi`, the global learning rate, about :math:`1/\sqrt{N}` for :math:`N`
        independent batches in the data.
    eta: :math:`\eta`, a positive float, a rule table (``{regex: value}``, first match of the
        parameter name wins, see :mod:`amosopt.rules`) or a callable ``(name, shape) -> float``.
        Tables and callables need parameter names (``model.named_parameters()``).
    slot_shape: shape of the slots :math:`v, b`: ``None`` (as large as the parameter), a rule
        table or a callable ``(name, shape) -> tuple``; the result is ``()`` or has the
        parameter's rank with each axis equal to the parameter's or 1.
    beta: :math:`\beta`, decay of the running mean of squared gradients (default 0.999).
    momentum: :math:`\mu`, EMA of the update; 0 turns it off (default 0).
    clip_value: element-wise gradient clipping threshold, or ``None`` (default). A clipped
        ``inf`` becomes ``clip_value``, as in the reference; ``NaN`` always raises.
    extra_l2: :math:`\lambda`, the reference's experimental constant L2 term (default 0).
    c_coef, d_coef: :math:`c, d`, coefficients of the decay factors (default 0.25).
    epsilon: :math:`\epsilon`, a floor on :math:`v` (default :math:`2^{-125}`).
    foreach: use the multi-tensor implementation (``torch._foreach_*``); ``None`` picks it,
        as it measured faster than the single-tensor loop on CPU too; ``False`` runs the loop.
    maximize: maximise the objective instead of minimising it.
    fused: update each large parameter (factored or scalar slots: from 2**19 entries with
        clipping or momentum, else 2**20; full-size slots: from 2**16) with one
        kernel generated by ``torch.compile`` instead of two to five eager passes (some twenty
        with full-size slots), and compute its clipped mean square with one more (default
        ``False``). Up to twice as fast on factored tensors, up to five times with full-size
        slots; equal to the eager result up to rounding, not bit for bit. The first step
        compiles (seconds); needs a C++ compiler on CPU, Triton on CUDA, checked at
        construction. See :mod:`amosopt.torch.fused`.

Per-parameter state: ``step`` (0-d float32 CPU tensor), ``eta`` (float), ``slot_shape``
(tuple), ``v`` and ``b`` (slot shape), ``momentum_buffer`` (if :math:`\mu > 0`). Slots are
float32 for bfloat16/float16 parameters, also after :meth:`load_state_dict`.

A non-finite gradient raises :class:`FloatingPointError` naming the parameter, before any
parameter or state changes.

Example:
    >>> import torch
    >>> from amosopt.torch import Amos
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = Amos(model.named_parameters(), lr=0.01,
    ...            eta={r".*weight": "sqrt(1 / SHAPE[1])", r".*bias": 0.5},
    ...            slot_shape={r".*weight": "(SHAPE[0], 1)", r".*": "()"})
    >>> loss = model(torch.randn(8, 4)).square().mean()
    >>> loss.backward()
    >>> opt.step()

Reference:
    Ran Tian and Ankur P. Parikh, `Amos: An Adam-style Optimizer with Adaptive Weight Decay
    towards Model-Oriented Scale <https://arxiv.org/abs/2210.11693>`_, 2022.
"""
