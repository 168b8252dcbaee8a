"""Sharding of the Amos optimizer state, derived from the parameters' sharding.

The ``v`` and ``b`` slots of a variable are partitioned like the variable, except along a
*reduced* axis (slot size 1 where the variable's is larger), which holds one value and so is not
partitioned; scalar slots and counters are replicated. This is what jestimator's
``amos_helper.state_partition_rule`` does for T5X, without flax's logical-axis-name conventions:
it works on plain ``PartitionSpec``s or ``NamedSharding``s.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["slot_partition_spec", "state_sharding"]


def _is_none(x: Any) -> bool:
    return x is None


def _is_spec_leaf(x: Any) -> bool:
    return x is None or isinstance(x, (PartitionSpec, jax.sharding.Sharding))


def slot_partition_spec(param_spec: PartitionSpec | None, slot_shape: tuple[int, ...]
                        ) -> PartitionSpec:
    """The spec of a slot (or any same-rank state leaf) from its parameter's spec.

    Axis ``i`` keeps the parameter's mesh axes unless the slot has size 1 there (a reduced axis,
    or a size-1 axis, which cannot be split); a scalar slot is replicated.

    >>> from jax.sharding import PartitionSpec as P
    >>> slot_partition_spec(P("data", "model"), (1, 16))
    P(None, 'model')
    >>> slot_partition_spec(P("data", "model"), ())
    P()
    """
    spec = tuple(param_spec) if param_spec is not None else ()
    spec = spec + (None,) * (len(slot_shape) - len(spec))
    return PartitionSpec(*(None if size == 1 else axes
                           for size, axes in zip(slot_shape, spec)))


def state_sharding(state: Any, param_sharding: Any) -> Any:
    """Maps the parameters' shardings to the optimizer state's, leaf for leaf.

    Works for :func:`amosopt.optax.amos` and anything chained or wrapped around it
    (``inject_hyperparams``, ``MultiSteps``): every subtree of ``state`` with the parameters'
    tree structure (Amos's ``v`` and ``b``, the column factors ``u`` of
    ``second_moment="row-col"``, the momentum, accumulated gradients) is sharded like the
    parameters, through :func:`slot_partition_spec` (``None`` leaves, such as the ``u`` of a
    variable without a column factor, stay ``None``); every other leaf (counts,
    hyper-parameters) is replicated.

    Args:
        state: the optimizer state, or its abstract shapes, e.g.
            ``jax.eval_shape(optimizer.init, params)``.
        param_sharding: a tree with the parameters' structure whose leaves are
            ``PartitionSpec``s (``None`` meaning replicated) or ``NamedSharding``s.

    Returns:
        A tree with ``state``'s structure: ``PartitionSpec`` leaves, or ``NamedSharding``s on the
        parameters' mesh when ``param_sharding`` holds ``NamedSharding``s (for ``jax.jit``'s
        ``in_shardings``/``out_shardings`` or ``jax.device_put``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jax.sharding import PartitionSpec as P
        >>> from amosopt.optax import amos, state_sharding
        >>> params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}
        >>> tx = amos(0.01, eta_fn=1.0, shape_fn={"w": (8, 1), "b": ()})
        >>> specs = state_sharding(jax.eval_shape(tx.init, params), {"w": P("x", "y"), "b": P("y")})
        >>> specs[1].v, specs[1].count
        ({'b': P(), 'w': P('x', None)}, P())
    """
    spec_leaves, spec_def = jax.tree.flatten(param_sharding, is_leaf=_is_spec_leaf)
    meshes = [s.mesh for s in spec_leaves if isinstance(s, NamedSharding)]
    if len(meshes) != len(spec_leaves) and meshes:
        raise ValueError("param_sharding mixes NamedShardings with other leaves; pass "
                         "PartitionSpecs or NamedShardings throughout")
    mesh = meshes[0] if meshes else None
    specs = [s.spec if isinstance(s, NamedSharding) else s for s in spec_leaves]
    for s in specs:
        if s is not None and not isinstance(s, PartitionSpec):
            raise ValueError(f"param_sharding leaves must be PartitionSpec, NamedSharding or None, "
                             f"got {s!r}")

    def finish(spec: PartitionSpec) -> Any:
        return spec if mesh is None else NamedSharding(mesh, spec)

    def like_params(subtree: Any) -> bool:
        # None stands for an absent leaf, e.g. a variable without a column factor ``u``
        return (subtree is not None
                and jax.tree.structure(subtree, is_leaf=_is_none) == spec_def)

    def map_subtree(subtree: Any) -> Any:
        if not like_params(subtree):  # a leaf outside any parameter-shaped subtree
            return finish(PartitionSpec())
        leaves = spec_def.flatten_up_to(subtree)
        return spec_def.unflatten([None if leaf is None else
                                   finish(slot_partition_spec(spec, tuple(leaf.shape)))
                                   for spec, leaf in zip(specs, leaves)])

    return jax.tree.map(map_subtree, state, is_leaf=like_params)
