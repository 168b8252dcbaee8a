"""2-D sharding: a 2x2 device mesh of 4 gloo processes on CPU, FSDP2 (``fully_shard``) on one
axis and tensor parallelism on the other (``ColwiseParallel`` for ``l1``, ``RowwiseParallel``
for ``l2``, whose weight is split along its input axis: the axis its factored slot averages
over). 10 steps equal a single process, slots included, with factored and full-size slots,
momentum and clipping; halfway, the sharded model and optimizer state go through
``torch.distributed.checkpoint`` (DCP) into a fresh, zeroed model and optimizer."""

from __future__ import annotations

import os

import pytest
import torch

from amosopt.torch import Amos
from tests.test_torch.test_fsdp import Net, _free_port, _loss, exit_without_teardown

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(),
                                 reason="torch built without distributed")]

ETAS = {r".*weight": "sqrt(1 / SHAPE[1])", r".*bias": 0.5}
SLOTS = {
    "factored": {r"l1\.weight": "(SHAPE[0], 1)",  # rows: split by both mesh axes
                 r"l2\.weight": "(SHAPE[0], 1)",  # averages over dim 1, split over "tp"
                 r"l1\.bias": "()", r"l2\.bias": "SHAPE"},
    "full": None,
}
SLOTS["row-col"] = SLOTS["factored"]  # with second_moment="row-col": u of l2 is split over dp
STEPS = 10


def options(slots: str) -> dict:
    return dict(lr=0.2, eta=ETAS, slot_shape=SLOTS[slots], momentum=0.9, clip_value=1.0,
                second_moment="row-col" if slots == "row-col" else "slot")


def _train(model: torch.nn.Module, opt: Amos, steps: range) -> None:
    for t in steps:
        opt.zero_grad()
        _loss(model, t).backward()  # every rank sees the same batch
        opt.step()


def _sharded(mesh) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)

    model = Net()
    parallelize_module(model, mesh["tp"], {"l1": ColwiseParallel(), "l2": RowwiseParallel()})
    fully_shard(model, mesh=mesh["dp"])
    return model


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=4)
    try:
        torch.set_num_threads(1)
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        results = {}
        for slots in SLOTS:
            model = _sharded(mesh)
            opt = Amos(model.named_parameters(), **options(slots))
            _train(model, opt, range(STEPS // 2))
            model_state, optim_state = get_state_dict(model, opt)
            path = os.path.join(os.path.dirname(out), f"dcp-{slots}")
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=path)
            # a fresh model (zeroed, so only the checkpoint can restore it) and optimizer
            model = _sharded(mesh)
            with torch.no_grad():
                for p in model.parameters():
                    p.zero_()
            opt = Amos(model.named_parameters(), **options(slots))
            model_state, optim_state = get_state_dict(model, opt)
            state = {"model": model_state, "optim": optim_state}
            dcp.load(state, checkpoint_id=path)
            set_state_dict(model, opt, model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
            _train(model, opt, range(STEPS // 2, STEPS))
            named = dict(model.named_parameters())
            results[slots] = {
                "placements": {n: str(p.placements) for n, p in named.items()},
                "params": {n: p.full_tensor() for n, p in named.items()},
                "v": {n: opt.state[p]["v"].full_tensor() for n, p in named.items()},
                "u": {n: opt.state[p]["u"].full_tensor() for n, p in named.items()
                      if "u" in opt.state[p]},
                "step": {n: float(opt.state[p]["step"]) for n, p in named.items()},
            }
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()
    exit_without_teardown()


def test_fsdp2_and_tensor_parallel_on_a_2x2_mesh_match_one_process(tmp_path) -> None:
    out = os.path.join(tmp_path, "rank0.pt")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), out), nprocs=4)
    results = torch.load(out)
    for slots in SLOTS:
        sharded = results[slots]
        # the row-wise layer's weight is split along its input axis over "tp"
        assert sharded["placements"]["l2.weight"] == "(Shard(dim=0), Shard(dim=1))"
        model = Net()
        opt = Amos(model.named_parameters(), **options(slots))
        _train(model, opt, range(STEPS))
        for n, p in model.named_parameters():
            assert not torch.equal(p.detach(), dict(Net().named_parameters())[n].detach())
            torch.testing.assert_close(sharded["params"][n], p.detach(), rtol=1e-6, atol=0)
            torch.testing.assert_close(sharded["v"][n], opt.state[p]["v"], rtol=1e-6, atol=0)
            if "u" in opt.state[p]:
                torch.testing.assert_close(sharded["u"][n], opt.state[p]["u"], rtol=1e-6,
                                           atol=0)
            assert sharded["step"][n] == STEPS
        assert ({n: tuple(u.shape) for n, u in sharded["u"].items()}
                == ({"l1.weight": (1, 6), "l2.weight": (1, 8)} if slots == "row-col" else {}))
        expected = (4, 1) if slots != "full" else (4, 8)
        assert tuple(sharded["v"]["l2.weight"].shape) == expected
