"""Amos (Tian & Parikh, arXiv 2210.11693) as a :class:`torch.optim.Optimizer`.

The update is the authors' reference code (``jestimator.amos``), line by line; the docstring of
:class:`Amos` gives the equations and :mod:`amosopt.torch._functional` the code. Every step
runs in two phases so that bad input never corrupts anything:

1. *check* -- resolve ``eta`` and the slot shape of new parameters, pick each tensor's route
   (:func:`amosopt.torch._routes.route`), reduce the clipped squared gradient to the slot shape;
   one host sync per device decides whether all of it is finite (``nonfinite="skip"``: one
   reduction whose result stays on the device);
2. *update* -- only then create state, and change slots and parameters: one tensor at a time
   (``foreach=False``), or each on its route (:func:`amosopt.torch._routes.update`); with
   ``nonfinite="skip"``, undone on the device where phase 1 found a non-finite value.
"""

from __future__ import annotations

import inspect
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import required

from amosopt.hyperparameters import DEFAULTS, SECOND_MOMENT, hints_foreign_arguments
from amosopt.rules import Shape, as_b0_fn, as_eta_fn, as_shape_fn, column_shape
from amosopt.torch import _checkpoints, _fused, _mistakes, _routes, _validation
from amosopt.torch._functional import Hyper, slot_dtype
from amosopt.torch._routes import Record
from amosopt.torch._sharding import check_not_flattened

__all__ = ["Amos"]

#: one param group in a step: the group, its index, its symbols, its records, phase 1's result
_Checked = tuple[dict[str, Any], int, Hyper, list[Record], _routes.Measured]


