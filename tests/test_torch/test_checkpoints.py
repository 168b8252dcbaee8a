"""Versioned checkpoints: the state_dict format, a committed checkpoint that must keep loading
and continuing, and refusals (a newer format, slots of another shape than this optimizer's
``slot_shape`` gives).

``tests/fixtures/amos_format1.pt`` was written by ``tests/fixtures/make_checkpoints.py`` with the
code of its day; its expected parameters are that code's output by design (a compatibility
fixture), and the continuation is also checked against the NumPy transcription of the paper.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from amosopt.torch import Amos
from amosopt.torch._checkpoints import _NOT_PLAIN, FORMAT, FORMAT_KEY
from tests.fixtures.make_checkpoints import OPTIONS, STEPS_BEFORE
from tests.oracles import NumpyAmos
from tests.test_torch.conftest import assert_same, mlp, snapshot

FIXTURE = Path(__file__).parents[1] / "fixtures" / "amos_format1.pt"


def checkpoint() -> dict:
    return torch.load(FIXTURE)  # torch's defaults: weights_only=True


def restored(**options) -> tuple[torch.nn.Module, Amos]:
    """The fixture's model and a fresh optimizer built as the one that saved it (or with
    ``options`` changed), before loading the optimizer state."""
    model = mlp(seed=1)  # other weights, overwritten by the checkpoint's
    model.load_state_dict(checkpoint()["model"])
    return model, Amos(model.named_parameters(), **dict(OPTIONS, **options))


def continue_with_saved_gradients(model: torch.nn.Module, opt: Amos, saved: dict) -> None:
    for grads, want in zip(saved["gradients"], saved["expected_params"], strict=True):
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
        opt.step()
        for n, p in model.named_parameters():
            # rounding may change between versions (another reduction order); the format, the
            # meaning of each slot and the step count may not
            torch.testing.assert_close(p.detach(), want[n], rtol=1e-12, atol=1e-15, msg=n)


def test_state_dict_carries_the_format_in_every_group() -> None:
    model = mlp()
    opt = Amos([{"params": list(model.parameters())[:2]}, {"params": list(model.parameters())[2:]}],
               lr=0.1, eta=0.5)
    assert [g[FORMAT_KEY] for g in opt.state_dict()["param_groups"]] == [FORMAT, FORMAT]
    opt.load_state_dict(opt.state_dict())
    assert all(FORMAT_KEY not in g for g in opt.param_groups)  # not a hyper-parameter
    assert FORMAT_KEY not in repr(opt)


def test_committed_checkpoint_loads_and_continues() -> None:
    saved = checkpoint()
    assert saved["optimizer"]["param_groups"][0][FORMAT_KEY] == 1
    model, opt = restored()
    opt.load_state_dict(saved["optimizer"])
    continue_with_saved_gradients(model, opt, saved)
    assert all(float(opt.state[p]["step"]) == STEPS_BEFORE + 3 for p in model.parameters())


def test_committed_checkpoint_continues_as_the_paper_says() -> None:
    """The loaded slots mean what the paper's symbols mean: v, b, m and t handed to the NumPy
    transcription continue the same way (independent of this package's code)."""
    saved = checkpoint()
    model, opt = restored()
    opt.load_state_dict(saved["optimizer"])
    state = saved["optimizer"]["state"]
    theta = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    oracles = {}
    for i, n in enumerate(saved["optimizer"]["param_groups"][0]["param_names"]):
        s = state[i]
        oracles[n] = NumpyAmos(eta=s["eta"], slot_shape=tuple(s["slot_shape"]), momentum=0.9,
                               clip_value=0.5, t=int(s["step"]), v=s["v"].numpy().copy(),
                               b=s["b"].numpy().copy(), m=s["momentum_buffer"].numpy().copy())
    for grads in saved["gradients"]:
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
            theta[n] = oracles[n].step(theta[n], grads[n].numpy(), OPTIONS["lr"])
        opt.step()
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.detach().numpy(), theta[n], rtol=1e-12, atol=1e-14)


def test_state_dict_without_the_format_key_loads_as_format_1() -> None:
    saved = checkpoint()
    for group in saved["optimizer"]["param_groups"]:
        del group[FORMAT_KEY]  # as written before the key existed
    model, opt = restored()
    opt.load_state_dict(saved["optimizer"])
    continue_with_saved_gradients(model, opt, saved)


@pytest.mark.parametrize("version, match", [(FORMAT + 1, "newer amosopt.*Upgrade"),
                                            (99, "newer amosopt"), (0, "expected an int"),
                                            ("1", "expected an int"), (1.0, "expected an int"),
                                            (True, "expected an int")])
