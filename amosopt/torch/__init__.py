"""PyTorch backend: :class:`Amos`, a :class:`torch.optim.Optimizer` exact to the reference, and
:func:`auto_scales` / :func:`auto_amos`, which derive each parameter's ``eta`` and slot shape
from the model.

Import as ``from amosopt.torch import Amos``; this module imports torch, ``import amosopt`` does
not.
"""

from amosopt.torch.integrations import unwrap_optimizer
from amosopt.torch._recipe import recipe
from amosopt.torch.optimizer import Amos
from amosopt.torch.scales import auto_amos, auto_scales
from amosopt.torch.schedules import WSDSchedule, warmup_schedule, wsd_schedule

__all__ = ["Amos", "WSDSchedule", "auto_amos", "auto_scales", "recipe", "unwrap_optimizer",
           "warmup_schedule", "wsd_schedule"]
