"""Helpers shared by the PyTorch tests: a small MLP and its data, snapshots of an optimizer, and
large tensors of every layout checked against the NumPy transcription of the paper's update."""

from __future__ import annotations

import copy

import numpy as np
import torch

from amosopt.torch import Amos

TABLE_ETA = {r".*weight": "sqrt(1 / SHAPE[1])", r".*": 0.5}
TABLE_SLOT = {r"0\.weight": "(SHAPE[0], 1)", r"2\.weight": "(1, SHAPE[1])", r".*": "()"}


def mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    return model.to(dtype)


def batch(t: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(t)
    return (torch.randn(16, 5, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(16, 3, generator=g, dtype=torch.float64).to(dtype))


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: range, sched=None) -> None:
    for t in steps:
        x, y = batch(t, next(model.parameters()).dtype)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


def snapshot(opt: torch.optim.Optimizer) -> tuple[list[torch.Tensor], dict]:
    params = [p for g in opt.param_groups for p in g["params"]]
    state = {i: opt.state[p] for i, p in enumerate(params) if p in opt.state}
    return [p.detach().clone() for p in params], copy.deepcopy(state)


def assert_same(a, b) -> None:
    params_a, state_a = a
    params_b, state_b = b
    assert all(torch.equal(x, y) for x, y in zip(params_a, params_b, strict=True))
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        assert state_a[k].keys() == state_b[k].keys()
        for key, value in state_a[k].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, state_b[k][key]), key
            else:
                assert value == state_b[k][key], key


#: name -> (shape, slot shape or None for full size) of large tensors for the NumPy checks:
#: e has full-size slots, updated block by block; f, g, h are factored along leading, middle
#: and trailing axes (e, f and h are large enough for the fused kernels)
LARGE = {"a": ((300, 256), (300, 1)), "b": ((70000,), ()), "c": ((256, 300), None),
         "d": ((3, 200, 120), (1, 200, 1)), "e": ((6, 100000), None),
         "f": ((1000, 600), (1000, 1)), "g": ((700, 20, 30), (700, 1, 30)),
         "h": ((1000, 600), (1, 600))}


def check_large_tensors_against_numpy(names: str = "".join(LARGE), **kwargs) -> Amos:
    """Several large tensors of different sizes and layouts (c non-contiguous), half of whose
    gradient entries are clipped, must follow the NumPy transcription of the paper's update,
    tensor by tensor, over 4 steps with momentum (``names``: which of ``LARGE``)."""
    from tests.oracles import NumpyAmos

    shapes = {n: shape for n, (shape, _) in LARGE.items() if n in names}
    slots = {n: slot for n, (_, slot) in LARGE.items() if n in names}
    rng = np.random.default_rng(0)
    start = {n: rng.normal(size=s) for n, s in shapes.items()}
    params = {n: torch.nn.Parameter(torch.tensor(x)) for n, x in start.items()}
    if "c" in params:
        params["c"] = torch.nn.Parameter(torch.tensor(np.ascontiguousarray(start["c"].T)).t())
        assert not params["c"].is_contiguous()
    opt = Amos(list(params.items()), lr=0.05, eta=0.5, clip_value=1.0, momentum=0.5,
               slot_shape=lambda n, s: s if slots[n] is None else slots[n], **kwargs)
    oracles = {n: NumpyAmos(eta=0.5, slot_shape=slots[n], clip_value=1.0, momentum=0.5,
                            decay_ratio=kwargs.get("decay_ratio", 1.0))
               for n in shapes}
    want = dict(start)
    for t in range(4):
        grads = {n: 2.0 * rng.normal(size=s) for n, s in shapes.items()}
        for n, p in params.items():
            p.grad = torch.tensor(grads[n])
            want[n] = oracles[n].step(want[n], grads[n], 0.05)
        opt.step()
    for n, p in params.items():
        np.testing.assert_allclose(p.detach().numpy(), want[n], rtol=1e-12, atol=1e-14)
    return opt
