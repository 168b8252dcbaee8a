"""The first mistakes a new PyTorch user makes get an early error (or warning) that names the
fix, and change nothing."""

from __future__ import annotations

import warnings

import pytest
import torch

from amosopt.rules import UnmatchedRuleWarning
from amosopt.torch import Amos, auto_amos, auto_scales
from tests.test_torch.conftest import assert_same, mlp, snapshot, train


def test_missing_eta_points_to_auto_amos() -> None:
    with pytest.raises(ValueError, match=r"Amos needs eta.*auto_amos\(model, lr=\.\.\.\)"):
        Amos(mlp().parameters(), lr=0.05)


def test_missing_lr_names_it() -> None:
    with pytest.raises(ValueError, match=r"Amos needs lr, the global learning rate xi"):
        Amos(mlp().parameters(), eta=0.5)


@pytest.mark.parametrize("kwargs, fix", [
    (dict(weight_decay=0.01), r"weight_decay=: Amos decays the weights itself.*extra_l2="),
    (dict(betas=(0.9, 0.999)), r"betas=: Amos has one beta.*momentum="),
    (dict(eps=1e-8), r"eps=: epsilon="),
    (dict(foo=1), r"foo=: not an argument of Amos"),
])
def test_arguments_of_other_optimizers_name_what_amos_takes(kwargs, fix) -> None:
    with pytest.raises(TypeError, match=fix):
        Amos(mlp().named_parameters(), lr=0.05, eta=0.5, **kwargs)


def test_rule_table_without_a_value_fails_in_the_constructor() -> None:
    with pytest.raises(ValueError, match=r"No rule matches parameter '0\.weight' with shape "
                                         r"\(7, 5\).*encoder"):
        Amos(mlp().named_parameters(), lr=0.05, eta={r"encoder\..*": 0.1})


def test_rule_that_matches_no_parameter_warns_with_the_nearest_names() -> None:
    with pytest.warns(UnmatchedRuleWarning, match=r"eta: the rule '0\\\\.weigth' is never used: "
                      r"it matches no parameter.*Nearest parameter names: '0\.weight'"):
        Amos(mlp().named_parameters(), lr=0.05, eta={r"0\.weigth": 0.1, r".*": 0.5})
    with pytest.warns(UnmatchedRuleWarning, match=r"slot_shape: the rule '2\\\\.bias' is never "
                      r"used: every parameter it matches is taken by an earlier rule"):
        Amos(mlp().named_parameters(), lr=0.05, eta=0.5,
             slot_shape={r".*": "()", r"2\.bias": "()"})


def test_unused_rule_is_an_error_in_strict_mode() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnmatchedRuleWarning)
        with pytest.raises(UnmatchedRuleWarning, match="weigth"):
            Amos(mlp().named_parameters(), lr=0.05, eta={r"0\.weigth": 0.1, r".*": 0.5})


def test_rules_used_by_some_group_do_not_warn() -> None:
    model = mlp()
    table = {r"0\.": 0.1, r"2\.": 0.2}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnmatchedRuleWarning)
        Amos([{"params": list(model[0].named_parameters(prefix="0"))},
              {"params": list(model[2].named_parameters(prefix="2"))}], lr=0.05, eta=table)


def test_eta_override_that_matches_nothing_warns_and_fallback_names_eta_overrides() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with pytest.warns(UnmatchedRuleWarning, match=r"eta_overrides: the rule '0\.weigth' is "
                      r"never used.*Nearest parameter names: '0\.weight'"):
        table = auto_scales(model, eta_overrides={r"0.weigth": 1.0})
    assert table["0.weight"].eta == pytest.approx(0.5)  # unchanged: sqrt(1/4)

    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3, 2))

    with pytest.warns(UserWarning, match=r"eta_overrides=\{regex: eta\}") as record:
        auto_scales(Odd())
    assert not any("(overrides=" in str(w.message) for w in record)


def test_add_param_group_after_auto_amos_says_how_to_give_the_group_scales() -> None:
    model, head = mlp(), torch.nn.Linear(3, 2).double()
    optimizer = auto_amos(model, lr=0.05)
    for params in (list(head.parameters()), list(head.named_parameters(prefix="head"))):
        with pytest.raises(ValueError, match=r"give the new group its own scales: table = "
                                             r"auto_scales\(module\)"):
            optimizer.add_param_group({"params": params})
    assert len(optimizer.param_groups) == 1
    table = auto_scales(head)  # the fix the message gives
    optimizer.add_param_group({"params": list(head.named_parameters()),
                               "eta": table.eta, "slot_shape": table.slot_shape})
    head(model(torch.randn(4, 5, dtype=torch.float64))).sum().backward()
    optimizer.step()
    assert optimizer.state[head.weight]["eta"] == table["weight"].eta


def test_loading_an_adamw_state_dict_names_the_fix_and_changes_nothing() -> None:
    model = mlp()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train(model, adamw, range(2))
    optimizer = auto_amos(model, lr=0.05)
    train(model, optimizer, range(2))
    before = snapshot(optimizer)
    with pytest.raises(ValueError, match=r"no eta, beta \(it has betas, lr, weight_decay\).*"
                                         r"another optimizer.*start Amos afresh"):
        optimizer.load_state_dict(adamw.state_dict())
    assert_same(before, snapshot(optimizer))
    assert "betas" not in optimizer.param_groups[0]


def test_state_of_a_model_with_other_names_is_refused() -> None:
    model = mlp()
    optimizer = auto_amos(model, lr=0.05)
    train(model, optimizer, range(2))
    renamed = torch.nn.Sequential()
    for name, module in (("inp", torch.nn.Linear(5, 7)), ("act", torch.nn.Tanh()),
                         ("out", torch.nn.Linear(7, 3))):
        renamed.add_module(name, module.double())
    other = auto_amos(renamed, lr=0.05)
    with pytest.raises(ValueError, match=r"other names \(4 differ; the first: saved '0\.weight', "
                                         r"here 'inp\.weight'\)"):
        other.load_state_dict(optimizer.state_dict())
    assert not other.state and other.param_groups[0]["param_names"][0] == "inp.weight"
    # a wrapper's prefix (torch.compile's _orig_mod., DDP's module.) is the same parameter
    plain = Amos(model.named_parameters(), lr=0.05, eta=0.5)
    train(model, plain, range(2))
    wrapped = Amos([("_orig_mod." + n, p) for n, p in mlp().named_parameters()], lr=0.05,
                   eta=0.5)
    wrapped.load_state_dict(plain.state_dict())
    assert len(wrapped.state) == 4


@pytest.mark.parametrize("scheduler", [
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10),
    lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.05),
])
def test_scheduler_cycling_momentum_is_refused_before_anything_changes(scheduler) -> None:
    model = mlp()
    optimizer = auto_amos(model, lr=0.05)
    train(model, optimizer, range(1))
    scheduler(optimizer)
    before = snapshot(optimizer)
    with pytest.raises(ValueError, match=r"Invalid momentum \(param group 0\): a scheduler "
                                         r"cycles it.*cycle_momentum=False"):
        train(model, optimizer, range(1, 2))
    assert_same(before, snapshot(optimizer))


def test_one_cycle_without_cycling_momentum_keeps_amos_without_momentum() -> None:
    model = mlp()
    optimizer = auto_amos(model, lr=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=10,
                                                cycle_momentum=False)
    train(model, optimizer, range(3), sched)
    assert optimizer.param_groups[0]["momentum"] == 0.0
    assert all("momentum_buffer" not in s for s in optimizer.state.values())
