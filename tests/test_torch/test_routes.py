"""``_routes.route``: which way each tensor takes through the step, asserted directly."""

from __future__ import annotations

from typing import Optional

import pytest
import torch

from amosopt.torch import Amos
from amosopt.torch._routes import Route, route


def route_of(shape: tuple, slot_shape: Optional[tuple] = None, *, transposed: bool = False,
             fused: bool = False, state: Optional[dict] = None, **options) -> Route:
    """The route of a parameter of ``shape`` (full-size slots unless ``slot_shape``)."""
    p = torch.nn.Parameter(torch.zeros(shape[::-1] if transposed else shape))
    if transposed:
        p = torch.nn.Parameter(p.detach().t())
    p.grad = torch.zeros_like(p)
    group = Amos([p], lr=0.1, eta=0.5, **options).param_groups[0]
    group["fused"] = fused  # set here: Amos(fused=True) would compile a probe kernel
    return route(p, tuple(shape) if slot_shape is None else slot_shape, group, state or {})


def test_loop_takes_every_tensor_one_by_one() -> None:
    for shape, slot in [((300, 256), (300, 1)), ((3, 70001), None), ((7,), ())]:
        r = route_of(shape, slot, foreach=False, clip_value=1.0)
        assert not (r.full_step or r.flat or r.batched or r.compiled or r.sharded)
    assert route_of((3, 70001), foreach=False).axes == ()
    assert route_of((300, 256), (300, 1), foreach=False).axes == (1,)


@pytest.mark.parametrize("foreach", [None, True])
def test_small_factored_and_scalar_slots_are_flat_and_batched(foreach) -> None:
    assert route_of((64, 256), (64, 1), foreach=foreach) == Route(
        axes=(1,), flat=True, batched=True)
    assert route_of((64,), (), foreach=foreach) == Route(
        axes=(0,), keepdim=False, flat=True, batched=True)


def test_small_full_size_slots_take_the_loop_way() -> None:
    """Concatenating full-size slots copies parameter-sized memory: above 4096 entries they go
    one by one; tiny ones (biases, norms) are concatenated like factored slots."""
    assert route_of((64, 256)) == Route(axes=())
    assert route_of((64, 256), fused=True, clip_value=1.0) == Route(axes=())
    assert route_of((64, 64)) == Route(axes=(), flat=True, batched=True)
    assert route_of((256,), momentum=0.9) == Route(axes=(), flat=True, batched=True)


def test_large_full_size_slots_take_the_full_step() -> None:
    assert route_of((3, 70001)) == Route(axes=(), full_step=True, blocks=True)
    assert route_of((3, 70001), fused=True) == Route(axes=(), full_step=True, blocks=True,
                                                     compiled=True)
    # not contiguous: the whole tensor at once, and no kernel
    assert route_of((300, 256), transposed=True, fused=True) == Route(axes=(), full_step=True)
    momentum = {"momentum_buffer": torch.zeros(256, 300).t()}
    assert route_of((300, 256), fused=True, momentum=0.9, state=momentum) == Route(
        axes=(), full_step=True)


def test_large_factored_tensors_are_updated_one_by_one() -> None:
    # slot of 1000 entries: flat coefficients; 3e5 entries: updated alone
    assert route_of((1000, 300), (1000, 1)) == Route(axes=(1,), flat=True)
    # a slot larger than _FLAT_MAX (an embedding's rows)
    assert route_of((50000, 8), (50000, 1)) == Route(axes=(1,))


@pytest.mark.parametrize("shape, slot, matrix", [
    ((1100, 1000), (1100, 1), ((1100, 1000), 1)),
    ((1000, 1100), (1, 1100), ((1000, 1100), 0)),
    ((1024, 64, 4, 4), (1024, 1, 1, 1), ((1024, 1024), 1)),
    ((600, 1000), (), ((1, 600000), -1)),
])
def test_fused_factored_tensors_get_kernels(shape, slot, matrix) -> None:
    r = route_of(shape, slot, fused=True, clip_value=1.0)
    assert r.compiled and r.matrix == matrix and not r.batched and not r.full_step


def test_fused_thresholds_and_layouts() -> None:
    # 6e5 entries: a kernel only with clipping or momentum
    assert not route_of((600, 1000), (), fused=True).compiled
    assert route_of((600, 1000), (), fused=True, momentum=0.9).compiled
    # too small, a slot that keeps a middle axis, a transposed parameter: eager
    assert not route_of((10, 3), (10, 1), fused=True, clip_value=1.0).compiled
    assert route_of((30, 100, 100), (1, 100, 1), fused=True, clip_value=1.0) == Route(
        axes=(0, 2), flat=True, scratch=True)
    assert route_of((1100, 1000), (1, 1000), transposed=True, fused=True,
                    clip_value=1.0) == Route(axes=(0,), flat=True, scratch=True)


def test_large_gradients_clipped_eagerly_use_the_scratch_buffer() -> None:
    assert route_of((1000, 300), (1000, 1), clip_value=1.0).scratch
    assert route_of((1000, 300), (1000, 1), clip_value=1.0, foreach=False).scratch
    assert route_of((3, 70001), clip_value=1.0, foreach=False).scratch
    assert not route_of((1000, 300), (1000, 1)).scratch  # no clipping
    assert not route_of((64, 256), (64, 1), clip_value=1.0).scratch  # small
    assert not route_of((3, 70001), clip_value=1.0).scratch  # the full step clips blocks
    assert not route_of((1100, 1000), (1100, 1), fused=True, clip_value=1.0).scratch
