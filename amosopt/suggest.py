"""The paper's hyper-parameter guidance for Amos, as a function (framework-free).

Tian & Parikh (2022), and the authors' reference code (jestimator ``amos.py`` docstring and
README), give three rules of thumb (arXiv 2210.11693):

* global learning rate ``xi ~ 1/sqrt(N)``, with ``N`` the number of independent batches in the
  training data (``N = examples / batch_size``). MNIST: ``1/sqrt(60000/32) = 0.0231``;
  BERT pre-training: ``N ~ 3e4`` -> ``xi ~ 0.006`` (they used 0.005);
* ``1 - beta`` of the same order of magnitude as ``xi`` (jestimator used ``beta = 0.98`` for
  ``xi ~ 0.023`` and ``0.999`` for ``xi = 0.005``). Our rule: ``1 - beta`` is ``xi`` rounded to
  one significant digit, clamped to ``[0.001, 0.1]``; this gives 0.98 for MNIST exactly;
* element-wise ``clip_value`` matched to the scale of the loss: ``1`` for a loss averaged over
  the labels, ``sqrt(L)`` for a loss summed over ``L`` labels per batch (MNIST summed over a
  batch of 32: ``sqrt(32)``; T5X: ``sqrt(batch * target_length) = 684``).

Given a step budget ``T`` (``suggest(..., steps=T)``), it gives the whole recipe for that budget.
The paper's setting is made for runs of several epochs, in which Amos's own decay (of the step
and of the weights, time constant about ``2 / xi^2 = 2N`` updates) starts within the run. A
budget that ends before it (:func:`decay_onset`) gets our **short-budget recipe**, measured in
``amos compare``'s study (``docs/guides/study.md``, "The recipe"): a linear warm-up of ``xi``
over the first 5% and a cooldown to 0 over the last 20% (the WSD shape), the decay's rate
``rho * xi`` turned down (``decay_ratio``, so that the cooldown, not the decay, anneals), and
each entry normalised by the row-and-column estimate of its second moment
(``second_moment="row-col"``, Adafactor's factorisation) instead of its slot's.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from amosopt.diagnostics import steps_until_drop

__all__ = ["Suggestion", "check_suggestion", "decay_onset", "suggest"]

#: 1 - beta is kept in this range: beta = 0.999 (BERT) is the slowest average the authors used,
#: and an average over fewer than ~10 batches is too noisy to normalise the step.
ONE_MINUS_BETA_RANGE = (0.001, 0.1)
LOSS_KINDS = ("mean", "sum")
#: the share of the budget that a cooldown takes when Amos's own decay does not start in time
#: (Hägele et al. 2024, arXiv 2405.18392; ``amos compare``'s default)
COOLDOWN_FRACTION = 0.2
#: the drop of Amos's step that counts as "its decay has started"
ONSET_DROP = 0.1
#: momentum of every suggestion (the authors' BERT and T5 recipes; the study's Amos)
MOMENTUM = 0.9

# The short-budget recipe (a budget that ends before Amos's own decay starts); the values the
# diagnostic stage of the study measured at lm 1000 steps (docs/guides/study.md, "The recipe").
#: share of the budget over which xi warms up linearly from 0
SHORT_WARMUP_FRACTION = 0.05
#: rho: the decay's global rate as a fraction of xi (time constant 2 / (rho xi)^2 updates)
SHORT_DECAY_RATIO = 0.25
#: the normaliser of each entry's step
SHORT_SECOND_MOMENT = "row-col"
#: 1 - beta of the short-budget recipe
SHORT_ONE_MINUS_BETA = 0.005


@dataclass(frozen=True)
class Suggestion:
    """Recommended Amos hyper-parameters, with the numbers they came from.

    Attributes:
        xi: global learning rate, ``1/sqrt(n_batches)``.
        beta: decay of the running mean of squared gradients.
        clip_value: element-wise gradient clip.
        n_batches: ``N = examples / batch_size``, batches in one pass over the training data.
        reasoning: one line of explanation per hyper-parameter.
        decay_onset: steps until Amos's own decay has cut the step by 10% for a variable with
            ``eta = 1`` (the earliest; :func:`decay_onset`).
        steps: the step budget ``T`` if one was given, else None.
        cooldown_steps: with a budget whose end comes before ``decay_onset``: the length of the
            cooldown to add (20% of ``T``, :func:`amosopt.torch.wsd_schedule`); else 0.
        warnings: what the user should act on (empty when nothing).
        momentum: ``momentum`` of the optimizer (an EMA of the updates).
        warmup_steps: linear warm-up of ``xi`` from 0 over this many steps.
        decay_ratio: ``rho``, the decay's rate as a fraction of ``xi`` (1: the paper's).
        second_moment: the normaliser, ``"slot"`` (the paper's) or ``"row-col"``.
        recipe: ``"paper"`` (no budget, or one long enough for Amos's own decay) or
            ``"short-budget"``.
    """

    xi: float
    beta: float
    clip_value: float
    n_batches: float
    reasoning: tuple[str, ...]
    decay_onset: float = math.inf
    steps: int | None = None
    cooldown_steps: int = 0
    warnings: tuple[str, ...] = ()
    momentum: float = MOMENTUM
    warmup_steps: int = 0
    decay_ratio: float = 1.0
    second_moment: str = "slot"
    recipe: str = "paper"

    def amos_kwargs(self) -> dict:
        """The arguments of :class:`amosopt.torch.Amos` / :func:`amosopt.optax.amos` (and
        ``auto_amos``) other than the rate and the scales: ``beta``, ``momentum``,
        ``clip_value``, ``decay_ratio`` and ``second_moment``."""
        return {"beta": self.beta, "momentum": self.momentum, "clip_value": self.clip_value,
                "decay_ratio": self.decay_ratio, "second_moment": self.second_moment}

    def schedule_kwargs(self) -> dict:
        """The arguments of ``wsd_schedule`` (either backend) after the rate or the optimizer:
        ``total_steps``, ``warmup_steps`` and ``cooldown_steps``.

        Raises:
            ValueError: the suggestion has no budget (``steps=None``): hold ``xi`` after
                ``warmup_steps`` instead (``warmup_schedule``).
        """
        if self.steps is None:
            raise ValueError("Invalid steps: this suggestion has no budget; pass steps=T to "
                             "suggest() for a schedule, or hold xi constant after the warm-up")
        return {"total_steps": self.steps, "warmup_steps": self.warmup_steps,
                "cooldown_steps": self.cooldown_steps}

    def as_dict(self) -> dict:
        return {
            "xi": self.xi,
            "beta": self.beta,
            "clip_value": self.clip_value,
            "n_batches": self.n_batches,
            "decay_onset": self.decay_onset,
            "steps": self.steps,
            "cooldown_steps": self.cooldown_steps,
            "momentum": self.momentum,
            "warmup_steps": self.warmup_steps,
            "decay_ratio": self.decay_ratio,
            "second_moment": self.second_moment,
            "recipe": self.recipe,
            "reasoning": list(self.reasoning),
            "warnings": list(self.warnings),
        }

    def format(self) -> str:
        """Human-readable text: the three values, then the reasoning."""
        lines = [
            f"xi (global learning rate) = {self.xi:.4g}",
            f"beta                      = {self.beta:.4g}",
            f"clip_value                = {self.clip_value:.4g}",
        ]
        lines.append(f"momentum                  = {self.momentum:.4g}")
        if self.steps is not None:
            lines += [f"warmup_steps              = {self.warmup_steps}",
                      f"cooldown_steps            = {self.cooldown_steps}"
                      f"   (budget {self.steps} steps)"]
        if self.recipe != "paper":
            lines += [f"decay_ratio               = {self.decay_ratio:.4g}",
                      f"second_moment             = {self.second_moment}"]
        lines += [
            "",
            f"Why ({self.recipe} recipe; Tian & Parikh 2022, the authors' jestimator recipes"
            + (", and amos compare's study" if self.recipe != "paper" else "") + "):",
        ]
        lines += [f"  - {line}" for line in self.reasoning]
        lines += ["", *(f"Warning: {w}" for w in self.warnings)] if self.warnings else []
        return "\n".join(lines)


def check_suggestion(value: object, caller: str) -> Suggestion:
    """``value`` if it is a :class:`Suggestion`; else a ``TypeError`` naming ``caller`` and how
    to get one."""
    if not isinstance(value, Suggestion):
        raise TypeError(f"{caller}: the recipe must be an amosopt.suggest.Suggestion (from "
                        f"suggest(examples, batch_size, steps=T)), not {type(value).__name__}")
    return value


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"Invalid {name}: {value!r}; expected a positive integer")
    return int(value)


def round_significant(x: float, digits: int = 1) -> float:
    """``x`` rounded to ``digits`` significant digits (``0.0231 -> 0.02``)."""
    if x == 0:
        return 0.0
    exponent = math.floor(math.log10(abs(x)))
    return round(x, digits - 1 - exponent)


def decay_onset(xi: float, eta: float = 1.0, drop: float = ONSET_DROP) -> float:
    """Steps until Amos's own decay has cut a variable's step by ``drop`` (10%), from ``b = 0``.

    Amos (Tian & Parikh 2022, arXiv 2210.11693, Algorithm 1) scales the step by
    ``d_t = 1 / (1 + sqrt(xi * eta) b / 4)``, where ``b`` grows by ``b <- b + gamma (1 + b)``
    with ``gamma = c_t xi^2 g^2 / v_hat`` and ``c_t = (1 + sqrt(xi) b / 4)^(-1/2)``. At stationary
    gradient statistics (``g^2 / v_hat = 1``, the paper's idealisation; exact for a constant
    gradient) and in continuous time, with ``k = sqrt(xi) / 4``::

        db/dt = xi^2 (1 + b) / sqrt(1 + k b)
        => xi^2 t(B) = integral_0^B sqrt(1 + k b) / (1 + b) db
                     = 2 (u - 1) + a (ln(1 + B) - 2 ln((u + a) / (1 + a))),
           u = sqrt(1 + k B),  a = sqrt(1 - k)

    (substitute ``u = sqrt(1 + k b)``: the integrand becomes ``2 + 2 a^2 / (u^2 - a^2)``). The
    step has dropped by ``drop`` when ``d_t = 1 - drop``, that is at
    ``B = 4 drop / ((1 - drop) sqrt(xi * eta))``. For small ``xi`` this is about
    ``ln(1 + B) / xi^2``: decay starts after a few epochs (``1/xi^2 ~ N`` steps each), so a
    budget shorter than that trains at a constant rate unless it adds a cooldown. Gradients
    that shrink relative to ``v_hat`` (as training converges) make the onset later.

    Args:
        xi: the global learning rate, ``0 < xi < 16``.
        eta: the variable's scale; the largest ``eta`` decays first (``1`` is the largest that
            the automatic scales give).
        drop: the fraction of the step that counts as the onset, ``0 < drop < 1``.

    Example:
        >>> round(decay_onset(0.0231, eta=(2 / 3136) ** 0.5, drop=0.5))  # MNIST Dense_0
        13498
    """
    for name, value, high in (("xi", xi, 16.0), ("eta", eta, math.inf), ("drop", drop, 1.0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                0 < value < high):
            raise ValueError(f"Invalid {name}: {value!r}; expected a number in (0, {high:g})")
    return steps_until_drop(xi, eta, 0.0, drop=drop)


def suggest(
    examples: int,
    batch_size: int,
    loss: str = "mean",
    labels_per_example: int = 1,
    steps: int | None = None,
) -> Suggestion:
    """The paper's recommended ``xi``, ``beta`` and ``clip_value`` for a training set.

    .. math::

        N = \\text{examples} / B,\\qquad \\xi = 1/\\sqrt{N},\\qquad
        1-\\beta = \\mathrm{clamp}(\\mathrm{round}_1(\\xi), 10^{-3}, 10^{-1}),\\qquad
        \\text{clip} = 1 \\text{ (mean loss) or } \\sqrt{B L} \\text{ (summed loss)}

    Args:
        examples: number of training examples (for a language model: training sequences).
        batch_size: examples per batch, ``B``.
        loss: ``"mean"`` if the loss is averaged over the labels, ``"sum"`` if summed.
        labels_per_example: labels ``L`` per example that a summed loss adds up (e.g. target
            tokens per sequence); ignored for a mean loss.
        steps: the training budget ``T`` in steps, if there is one. When Amos's own decay will
            not start within it (``T`` < :func:`decay_onset` at ``eta = 1``), the suggestion
            is the short-budget recipe (module docstring): a 5% warm-up, a cooldown over the
            last 20%, ``decay_ratio`` ``rho``, the row-col second moment, and a longer
            average (``beta``). Otherwise the paper's setting, held constant.

    Returns:
        A :class:`Suggestion`.

    Example:
        >>> s = suggest(60000, 32, loss="sum")  # the authors' MNIST recipe
        >>> round(s.xi, 4), s.beta, round(s.clip_value, 3)
        (0.0231, 0.98, 5.657)
    """
    examples = _positive_int(examples, "examples")
    batch_size = _positive_int(batch_size, "batch_size")
    labels_per_example = _positive_int(labels_per_example, "labels_per_example")
    if steps is not None:
        steps = _positive_int(steps, "steps")
    if loss not in LOSS_KINDS:
        raise ValueError(f"Invalid loss: {loss!r}; expected one of {LOSS_KINDS}")
    if batch_size > examples:
        raise ValueError(
            f"Invalid batch_size: {batch_size} is larger than the number of examples "
            f"({examples}); use a batch size of at most {examples}"
        )
    n_batches = examples / batch_size
    xi = 1.0 / math.sqrt(n_batches)
    low, high = ONE_MINUS_BETA_RANGE
    one_minus_beta = min(max(round_significant(xi), low), high)
    beta = round(1.0 - one_minus_beta, 6)
    if loss == "mean":
        clip_value = 1.0
        clip_why = "the loss is a mean, so its gradient has the scale of one label: clip at 1"
    else:
        summed = batch_size * labels_per_example
        clip_value = math.sqrt(summed)
        clip_why = (
            f"the loss sums {summed} labels per batch ({batch_size} x {labels_per_example}), "
            f"so clip at sqrt({summed}) = {clip_value:.4g} (MNIST: sqrt(32); T5X: 684)"
        )
    reasoning = (
        f"N = examples / batch size = {examples} / {batch_size} = {n_batches:.4g} batches per "
        f"epoch; xi ~ 1/sqrt(N) = {xi:.4g} (MNIST 60000/32 -> 0.0231, BERT N~3e4 -> 0.006)",
        f"1 - beta of the same order as xi: xi rounded to one digit, kept in [{low}, {high}], "
        f"gives 1 - beta = {one_minus_beta:.3g} (jestimator: 0.98 for xi~0.023, 0.999 for 0.005)",
        clip_why + " (element-wise clipping, applied before the update)",
    )
    onset = decay_onset(xi)
    onset_why = (f"Amos's own decay cuts the step by 10% after about {onset:,.0f} steps "
                 f"(~{onset / n_batches:.1f} epochs) for eta = 1, later for smaller eta")
    if steps is not None and steps < onset:
        return _short_budget(xi, beta, clip_value, n_batches, reasoning, onset, onset_why,
                             steps)
    if steps is None:
        reasoning += (onset_why + "; with no budget, keep xi constant (optionally a short "
                      "linear warm-up): Amos decays the step itself",)
    else:
        reasoning += (onset_why + f", within the budget of {steps:,} steps: keep xi constant "
                      "and let Amos decay it (the paper's recipe)",)
    return Suggestion(xi, beta, clip_value, n_batches, reasoning, onset, steps)


def _short_budget(xi: float, beta: float, clip_value: float, n_batches: float,
                  reasoning: tuple[str, ...], onset: float, onset_why: str,
                  steps: int) -> Suggestion:
    """The short-budget recipe (see the module docstring) for a budget ``steps`` < ``onset``."""
    warmup = round(SHORT_WARMUP_FRACTION * steps)
    cooldown = max(1, round(COOLDOWN_FRACTION * steps))
    # the average of g^2 over at most 1 / SHORT_ONE_MINUS_BETA steps (more when the paper's
    # rule gives more) and at most a fifth of the budget
    one_minus_beta = max(min(1.0 - beta, SHORT_ONE_MINUS_BETA), 5.0 / steps)
    short_beta = round(1.0 - one_minus_beta, 6)
    rho = SHORT_DECAY_RATIO
    reasoning = reasoning[:1] + (
        f"1 - beta = {one_minus_beta:.3g}: an average of g^2 over about "
        f"{1 / one_minus_beta:,.0f} steps (the paper's 1 - beta ~ xi gives {1 - beta:.3g}; "
        f"at most {SHORT_ONE_MINUS_BETA:g} and at least 5 / T in a short run: the study)",
        reasoning[2],
        onset_why + f", after the budget of {steps:,} steps, so the budget gets the "
        "short-budget recipe:",
        f"warm xi up from 0 over the first {warmup} steps ({SHORT_WARMUP_FRACTION:.0%}) and cool "
        f"it down to 0 over the last {cooldown} ({COOLDOWN_FRACTION:.0%}, Hägele et al. 2024)",
        f"decay_ratio rho = {rho:g}: the decay runs at rho * xi, so its time constant "
        f"2 / (rho xi)^2 = {2 / (rho * xi) ** 2:,.0f} steps is well past the budget and the "
        "cooldown anneals (the weights keep what they learn)",
        f"second_moment = {SHORT_SECOND_MOMENT!r}: each entry's step is normalised by the "
        "rank-1 estimate of its own second moment (Adafactor's), one vector per matrix more",
    )
    return Suggestion(xi, short_beta, clip_value, n_batches, reasoning, onset, steps,
                      cooldown, (), MOMENTUM, warmup, rho, SHORT_SECOND_MOMENT,
                      "short-budget")
