"""Bad input gets a clear, early error naming the argument or parameter, and changes nothing."""

from __future__ import annotations

import math

import pytest
import torch

from amosopt.torch import Amos
from tests.test_torch.conftest import (
    TABLE_ETA,
    TABLE_SLOT,
    assert_same,
    batch,
    mlp,
    snapshot,
    train,
)

CONSTRUCTION = [
    (dict(lr=-0.1), r"Invalid lr: -0\.1"),
    (dict(lr=float("nan")), r"Invalid lr"),
    (dict(beta=1.0), r"Invalid beta: 1\.0; it must be in \[0, 1\)"),
    (dict(beta=-0.1), r"Invalid beta"),
    (dict(momentum=1.0), r"Invalid momentum: 1\.0"),
    (dict(momentum=-0.5), r"Invalid momentum"),
    (dict(clip_value=0.0), r"Invalid clip_value: 0\.0"),
    (dict(clip_value=-1.0), r"Invalid clip_value"),
    (dict(eta=0.0), r"Invalid eta: 0\.0; eta, the expected magnitude"),
    (dict(eta=-1.0), r"Invalid eta"),
    (dict(eta=math.inf), r"Invalid eta: inf"),
    (dict(eta=math.nan), r"Invalid eta: nan"),
    (dict(eta="0.5"), r"Invalid eta"),
    (dict(eta={r"(": 1.0}), r"Invalid regex"),
    (dict(slot_shape=3), r"Invalid slot_shape"),
    (dict(c_coef=-0.25), r"Invalid c_coef: -0\.25"),
    (dict(d_coef=-0.25), r"Invalid d_coef"),
    (dict(extra_l2=-1e-3), r"Invalid extra_l2"),
    (dict(epsilon=0.0), r"Invalid epsilon: 0\.0"),
    (dict(epsilon=-1e-8), r"Invalid epsilon"),
    (dict(foreach="yes"), r"Invalid foreach"),
]


@pytest.mark.parametrize("kwargs, message", CONSTRUCTION)
def test_construction_rejects(kwargs: dict, message: str) -> None:
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    options = dict(lr=0.1, eta=0.5)
    options.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Amos(model.named_parameters(), **options)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta=1.5), r"Invalid beta \(param group 1\): 1\.5"),
    (dict(eta=-2.0), r"Invalid eta \(param group 1\): -2\.0"),
    (dict(lr=-1.0), r"Invalid lr \(param group 1\)"),
])
def test_add_param_group_validates_overrides(kwargs: dict, message: str) -> None:
    model = mlp()
    extra = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = Amos(model.named_parameters(), lr=0.1, eta=0.5)
    train(model, opt, range(2))
    before = snapshot(opt)
    with pytest.raises(ValueError, match=message):
        opt.add_param_group({"params": [("extra", extra)], **kwargs})
    assert len(opt.param_groups) == 1
    train(model, opt, range(2, 3))  # still usable
    assert not torch.equal(before[0][0], next(model.parameters()))


def _assert_step_fails_cleanly(opt, error, message, steps_before=2, first=None):
    """Runs ``steps_before`` good steps, breaks the gradient with ``first``, and checks that
    ``step`` raises and leaves parameters and every state tensor exactly as they were."""
    model = opt._test_model
    train(model, opt, range(steps_before))
    x, y = batch(99)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    first(model)
    before = snapshot(opt)
    with pytest.raises(error, match=message):
        opt.step()
    assert_same(before, snapshot(opt))


def _opt(**kwargs):
    model = mlp()
    options = dict(lr=0.1, eta=TABLE_ETA, slot_shape=TABLE_SLOT, momentum=0.9)
    options.update(kwargs)
    opt = Amos(model.named_parameters(), **options)
    opt._test_model = model
    return opt


def _set_grad(name: str, value: float):
    def apply(model):
        dict(model.named_parameters())[name].grad[0] = value
    return apply


@pytest.mark.parametrize("steps_before", [0, 2])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_gradient_raises_before_any_change(steps_before, foreach, value) -> None:
    opt = _opt(foreach=foreach)
    _assert_step_fails_cleanly(opt, FloatingPointError,
                               r"non-finite gradient .* parameter '2\.weight' with shape \(3, 7\)"
                               r".*no parameter or optimizer state was changed",
                               steps_before, _set_grad("2.weight", value))


def test_squared_gradient_overflow_raises() -> None:
    model = mlp(dtype=torch.float32)
    opt = Amos(model.named_parameters(), lr=0.1, eta=0.5)
    model[0].bias.grad = torch.full((7,), 1e30)
    before = model[0].bias.detach().clone()
    with pytest.raises(FloatingPointError, match="'0.bias'"):
        opt.step()
    assert torch.equal(before, model[0].bias) and not opt.state


def test_clipping_turns_inf_into_clip_value_but_nan_still_raises() -> None:
    opt = _opt(clip_value=1.0)
    model = opt._test_model
    train(model, opt, range(1))
    x, y = batch(5)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    model[0].bias.grad[0] = math.inf  # clipped element-wise to 1.0, as in the reference
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    opt2 = _opt(clip_value=1.0)
    _assert_step_fails_cleanly(opt2, FloatingPointError, "'0.bias'", 1,
                               _set_grad("0.bias", math.nan))


RULE_RESULTS = [
    (dict(eta=lambda n, s: -1.0 if n == "2.bias" else 0.5),
     r"Invalid eta for parameter '2\.bias' with shape \(3,\)"),
    (dict(eta={r".*weight": 0.5}), r"No rule matches parameter '0\.bias' with shape \(7,\)"),
    (dict(slot_shape=lambda n, s: (2, 1) if n == "2.weight" else ()),
     r"Invalid slot shape \(2, 1\) for parameter '2\.weight' with shape \(3, 7\)"),
    (dict(slot_shape={r".*": "SHAPE[5]"}), r"index 5 is out of range"),
]


@pytest.mark.parametrize("kwargs, message", RULE_RESULTS)
def test_bad_rule_results_raise_at_construction(kwargs, message) -> None:
    """Names and shapes are known at construction: a rule table (or callable) that leaves a
    parameter without a valid value fails there, naming the parameter."""
    with pytest.raises(ValueError, match=message + r".*\(param group 0\)"):
        _opt(**kwargs)


@pytest.mark.parametrize("kwargs, message", RULE_RESULTS)
def test_bad_rule_results_set_after_construction_raise_at_step_and_change_nothing(
        kwargs, message) -> None:
    opt = _opt()
    opt.param_groups[0].update(kwargs)  # bypasses the constructor's check: step still checks
    _assert_step_fails_cleanly(opt, ValueError, message, 0, lambda model: None)
    assert not opt.state


def test_sparse_gradient_is_rejected() -> None:
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = Amos(emb.named_parameters(), lr=0.1, eta=0.5)
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError,
                       match=r"sparse gradients \(parameter 'weight'\).*sparse=False"):
        opt.step()
    assert torch.equal(before, emb.weight) and not opt.state


def test_complex_parameter_is_rejected() -> None:
    z = torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))
    opt = Amos([("z", z)], lr=0.1, eta=0.5)
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match=r"complex .*'z'.*view_as_real"):
        opt.step()
    assert torch.equal(z.detach(), torch.ones(3, dtype=torch.complex64)) and not opt.state


def test_unnamed_error_message_says_how_to_pass_names() -> None:
    with pytest.raises(ValueError, match=r"eta is a rule table.*model\.named_parameters\(\), "
                                         r"\(name, tensor\) pairs"):
        Amos(mlp().parameters(), lr=0.1, eta=TABLE_ETA)