class Amos(Optimizer):
    r"""Implements Amos (Tian & Parikh, 2022), exactly as the authors' reference code.

    Amos is Adam with adaptive learning-rate decay and weight decay, driven by a per-variable
    *model-oriented scale* :math:`\eta` (the expected magnitude of the variable's entries).
    Let :math:`\xi` be the group's ``lr`` (read at every step, so torch LR schedulers give
    :math:`\xi_t`), :math:`\eta` the parameter's ``eta``, :math:`\beta` ``beta``, :math:`\lambda`
    ``extra_l2``, :math:`c, d` ``c_coef, d_coef``, :math:`\epsilon` ``epsilon``, :math:`\mu`
    ``momentum`` and :math:`M(\cdot)` the mean over the axes that the slot shape (``slot_shape``)
    reduces. :math:`v` and :math:`b` have the slot shape; so do :math:`\gamma_t, c_t, d_t`.

    .. math::
        \begin{aligned}
        & g_t = \mathrm{clip}(\nabla_\theta f_t(\theta_{t-1}), -\text{clip\_value},
            \text{clip\_value}) \quad (\text{element-wise, optional}) \\
        & v_t = \beta v_{t-1} + (1-\beta) M(g_t^2), \qquad
          \hat v_t = \max(v_t, \epsilon) / (1-\beta^t) \\
        & c_t = (1 + c\sqrt{\rho\xi_t}\, b_{t-1})^{-1/2}, \qquad
          d_t = (1 + d\sqrt{\xi_t\eta}\, b_{t-1})^{-1} \\
        & \gamma_t = c_t\, (\rho\xi_t)^2\, M(g_t^2) / \hat v_t \\
        & \Delta_t = -d_t \big( \xi_t \eta\, g_t / \sqrt{\hat v_t}
            + (\tfrac12\gamma_t + \lambda)\, \theta_{t-1} \big) \\
        & b_t = b_{t-1} + \gamma_t (1 + b_{t-1}) \\
        & \text{if } \mu > 0:\ m_t = \mu m_{t-1} + (1-\mu)\Delta_t,\ \Delta_t \leftarrow m_t \\
        & \theta_t = \theta_{t-1} + \Delta_t
        \end{aligned}

    with :math:`v_0 = m_0 = 0`, :math:`b_0` = ``b0`` (0, the paper's, by default) and the 1-based
    step :math:`t`. The paper's algorithm has :math:`\rho = 1` (``decay_ratio``, the default).

    ``second_moment="row-col"`` normalises each entry by a rank-1 estimate of its own second
    moment instead of its slot's (Adafactor's factorisation, Shazeer & Stern 2018, arXiv
    1804.04235, with means for sums). With :math:`R` the axes the slot reduces and :math:`K`
    the ones it keeps, a column factor :math:`u` (the parameter's shape with the kept axes 1:
    ``(1, in)`` beside a ``(out, 1)`` slot) runs beside :math:`v`, which still drives
    :math:`\gamma_t, b_t, c_t, d_t`; only the gradient term of :math:`\Delta_t` changes:

    .. math::
        \begin{aligned}
        & u_t = \beta u_{t-1} + (1-\beta) M_K(g_t^2), \qquad
          \hat u_t = \max(u_t, \epsilon) / (1-\beta^t) \\
        & \hat V_t = \hat v_t\, \hat u_t / \overline{\hat v_t}, \qquad
          \overline{\hat v_t} = \max(\mathrm{mean}(v_t), \epsilon) / (1-\beta^t) \\
        & \Delta_t = -d_t \big( \xi_t \eta\, g_t / \sqrt{\hat V_t}
            + (\tfrac12\gamma_t + \lambda)\, \theta_{t-1} \big)
        \end{aligned}

    (:math:`\mathrm{mean}(v_t)`, over the slot, is also the mean of :math:`u_t`: both average
    all of :math:`g^2`). A parameter whose slot reduces no axis (full size) or has a single
    entry (``()``: biases, norms) has no column factor and the paper's update
    (:func:`amosopt.rules.column_shape`).

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
        c_coef: :math:`c`, the coefficient of the weight-decay factor :math:`c_t` (default 0.25).
        d_coef: :math:`d`, the coefficient of the step-decay factor :math:`d_t` (default 0.25).
        epsilon: :math:`\epsilon`, a floor on :math:`v` (default :math:`2^{-125}`).
        decay_ratio: :math:`\rho`, the global rate of the decay as a fraction of the step's
            (default 1, the paper's). The weight decay :math:`\tfrac12\gamma_t` scales as
            :math:`\rho^2`, and :math:`b` (so the step's decay :math:`d_t`) grows
            :math:`\rho^2` times slower, while the step :math:`\xi\eta\, d_t` starts the same.
            :math:`\rho = 1/k` is exactly ``eta`` times :math:`k` with ``lr`` divided by
            :math:`k`: the weights settle toward an RMS of :math:`k\eta` over
            :math:`2k^2/\xi^2` steps instead of :math:`\eta` over :math:`2/\xi^2`. Budgets
            shorter than an epoch or two gain from :math:`\rho < 1` (``amos suggest --steps``;
            ``benchmarks/diagnose.py``).
        b0: :math:`b_0`, the value each parameter's slot :math:`b` starts at: a number
            :math:`\ge 0`, a rule table or a callable ``(name, shape) -> float`` (as ``eta``).
            0 (default) is the paper's fresh start. A warm start from pretrained weights sets
            how far along its own decay each tensor already is: its first step is
            :math:`d_0 = 1/(1 + d\sqrt{\xi\eta}\, b_0)` of the full :math:`\xi\eta`, and its
            weight decay is shrunk by :math:`c_0 = (1 + c\sqrt{\rho\xi}\, b_0)^{-1/2}`
            (``auto_amos(model, lr, pretrained=True)`` sets it, with ``eta`` from the weights).
            Read only when a parameter's state is created: a checkpoint carries :math:`b`.
        foreach: use the multi-tensor implementation (``torch._foreach_*``); ``None`` picks it,
            as it measured faster than the single-tensor loop on CPU too; ``False`` runs the loop.
        maximize: maximise the objective instead of minimising it.
        fused: compile the whole step, all tensors, as one ``torch.compile`` graph (default
            ``False``): faster, equal up to rounding; the first steps compile (a float ``lr``
            enters as a tensor, so a scheduler does not recompile), and it needs a C++ compiler
            on CPU, Triton on CUDA. Full-size slots, DTensor parameters, and param groups that
            do not all set it, get per-tensor kernels for their large tensors instead. Numbers:
            ``benchmarks/README.md``; more in the precision guide.
        rounding: how a bfloat16/float16 parameter stores the float32 result of each update:
            ``"nearest"`` (default) loses Amos's small late updates (10,000 steps of a small
            MLP: 37-72% above float32, ``benchmarks/bf16_drift.py``); ``"stochastic"``
            (bfloat16 only) rounds up or down at random, unbiased, with no extra memory, and
            draws from torch's default generator; ``"compensated"`` keeps what rounding lost
            in a buffer of the parameter's dtype (Kahan summation; 2 bytes per parameter) and
            adds it back at the next step. Other dtypes: no effect.
        second_moment: ``"slot"`` (default, the paper's): the step is
            :math:`g_t / \sqrt{\hat v_t}` with the slot-shaped :math:`v`; ``"row-col"``: each
            entry over the rank-1 estimate :math:`\hat V_t` above, at the cost of one column
            factor :math:`u` per factored tensor (a vector per matrix, in the slots' dtype).
            Its update runs eagerly even with ``fused=True``. Set on a param group of a
            running optimizer, ``u`` starts at :math:`\mathrm{mean}(v)` (so that at first
            :math:`\hat V_t \approx \hat v_t`) and learns the column profile from there.
        nonfinite: what a step does with a non-finite gradient (inf or NaN, after clipping):
            ``"raise"`` (default) raises :class:`FloatingPointError` naming the parameter,
            before anything changes; it asks the host at every step, which is cheap on CPU but
            makes the host wait for an accelerator and breaks a ``torch.compile`` graph.
            ``"skip"`` decides on the device: such a step leaves every parameter and every
            state tensor exactly as it was, and counts itself in the per-parameter state
            ``skipped``; :meth:`diagnostics` and :meth:`state_dict` warn when that count has
            grown. Use ``"skip"`` on GPUs, under ``torch.compile`` and with
            ``torch.amp.GradScaler`` (which then passes its scale and overflow flag to
            :meth:`step`, with no host sync). Every param group must use the same policy.

    Per-parameter state: ``step`` (0-d float32 tensor, on the CPU; with ``nonfinite="skip"``
    on the parameter's device), ``eta`` (float), ``slot_shape`` (tuple), ``v`` and ``b`` (slot
    shape), ``u`` (``second_moment="row-col"``, column shape), ``momentum_buffer`` (if
    :math:`\mu > 0`), ``compensation`` (``rounding="compensated"``, 16-bit parameters),
    ``skipped`` (``nonfinite="skip"``: 0-d float32, steps skipped). Slots are float32 for
    bfloat16/float16 parameters, also after :meth:`load_state_dict`.

    By default a non-finite gradient raises :class:`FloatingPointError` naming the parameter,
    before any parameter or state changes (see ``nonfinite``).

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

    @hints_foreign_arguments(lr="lr")  # weight_decay=: what to pass instead
    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = required,
        *,
        eta: float | Any = required,
        slot_shape: Any = None,
        beta: float = DEFAULTS["beta"],
        momentum: float = 0.0,
        clip_value: Optional[float] = None,
        extra_l2: float = DEFAULTS["extra_l2"],
        c_coef: float = DEFAULTS["c_coef"],
        d_coef: float = DEFAULTS["d_coef"],
        epsilon: float = DEFAULTS["epsilon"],
        decay_ratio: float = DEFAULTS["decay_ratio"],
        b0: float | Any = DEFAULTS["b0"],
        foreach: Optional[bool] = None,
        maximize: bool = False,
        fused: bool = False,
        rounding: str = "nearest",
        second_moment: str = SECOND_MOMENT,
        nonfinite: str = "raise",
    ) -> None:
        defaults = dict(
            lr=lr, eta=eta, slot_shape=slot_shape, beta=beta, momentum=momentum,
            clip_value=clip_value, extra_l2=extra_l2, c_coef=c_coef, d_coef=d_coef,
            epsilon=epsilon, foreach=foreach, maximize=maximize, fused=fused,
            rounding=rounding, decay_ratio=decay_ratio, second_moment=second_moment,
            nonfinite=nonfinite, b0=b0,
        )
        # lr or eta not given here: every param group must give it (torch's ``required``), and
        # is checked then; valid stand-ins let the other defaults be checked now
        checked = {k: ({"lr": 0.0, "eta": 1.0}[k] if v is required else v)
                   for k, v in defaults.items()}
        # param_names=[]: whether names are needed is checked per group
        _validation.check_hyperparameters(dict(checked, param_names=[]), "")
        super().__init__(params, defaults)
        _mistakes.warn_unused(self.param_groups)  # rules no parameter takes: a typo, likely
        #: the step's records, kept (see _plan), by (group index, position): keyed by
        #: tensor, torch.compile would guard on the parameters as dict keys, and on their
        #: gradients with them, and recompile whenever a gradient is freed (zero_grad)
        self._records: dict[tuple[int, int], Record] = {}
        #: steps skipped (``nonfinite="skip"``) that the user has been told about
        self._skipped_reported = 0.0
        #: fused=True: the compiled step (False: given up, see _compiled_step), and each param
        #: group's float lr as a 0-d tensor
        self._compiled: Optional[Callable[..., Optional[Tensor]]] | bool = None
        self._lr_tensors: dict[int, Tensor] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group; its overrides (``eta`` and ``slot_shape`` included) are validated, and
        every named parameter's ``eta`` and slot shape resolved (a rule table without a value
        for one fails here)."""
        _mistakes.check_group(self, param_group)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        where = f" (param group {len(self.param_groups) - 1})"
        try:
            _validation.check_hyperparameters(group, where)
            if group["nonfinite"] != self.param_groups[0]["nonfinite"]:
                raise ValueError(
                    f"Invalid nonfinite{where}: {group['nonfinite']!r}; every param group must "
                    f"use the first one's ({self.param_groups[0]['nonfinite']!r}), as one "
                    "finiteness check decides for the whole step")
            _mistakes.resolve_all(group, where)
            if hasattr(self, "_records"):  # after the constructor, which warns for all groups
                _mistakes.warn_unused([group])
            if group["fused"]:  # fails here, with the reason, where torch.compile cannot work
                for device_type in sorted({p.device.type for p in group["params"]}):
                    _fused.check_available(device_type)
        except (ValueError, RuntimeError):
            self.param_groups.pop()
            raise

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """``torch.amp.GradScaler`` then sets ``grad_scale`` and ``found_inf`` on the optimizer
        around :meth:`step`, which unscales the gradients and skips an overflowed step on the
        device; with ``nonfinite="raise"`` it unscales itself and asks the host (its default
        path)."""
        return self.param_groups[0]["nonfinite"] == "skip"

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
        check_not_flattened(name, p)  # a flattened shard has lost the shape the scales need
        shape = tuple(p.shape)
        shape_fn = as_shape_fn(group["slot_shape"])
        return (as_eta_fn(group["eta"])(name, shape),
                shape if shape_fn is None else tuple(shape_fn(name, shape)))

    # ---- step --------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Performs one Amos step.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Under ``torch.amp.GradScaler`` with ``nonfinite="skip"``, the scaler's attributes
        ``grad_scale`` (the gradients are divided by it, in place) and ``found_inf`` (non-zero:
        the step is skipped) are used.

        Raises:
            FloatingPointError: ``nonfinite="raise"`` and a gradient is not finite; nothing has
                been changed.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        skip = self.param_groups[0]["nonfinite"] == "skip"
        if not torch.compiler.is_compiling():
            plan = self._plan()
            if plan and self._compiles_whole_step(plan) and self._compiled_step(skip):
                return loss
        elif skip:
            # one graph: the host's bookkeeping runs as dynamo runs torch's optimizers' (see
            # _init_group), and the traced step only looks up the records it names
            plan = self._traced_plan(count_skipped=True)
        else:
            # the host's bookkeeping (_plan) runs outside the graph, and the one host sync (is
            # every gradient finite?) is a graph break that dynamo resumes after, at the top
            # level of the step: phase 1, the check's reduction and phase 2 run as three graphs,
            # the same at every step from the second on (README, PyTorch quick start)
            plan = self._plan_outside_graph()
        if plan:
            self._apply(plan, on_device=skip, count_skipped=skip)
        return loss

    def _apply(self, plan: list[tuple[dict[str, Any], int, list[Record]]], on_device: bool,
               count_skipped: bool, scratch: Optional[_routes.Scratch] = None
               ) -> Optional[Tensor]:
        """Phases 1 and 2 of the planned records. ``on_device``: the finiteness of every
        gradient is a 0-d bool tensor that masks the update (returned, no host sync), else the
        host asks and raises before any change; ``count_skipped``: a masked step counts in the
        state ``skipped``; ``scratch``: the step's (a new one if None)."""
        grad_scale = getattr(self, "grad_scale", None)  # set by torch.amp.GradScaler
        if grad_scale is not None:
            _routes.unscale([r for *_, records in plan for r in records], grad_scale)
        scratch = _routes.Scratch() if scratch is None else scratch
        checked = []
        for group, group_index, records in plan:
            h = Hyper.of(group)
            checked.append((group, group_index, h, records, _routes.measure(records, h, scratch)))
        ok = None
        if on_device:
            ok = _routes.all_finite([r for *_, rs, _ in checked for r in rs],
                                    [c for *_, m in checked for c in m.checks])
            found_inf = getattr(self, "found_inf", None)  # set by torch.amp.GradScaler
            if found_inf is not None:
                ok = ok & (found_inf.to(ok.device) == 0)
        else:
            self._raise_if_not_finite(checked)
        self._update(checked, scratch, ok, count_skipped)
        return ok

    # ---- fused=True: the whole step, compiled ------------------------------------------------

    def _compiles_whole_step(self, plan: list[tuple[dict[str, Any], int, list[Record]]]
                             ) -> bool:
        """``fused=True`` on every param group (the caller is outside a user's
        ``torch.compile``), without DTensor parameters (FSDP2) and without full-size slots
        (their per-tensor kernels measured several times faster than the whole step:
        ``benchmarks/README.md``): the step runs as one compiled graph over all tensors. Read
        at every step: the route's fields, no shape work (a slot that averages over no axis is
        full-size, unless the parameter has one entry)."""
        return (self._compiled is not False
                and all(group["fused"] for group in self.param_groups)
                and not any(r.route.sharded or (not r.route.axes and r.p.numel() > 1)
                            for *_, records in plan for r in records))

    def _compiled_step(self, skip: bool) -> bool:
        """The whole step as one graph of ``torch.compile`` (Inductor fuses the per-tensor
        work of all tensors into a few kernels: horizontal fusion). It always decides on the
        device (the masked update of ``nonfinite="skip"``); with ``"raise"`` the host then asks
        once, as the eager step does, and raises with nothing changed. A float ``lr`` goes in
        as a 0-d tensor, so that an LR scheduler's new value is an input, not a recompile.
        Returns False where it gave up (see below) and the caller must step."""
        if self._compiled is None:
            # on its own copy of the code: dynamo caps the graphs kept per code object (8), and
            # every optimizer of a process would share the cap of Amos._device_step
            code = Amos._device_step
            own = types.FunctionType(code.__code__.replace(), code.__globals__, code.__name__)
            self._compiled = torch.compile(types.MethodType(own, self), fullgraph=True)
        floats = []
        for index, group in enumerate(self.param_groups):
            if not isinstance(group["lr"], Tensor):
                floats.append((group, group["lr"]))
                lr = self._lr_tensors.get(index)
                if lr is None:
                    lr = self._lr_tensors[index] = torch.tensor(0.0, dtype=torch.float64)
                group["lr"] = lr.fill_(float(group["lr"]))
        try:
            ok, _ = _fused.with_constant_floats(self._compiled, count_skipped=skip)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            # more graphs than dynamo keeps per code object (parameters whose gradient comes
            # and goes, options changed again and again): none ran, nothing has changed, and
            # from this step on the per-tensor kernels take over
            warnings.warn("Amos(fused=True): the compiled step recompiled too often "
                          "(torch._dynamo.config.recompile_limit); going on with per-tensor "
                          "kernels", RuntimeWarning, stacklevel=3)
            self._compiled = False
            return False
        finally:
            for group, lr in floats:
                group["lr"] = lr
        if not skip and ok is not None and not bool(ok):  # the one host sync of "raise"
            self._raise_if_not_finite_eagerly()
        return True

    def _device_step(self, count_skipped: bool) -> tuple[Optional[Tensor], list[Tensor]]:
        """What :meth:`_compiled_step` compiles: the planned records (made by
        :meth:`_init_group`, which dynamo runs as it is), updated as the device decides.
        Returns the finiteness flag and, as outputs of the graph that nobody reads, the slot
        coefficients (:meth:`amosopt.torch._routes.Scratch.output` says why)."""
        plan = self._traced_plan(count_skipped)
        if not plan:
            return None, []
        scratch = _routes.Scratch(coefficients=[])
        ok = self._apply(plan, on_device=True, count_skipped=count_skipped, scratch=scratch)
        return ok, scratch.coefficients

    def _raise_if_not_finite_eagerly(self) -> None:
        """After a compiled step that found a non-finite gradient (and changed nothing): the
        eager check, which names the parameter."""
        plan = self._plan()
        scratch = _routes.Scratch()
        self._raise_if_not_finite([(g, gi, h, rs, _routes.measure(rs, h, scratch))
                                   for g, gi, rs in plan for h in [Hyper.of(g)]])
        raise FloatingPointError("Amos: a gradient is not finite (found by the compiled step "
                                 "of fused=True); nothing has been changed")

    def _traced_plan(self, count_skipped: bool) -> list[tuple[dict[str, Any], int, list[Record]]]:
        """Inside ``torch.compile``: the plan of :meth:`_init_group`, as records looked up."""
        return [(self.param_groups[gi], gi, [self._records[gi, i] for i in indices])
                for gi, indices in self._init_group(count_skipped)]

    # A torch LR scheduler replaces ``optimizer.step`` by a wrapper that records the call in
    # ``_opt_called`` (to warn about steps in the wrong order), unless the step has this flag;
    # dynamo does not trace that wrapper (for torch's own optimizers neither), which would rule
    # out ``torch.compile(optimizer.step, fullgraph=True)`` with a scheduler. ``_plan`` sets
    # ``_opt_called`` itself, eagerly (in a compiled step, where it runs at tracing time).
    step._wrapped_by_lr_sched = True

    def _plan(self) -> list[tuple[dict[str, Any], int, list[Record]]]:
        """``(group, group index, records)`` of each group's parameters with a gradient:
        host-side work only (no tensor is read or changed). A record is kept from step to step
        while its signature holds: deciding the route again each step measured ~10% of a step
        of a model of 200 small tensors."""
        self._opt_called = True  # for torch's LR schedulers (see below Amos.step)
        _mistakes.check_momentum_not_cycled(self.param_groups)  # OneCycleLR's default
        plan = []
        for group_index, group in enumerate(self.param_groups):
            records = []
            group_signature = _routes.group_signature(group)
            for i, p in enumerate(group["params"]):
                if p.grad is None or p.numel() == 0:
                    continue
                if p.grad.is_sparse or torch.is_complex(p) or torch.is_complex(p.grad):
                    raise RuntimeError(_unsupported(p, self._param_name(group, group_index, i)))
                signature = (group_signature, _routes.layout(p))
                r = self._records.get((group_index, i))
                if r is None or r.p is not p or r.state is None or r.signature != signature:
                    eta, slot_shape = self._resolve(group, group_index, i, p)
                    route = _routes.route(p, slot_shape, group, self.state.get(p, {}))
                    r = self._records[group_index, i] = Record(p, i, eta, slot_shape, route,
                                                               signature)
                records.append(r)
            if records:
                plan.append((group, group_index, records))
        return plan

    #: :meth:`_plan` for torch.compile: run eagerly (a graph break before any tensor work), as
    #: traced it would break the graph inside (rule expressions are parsed at a parameter's
    #: first step) and leave the steady-state steps in pieces
    _plan_outside_graph = torch.compiler.disable(_plan)

    def _init_group(self, count_skipped: bool = True) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """The step inside ``torch.compile`` (``nonfinite="skip"``, or ``fused=True``):
        :meth:`_plan` (the route and record of each new parameter: the rule tables it reads
        cannot be traced, and its checks compare hyper-parameters that dynamo may trace as
        symbols) and the state of new parameters (``skipped`` if ``count_skipped``), made
        before the step is traced; returns ``(group index, parameter indices)`` of the plan,
        plain data that becomes a constant of the graph. Dynamo runs a torch optimizer's
        method of this name as it is, rather than tracing it, and guards on the state it
        made, as for torch's own optimizers (``torch._dynamo``'s ``OptimizerVariable``);
        eagerly (outside torch.compile) the step does this work itself."""
        plan = self._plan()
        for group, gi, records in plan:
            mu = group["momentum"]
            for r in records:
                compensated = _routes.compensated(r.p, group)
                columns = (None if r.route.columns is None
                           else column_shape(r.p.shape, r.slot_shape))
                if (r.state is None or (mu > 0 and "momentum_buffer" not in r.state)
                        or (compensated and "compensation" not in r.state)
                        or (columns is not None and "u" not in r.state)
                        or (count_skipped and "skipped" not in r.state)):
                    like = torch.empty(r.slot_shape, dtype=slot_dtype(r.p), device=r.p.device)
                    like_column = None if columns is None else torch.empty(
                        columns, dtype=slot_dtype(r.p), device=r.p.device)
                    r.state = self._init_state(r, like, like_column, mu, compensated,
                                               on_device=True, count_skipped=count_skipped,
                                               b0=self._b0(group, gi, r))
                if columns is None and "u" in r.state:  # second_moment set back to "slot"
                    del r.state["u"]
        return tuple((gi, tuple(r.index for r in records)) for _, gi, records in plan)

    def _raise_if_not_finite(self, checked: list[_Checked]) -> None:
        names = {id(r): self._param_name(g, gi, r.index)
                 for g, gi, _, rs, _ in checked for r in rs}
        _routes.raise_if_not_finite([r for *_, rs, _ in checked for r in rs],
                                    [c for *_, m in checked for c in m.checks],
                                    lambda r: names[id(r)])

    def _update(self, checked: list[_Checked], scratch: _routes.Scratch,
                ok: Optional[Tensor] = None, count_skipped: bool = True) -> None:
        """Phase 2: state created where new, then slots and parameters changed; with ``ok``
        (decided on the device), counted (``skipped`` too if ``count_skipped``) and undone on
        the device as ``ok`` says."""
        for group, group_index, h, records, measured in checked:
            # a kept record has its state (see _plan)
            for r, g2, g2_column in zip(records, measured.g2, measured.g2_columns):
                compensated = _routes.compensated(r.p, group)
                if (r.state is None or (h.mu > 0 and "momentum_buffer" not in r.state)
                        or (compensated and "compensation" not in r.state)
                        or (g2_column is not None and "u" not in r.state)
                        or (ok is not None and count_skipped and "skipped" not in r.state)):
                    r.state = self._init_state(r, g2, g2_column, h.mu, compensated,
                                               on_device=ok is not None,
                                               count_skipped=ok is not None and count_skipped,
                                               b0=self._b0(group, group_index, r))
                if g2_column is None and "u" in r.state:  # second_moment set back to "slot"
                    del r.state["u"]
            if ok is None:
                torch._foreach_add_([r.state["step"] for r in records], 1.0)
            else:
                _routes.count(records, ok, count_skipped)
            _routes.update(records, measured, h, scratch, ok)

    def _b0(self, group: dict[str, Any], group_index: int, r: Record) -> float:
        """:math:`b_0` of a parameter whose state is new (``b0``: a number, or by name)."""
        if self.state.get(r.p):
            return 0.0  # not read: the state exists (a checkpoint's b, or this run's)
        spec = group["b0"]
        if isinstance(spec, (int, float)):
            return float(spec)
        return as_b0_fn(spec)(self._param_name(group, group_index, r.index), tuple(r.p.shape))

    def _init_state(self, r: Record, g2: Optional[Tensor], g2_column: Optional[Tensor],
                    momentum: float, compensated: bool, on_device: bool = False,
                    count_skipped: bool = False, b0: float = 0.0) -> dict[str, Any]:
        state = self.state[r.p]
        if not state:
            # decided on the device: the step counts there, without asking the host
            state["step"] = torch.zeros((), dtype=torch.float32,
                                        device=r.p.device if on_device else None)
            state["eta"] = float(r.eta)
            state["slot_shape"] = tuple(r.slot_shape)
            # slot shape, dtype and placement of g2; where the full step recomputes M(g^2),
            # the parameter's shape, contiguous
            like = g2 if g2 is not None else torch.empty_like(
                r.p, dtype=slot_dtype(r.p), memory_format=torch.contiguous_format)
            state["v"] = torch.zeros_like(like)
            state["b"] = torch.full_like(like, b0)  # b_0: 0, or a warm start's
        if g2_column is not None and "u" not in state:
            # zero in a new state; mean(v) in one from before second_moment="row-col" was set,
            # so that w_t = u_t / mean(v_t) starts at 1 (the paper's step), not at 0
            state["u"] = torch.zeros_like(g2_column).add_(state["v"].mean())
        if momentum > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(
                r.p, dtype=slot_dtype(r.p), memory_format=torch.preserve_format)
        if compensated and "compensation" not in state:  # the parameter's dtype
            state["compensation"] = torch.zeros_like(r.p, memory_format=torch.preserve_format)
        if count_skipped and "skipped" not in state:
            state["skipped"] = torch.zeros((), dtype=torch.float32, device=state["step"].device)
        return state

    def diagnostics(self, *, per_parameter: bool = True) -> dict[str, float]:
        """What Amos is doing, per parameter and as min / median / max over them: a flat dict
        for TensorBoard, W&B or Lightning's ``log_dict`` (keys ``lr``, ``step``,
        ``weight_decay``, ``d_t``, ``c_t``, ``b``, ``decay``, ``decay_onset``,
        ``clip_fraction``; formulas in :mod:`amosopt.diagnostics`; with ``nonfinite="skip"``
        also ``skipped``, :meth:`skipped_steps`). Reads the state after the last :meth:`step`:
        one host transfer of the slots, nothing when not called. See
        :func:`amosopt.torch.diagnostics.diagnostics`."""
        from amosopt.torch.diagnostics import diagnostics

        self._report_skipped()
        numbers = diagnostics(self, per_parameter=per_parameter)
        if self.param_groups[0]["nonfinite"] == "skip":
            numbers["skipped"] = float(self._skipped_reported)
        return numbers

    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite gradient (``nonfinite="skip"``), the most of any
        parameter (one that had no gradient at a step was not skipped then): one host
        transfer, so read it where the host may wait, as when logging."""
        counts = [s["skipped"] for s in self.state.values() if "skipped" in s]
        if not counts:
            return 0
        return int(torch.stack([c.to(counts[0].device, torch.float32) for c in counts]).max())

    def _report_skipped(self) -> None:
        """Warns once for each growth of :meth:`skipped_steps` (read here, never in a step)."""
        total = self.skipped_steps()
        if total > self._skipped_reported:
            warnings.warn(
                f"Amos skipped {total - int(self._skipped_reported)} step(s) with a non-finite "
                f"gradient since last reported ({total} in all; nonfinite='skip'). Check the "
                "loss, lower lr, or set clip_value; with torch.amp.GradScaler, the first steps' "
                "overflows are expected.", RuntimeWarning, stacklevel=3)
        self._skipped_reported = total

    # ---- state dict ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """As torch's, and plain data only (it loads with ``torch.load``'s
        ``weights_only=True``): an ``eta`` / ``slot_shape`` spec that is not (a callable, a
        ``ScaleTable``, a ``Rules`` object) is replaced by a marker, and :meth:`load_state_dict`
        keeps the loading optimizer's own spec. Each parameter's resolved ``eta`` and slot shape
        are in its state either way."""
        self._report_skipped()
        return _checkpoints.to_plain(super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's (pre-hooks, then the state, then post-hooks), with these differences: the
        slots keep float32 for low-precision parameters (torch would cast them to the
        parameter's dtype), a per-parameter ``step`` saved as a number becomes a tensor, and
        specs saved as the marker of :meth:`state_dict` are kept from this optimizer, as is
        ``nonfinite`` (with ``"skip"``, the step counters move to the parameters' devices).

        Raises:
            ValueError: the state_dict was written in a format this version cannot read (a
                newer amosopt), or a parameter's saved slots do not have the slot shape that
                the ``slot_shape`` in force after loading gives it (the saved one if it is
                plain data, else this optimizer's): they would silently broadcast. Nothing has
                been changed.
        """
        with _checkpoints.loading(self):
            super().load_state_dict(state_dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._records = {}  # new slot tensors: decide the routes again
        self._compiled, self._lr_tensors = None, {}
        _checkpoints.restore(self, _OPTIONS_DEFAULTS)
        self._skipped_reported = self.skipped_steps()  # reported before it was saved


#: the defaults of the signature: a group saved before an option existed gets its default
_OPTIONS_DEFAULTS = {name: arg.default
                     for name, arg in inspect.signature(Amos.__init__).parameters.items()
                     if arg.default not in (arg.empty, required)}


def _unsupported(p: Tensor, name: str) -> str:
    if p.grad.is_sparse:
        return (f"Amos does not support sparse gradients (parameter {name!r}); use a dense "
                "embedding (sparse=False)")
    return (f"Amos does not support complex parameters or gradients (parameter {name!r}); "
            "optimise torch.view_as_real of the parameter instead")
