"""The hyper-parameters both backends share: their defaults, the interval each must lie in, and
what to pass instead of another optimizer's arguments (``weight_decay=``, ``betas=``, ...).

Framework-free: :class:`amosopt.torch.Amos` and :func:`amosopt.optax.amos` take their defaults
from :data:`DEFAULTS` and check numbers with :func:`check_interval`; each backend first turns a
value into a Python float its own way (a torch tensor ``lr``, a JAX scalar, a tracer that cannot
be checked). The defaults are the paper's and the reference code's (``jestimator.amos``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

#: the values of ``second_moment``: ``"slot"``, the paper's ``v`` at the slot shape, which
#: alone normalises the step; ``"row-col"``, the same ``v`` and a column factor ``u`` whose
#: rank-1 product with it normalises each entry (:func:`amosopt.rules.column_shape`)
SECOND_MOMENTS = ("slot", "row-col")
#: the default ``second_moment`` of both backends: the paper's (not in :data:`DEFAULTS`, whose
#: numbers are the update's symbols)
SECOND_MOMENT = "slot"

#: defaults of the arguments both backends take, named as in both signatures
DEFAULTS: dict[str, float] = {
    "beta": 0.999,  # β, decay of the running mean v of M(g^2)
    "extra_l2": 0.0,  # λ, the reference's constant L2 term
    "c_coef": 0.25,  # c, in c_t = (1 + c sqrt(ξ) b)^(-1/2)
    "d_coef": 0.25,  # d, in d_t = (1 + d sqrt(ξη) b)^(-1)
    "epsilon": 2.0**-125,  # ε, the floor on v
    "decay_ratio": 1.0,  # ρ, the decay's global rate ρξ as a fraction of ξ (1: the paper's)
    "b0": 0.0,  # b_0, the value the decay accumulator b starts at (0: the paper's fresh start)
}

#: The warm start from pretrained weights (``auto_scales(..., pretrained=True)``): the ``b0``
#: that every pretrained tensor's ``b`` starts at. It sets how far along its own decay the
#: tensor already is: :math:`d_0 = 1 / (1 + d\sqrt{\xi\eta}\, b_0)` and
#: :math:`c_0 = (1 + c\sqrt{\rho\xi}\, b_0)^{-1/2}` (so the weight decay :math:`\gamma` is
#: shrunk too). The reasoning: a pretrained tensor is past its decay onset (from scratch
#: :math:`d_t` falls below 1/2 there), so start it at about half of its step: for the usual
#: :math:`\xi\eta` between 5e-4 and 1e-2 (d = 1/4), 100 gives :math:`d_0` from 0.64 down to
#: 0.29, and with :math:`\xi = 0.02`, :math:`c_0 = 0.47`. Measured (``benchmarks/finetune.py``,
#: full fine-tuning of a pretrained byte-level LM on a new text, 200 steps, 3 seeds): 100 ends
#: at 0.903 nats/byte, against 0.946, 0.932 and 0.942 for 0, 10 and 1000.
WARM_START_B0 = 100.0
#: The warm start's floor on ``eta``, as a fraction of the automatic ``eta``: a tensor whose RMS
#: is below it (but not zero) gets the floor, so that a nearly-zero pretrained tensor is not
#: frozen (its step is xi * eta). A tensor that is exactly zero has learned nothing (a
#: zero-initialised bias or layer): it takes the automatic ``eta`` and ``b0 = 0``, a fresh start.
WARM_START_ETA_FLOOR = 0.1


@dataclass(frozen=True)
class Interval:
    """A range of numbers; an open end excludes its bound, and only a closed infinite end
    admits an infinite value."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = True

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below and not math.isnan(x)

    def __str__(self) -> str:
        return (("(" if self.low_open else "[") + f"{self.low:g}, {self.high:g}"
                + (")" if self.high_open else "]"))


#: name -> (interval, what the number is or how to turn the option off)
INTERVALS: dict[str, tuple[Interval, str]] = {
    "lr": (Interval(0.0), "the global learning rate xi, about 1/sqrt(number of batches)"),
    "beta": (Interval(0.0, 1.0), "a value slightly below 1, e.g. 0.999"),
    "momentum": (Interval(0.0, 1.0), "0 turns momentum off"),
    # an infinite threshold clips nothing, as the reference's optax.clip
    "clip_value": (Interval(0.0, math.inf, low_open=True, high_open=False),
                   "None turns clipping off"),
    "extra_l2": (Interval(0.0), "0 turns it off"),
    "c_coef": (Interval(0.0), "the paper uses 0.25"),
    "d_coef": (Interval(0.0), "the paper uses 0.25"),
    "epsilon": (Interval(0.0, low_open=True), "the floor on v, e.g. 2**-125"),
    "decay_ratio": (Interval(0.0, low_open=True),
                    "1 is the paper's; 1/k makes the weight decay k^2 times weaker"),
    "b0": (Interval(0.0), "0 is the paper's fresh start; > 0 a warm start (pretrained weights)"),
}


