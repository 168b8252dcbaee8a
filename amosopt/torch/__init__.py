"""PyTorch backend: :class:`Amos`, a :class:`torch.optim.Optimizer` exact to the reference.

Import as ``from amosopt.torch import Amos``; this module imports torch, ``import amosopt`` does
not.
"""

from amosopt.torch.optimizer import Amos

__all__ = ["Amos"]

# auto-scales exports (issue 4)
from amosopt.torch.scales import auto_amos, auto_scales  # noqa: E402

__all__ += ["auto_amos", "auto_scales"]
