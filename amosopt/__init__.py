"""amosopt: the Amos optimizer for PyTorch and JAX/optax.

Amos (Tian & Parikh, 2022, arXiv:2210.11693) is Adam with theoretically derived,
adaptive learning-rate decay and weight decay, driven by a per-variable
*model-oriented scale* ``eta``.

Backends live in submodules so that ``import amosopt`` imports neither torch nor jax:

* :mod:`amosopt.torch` -- ``Amos``, a ``torch.optim.Optimizer``;
* :mod:`amosopt.optax` -- ``amos`` / ``scale_by_amos``, optax transformations;
* :mod:`amosopt.rules` -- framework-free rule tables: (name, shape) -> eta / slot shape.
"""

from amosopt.rules import Rules, evaluate_shape_expression

__version__ = "0.1.0"

__all__ = ["Rules", "evaluate_shape_expression", "__version__"]
