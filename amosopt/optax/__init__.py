"""Amos for JAX/optax: ``amos``, ``scale_by_amos``, ``ScaleByAmosState``, sharding helpers, and
``compensated_rounding`` for 16-bit parameters.

Drop-in for the authors' ``jestimator.amos`` (same arguments, defaults and numbers), without flax:
``from amosopt.optax import amos``. A schedule is called as optax calls it (0 at the first
update), jestimator's with the 1-based step: port one ``f`` as ``lambda count: f(count + 1)``.
"""

from amosopt.optax.diagnostics import decay_onset, diagnostics
from amosopt.optax.nonfinite import SkipState, skip_if_not_finite
from amosopt.optax.recipe import recipe
from amosopt.optax.rounding import CompensatedState, compensated_rounding
from amosopt.optax.schedules import wsd_schedule
from amosopt.optax.sharding import slot_partition_spec, state_sharding
from amosopt.optax.transform import (
    ScaleByAmosState,
    amos,
    param_names,
    path_to_name,
    scale_by_amos,
)

__all__ = [
    "CompensatedState",
    "compensated_rounding",
    "decay_onset",
    "diagnostics",
    "ScaleByAmosState",
    "amos",
    "param_names",
    "path_to_name",
    "recipe",
    "scale_by_amos",
    "SkipState",
    "skip_if_not_finite",
    "slot_partition_spec",
    "state_sharding",
    "wsd_schedule",
]

# auto_scales: imported last, as it imports flax lazily
from amosopt.optax.scales import auto_scales  # noqa: E402  (flax imported lazily)

__all__ += ["auto_scales"]
