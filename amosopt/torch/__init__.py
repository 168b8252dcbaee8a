"""PyTorch backend: :class:`Amos`, a :class:`torch.optim.Optimizer` exact to the reference, and
:func:`auto_scales` / :func:`auto_amos`, which derive each parameter's ``eta`` and slot shape
from the model.

Import as ``from amosopt.torch import Amos``; this module imports torch, ``import amosopt`` does
not.
"""

from amosopt.torch.optimizer import Amos
from amosopt.torch.scales import auto_amos, auto_scales

__all__ = ["Amos", "auto_amos", "auto_scales"]