def test_unknown_format_raises_and_changes_nothing(version, match) -> None:
    saved = checkpoint()
    saved["optimizer"]["param_groups"][0][FORMAT_KEY] = version
    model, opt = restored()
    before = snapshot(opt), copy.deepcopy(opt.param_groups[0]["slot_shape"])
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(saved["optimizer"])
    assert_same(snapshot(opt), before[0])
    assert opt.param_groups[0]["slot_shape"] == before[1]


MARKER = _NOT_PLAIN  # what state_dict writes for a spec that is not plain data


@pytest.mark.parametrize("slot_shape, name, found", [
    # (7, 1) saved; (1, 5) would broadcast against the saved (7, 1) slot without an error
    ({r"0\.weight": "(1, SHAPE[1])", r".*": "SHAPE"}, "0.weight", r"v of shape \(7, 1\)"),
    (None, "0.weight", r"rule gives \(7, 5\)"),  # full-size slots wanted
    (lambda n, s: {"0.weight": (7, 1), "2.weight": (1, 7)}.get(n, ()), "2.bias",
     r"rule gives \(\).*v of shape \(3,\)"),  # the first mismatch is named
])
def test_slots_of_another_shape_than_the_loaders_rules_give_raise(slot_shape, name, found
                                                                 ) -> None:
    """A checkpoint saved with a spec that is not plain data (a callable, auto_amos's table),
    loaded by an optimizer whose own rules give other slot shapes."""
    saved = checkpoint()
    saved["optimizer"]["param_groups"][0]["slot_shape"] = MARKER
    model, opt = restored(slot_shape=slot_shape)
    with pytest.raises(ValueError, match=rf"parameter '{name}'.*{found}"):
        opt.load_state_dict(saved["optimizer"])
    assert not opt.state  # nothing loaded
    assert opt.param_groups[0]["slot_shape"] is slot_shape


def test_the_loaders_own_rules_load_a_checkpoint_saved_with_a_marker() -> None:
    saved = checkpoint()
    saved["optimizer"]["param_groups"][0]["slot_shape"] = MARKER
    model, opt = restored()
    opt.load_state_dict(saved["optimizer"])
    assert opt.param_groups[0]["slot_shape"] == OPTIONS["slot_shape"]
    continue_with_saved_gradients(model, opt, saved)


def test_a_saved_plain_table_wins_as_torch_hyperparameters_do() -> None:
    """A saved rule table is plain data and overrides the loader's, like every saved
    hyper-parameter in torch; the slots match it, so the checkpoint loads."""
    model, opt = restored(slot_shape=None)
    saved = checkpoint()
    opt.load_state_dict(saved["optimizer"])
    assert opt.param_groups[0]["slot_shape"] == OPTIONS["slot_shape"]
    continue_with_saved_gradients(model, opt, saved)


def test_a_saved_table_that_disagrees_with_the_saved_slots_raises() -> None:
    saved = checkpoint()
    saved["optimizer"]["param_groups"][0]["slot_shape"] = {r".*": "()"}
    model, opt = restored()
    with pytest.raises(ValueError, match=r"parameter '0\.weight'.*rule gives \(\)"):
        opt.load_state_dict(saved["optimizer"])
    assert not opt.state


def test_a_slot_tensor_of_another_shape_than_its_saved_slot_shape_raises() -> None:
    """A state edited by hand (or by a tool) whose tensors disagree with its own slot_shape."""
    saved = checkpoint()
    saved["optimizer"]["state"][2]["b"] = torch.zeros(3, 1, dtype=torch.float64)
    saved["optimizer"]["state"][3]["momentum_buffer"] = torch.zeros(1, dtype=torch.float64)
    model, opt = restored()
    with pytest.raises(ValueError, match=r"parameter '2\.weight'.*b of shape \(3, 1\)"):
        opt.load_state_dict(saved["optimizer"])
    del saved["optimizer"]["state"][2]
    with pytest.raises(ValueError, match=r"parameter '2\.bias'.*momentum_buffer of shape \(1,\)"):
        opt.load_state_dict(saved["optimizer"])


def test_unnamed_parameters_are_named_by_position() -> None:
    model = mlp()
    opt = Amos(model.parameters(), lr=0.1, eta=0.5, slot_shape=None)
    opt.load_state_dict(Amos(model.parameters(), lr=0.1, eta=0.5).state_dict())  # no state yet
    saved = checkpoint()["optimizer"]
    del saved["param_groups"][0]["param_names"]
    saved["param_groups"][0]["slot_shape"] = MARKER  # this optimizer's full-size slots apply
    with pytest.raises(ValueError, match=r"parameter 'params\[0\] of param group 0'"):
        opt.load_state_dict(saved)
