"""Parameters that a sharding engine flattened, found before Amos reads their shapes.

``eta`` rules and factored slots depend on each parameter's own shape; FSDP1 and DeepSpeed ZeRO
hand the optimizer flat 1-D shards instead. Both :func:`amosopt.torch.auto_scales` and
:class:`amosopt.torch.Amos` (at a parameter's first step) call :func:`check_not_flattened`.
"""

from __future__ import annotations

import torch
from torch import nn

#: modules whose ``weight`` has at least two axes; a 1-D one was flattened by a sharding engine
_MATRIX_WEIGHTS = (nn.Linear, nn.Embedding, nn.modules.conv._ConvNd, nn.Bilinear)


def check_not_flattened(name: str, param: torch.Tensor, module: nn.Module | None = None) -> None:
    """Raises ``ValueError`` for a parameter that a sharding engine flattened into a 1-D shard
    (FSDP1: a ``FlatParameter``, or with ``use_orig_params=True`` 1-D views of it; DeepSpeed
    ZeRO: partitioned parameters), where the shape that ``eta`` and factored slots depend on is
    lost."""
    engine = None
    if type(param).__name__ == "FlatParameter" or name.endswith("_flat_param"):
        engine = "FSDP1's FlatParameter (FullyShardedDataParallel without use_orig_params=True)"
    elif hasattr(param, "ds_shape") or hasattr(param, "ds_id"):
        engine = "a DeepSpeed ZeRO partition"
    elif (module is not None and name.rpartition(".")[2] == "weight"
          and isinstance(module, _MATRIX_WEIGHTS) and param.dim() < 2):
        engine = f"a 1-D tensor, but a {type(module).__name__} weight has >= 2 axes"
    if engine is not None:
        raise ValueError(
            f"Parameter {name!r} (shape {tuple(param.shape)}) is {engine}: Amos's scales and "
            "factored slots need each parameter's own shape. Shard with FSDP2 "
            "(torch.distributed.fsdp.fully_shard) or DTensor, which keep it")