def check_interval(name: str, x: float, *, shown: Any = None, where: str = "",
                   alias: str | None = None) -> None:
    """Raises ValueError naming ``alias or name`` (and ``where``) unless the number ``x`` lies
    in :data:`INTERVALS`' interval for ``name``; the message shows ``shown`` (the value as
    given) if not None, else ``x``."""
    interval, hint = INTERVALS[name]
    if x not in interval:
        raise ValueError(f"Invalid {alias or name}{where}: {x if shown is None else shown!r}; "
                         f"it must be in {interval}: {hint}")


#: keyword arguments of other optimizers (torch.optim's and optax's) -> what Amos takes instead;
#: ``{lr}`` is the backend's name for the global learning rate (``lr`` / ``learning_rate``)
FOREIGN_ARGUMENTS = {
    "weight_decay": "Amos decays the weights itself (the paper's adaptive gamma, from eta); "
                    "extra_l2= adds a constant L2 term on top (default 0, usually left so)",
    "betas": "Amos has one beta, the decay of its running mean of squared gradients "
             f"(beta={DEFAULTS['beta']:g} by default; 1 - beta about xi), and momentum= (e.g. "
             "0.9) for an average of the updates",
    "b1": "momentum= (e.g. 0.9) is Amos's average of its updates",
    "b2": f"beta= is the decay of Amos's running mean of squared gradients "
          f"(default {DEFAULTS['beta']:g}; 1 - beta about xi)",
    "eps": f"epsilon= is the floor on v (default 2**{math.log2(DEFAULTS['epsilon']):g})",
    "eps_root": "Amos has no eps_root; epsilon= is the floor on v",
    "amsgrad": "Amos has no AMSGrad variant; leave it out",
    "nesterov": "Amos's momentum= is an average of its updates, without a Nesterov variant",
    "mask": "Amos has no decay mask: eta sets each variable's decay (a rule table or "
            "auto_scales gives norms and biases their own)",
    "lr": "{lr}= is Amos's global learning rate xi",
    "learning_rate": "{lr}= is Amos's global learning rate xi",
    "max_grad_norm": "Amos clips element-wise: clip_value=",
}


def check_unexpected_arguments(unexpected: Mapping[str, Any], function: Callable[..., Any],
                               lr: str) -> None:
    """Raises TypeError for keyword arguments Amos does not take: for each, what to pass instead
    (:data:`FOREIGN_ARGUMENTS`), then the arguments it does take (read from ``function``, the
    backend's constructor); ``lr`` is the backend's name for the global learning rate."""
    if not unexpected:
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    arguments = [name for name, p in inspect.signature(function).parameters.items()
                 if p.kind in named and name not in ("self", "params")]
    lines = [f"{key}=: {FOREIGN_ARGUMENTS[key].format(lr=lr)}" if key in FOREIGN_ARGUMENTS
             else f"{key}=: not an argument of Amos" for key in unexpected]
    raise TypeError("Amos got unexpected keyword argument(s): " + "; ".join(lines)
                    + f". Its arguments: {', '.join(arguments)}.")


def hints_foreign_arguments(lr: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A decorator for both backends' constructors (``Amos.__init__``, optax ``amos`` and
    ``scale_by_amos``): the function raises :func:`check_unexpected_arguments`'s TypeError for
    keyword arguments it does not take, instead of Python's bare one. Its signature is
    unchanged (``inspect.signature`` follows ``__wrapped__``), so ``optax.inject_hyperparams``
    still binds the arguments by name."""

    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        names = set(inspect.signature(function).parameters)

        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> T:
            check_unexpected_arguments({k: v for k, v in kwargs.items() if k not in names},
                                       function, lr)
            return function(*args, **kwargs)

        return checked

    return decorate


def check_second_moment(value: Any, where: str = "") -> str:
    """Returns ``value`` if it is one of :data:`SECOND_MOMENTS`, else raises ValueError."""
    if not isinstance(value, str) or value not in SECOND_MOMENTS:
        raise ValueError(
            f"Invalid second_moment{where}: {value!r}; it must be one of "
            f"{', '.join(map(repr, SECOND_MOMENTS))} ('slot' is the paper's algorithm)"
        )
    return value
