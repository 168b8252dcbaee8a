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
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

__all__ = ["Suggestion", "suggest"]

#: 1 - beta is kept in this range: beta = 0.999 (BERT) is the slowest average the authors used,
#: and an average over fewer than ~10 batches is too noisy to normalise the step.
ONE_MINUS_BETA_RANGE = (0.001, 0.1)
LOSS_KINDS = ("mean", "sum")


@dataclass(frozen=True)
class Suggestion:
    """Recommended Amos hyper-parameters, with the numbers they came from.

    Attributes:
        xi: global learning rate, ``1/sqrt(n_batches)``.
        beta: decay of the running mean of squared gradients.
        clip_value: element-wise gradient clip.
        n_batches: ``N = examples / batch_size``, batches in one pass over the training data.
        reasoning: one line of explanation per hyper-parameter.
    """

    xi: float
    beta: float
    clip_value: float
    n_batches: float
    reasoning: tuple[str, ...]

    def as_dict(self) -> dict:
        return {
            "xi": self.xi,
            "beta": self.beta,
            "clip_value": self.clip_value,
            "n_batches": self.n_batches,
            "reasoning": list(self.reasoning),
        }

    def format(self) -> str:
        """Human-readable text: the three values, then the reasoning."""
        lines = [
            f"xi (global learning rate) = {self.xi:.4g}",
            f"beta                      = {self.beta:.4g}",
            f"clip_value                = {self.clip_value:.4g}",
            "",
            "Why (Tian & Parikh 2022, and the authors' jestimator recipes):",
        ]
        lines += [f"  - {line}" for line in self.reasoning]
        return "\n".join(lines)


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


def suggest(
    examples: int,
    batch_size: int,
    loss: str = "mean",
    labels_per_example: int = 1,
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
        "keep xi constant (optionally a short linear warm-up): Amos decays the step itself, "
        "so no step budget or decay schedule is needed",
    )
    return Suggestion(xi, beta, clip_value, n_batches, reasoning)
