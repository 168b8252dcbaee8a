"""``amosopt.torch._functional``: the pieces of the update that the paths share, against
NumPy's direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amosopt.torch._functional import mean_square, slot_dtype


@pytest.mark.parametrize("shape, axes", [
    ((768, 3072), (0,)),  # Hugging Face Conv1D (in, out), slot (1, out): blocks of rows
    ((700, 20, 30), (1,)),  # a kept leading axis too: the blocks are concatenated
    ((5, 300, 400), (0, 1)),
    ((1000, 600), (1,)),  # innermost reduced: vector_norm
    ((3, 200, 120), (0, 2)),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_mean_square_against_numpy(shape, axes, dtype) -> None:
    g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = g.to(dtype)
    want = np.mean(np.square(g.double().numpy()), axis=axes, keepdims=True)
    got = mean_square(g, axes, slot_dtype(g))
    assert got.dtype == slot_dtype(g) and tuple(got.shape) == want.shape
    np.testing.assert_allclose(got.double().numpy(), want,
                               rtol=1e-13 if dtype == torch.float64 else 1e-5)
