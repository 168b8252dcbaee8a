"""The generic behaviours that PyTorch's own optimizer suite (``test/test_optim.py`` over
``OptimizerInfo``) checks for every built-in optimizer, run against ``amosopt.torch.Amos``.

Written from the behaviours, not copied; each test names the torch test it follows.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from amosopt.torch import Amos

OPTIONS = [
    dict(lr=0.05, eta=0.5),
    dict(lr=0.05, eta={r".*weight": "sqrt(1 / SHAPE[1])", r".*": 0.5},
         slot_shape={r".*weight": "(SHAPE[0], 1)", r".*": "()"}, momentum=0.9, clip_value=1.0),
    dict(lr=0.05, eta=0.5, beta=0.99, extra_l2=0.01, foreach=False),
]
IDS = ["plain", "rules-momentum-clip", "loop-extra_l2"]


def model(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(),
                               torch.nn.Linear(4, 2)).to(dtype)


def named(options: dict) -> bool:
    return isinstance(options.get("eta"), dict)


def build(net: torch.nn.Module, options: dict) -> Amos:
    params = net.named_parameters() if named(options) else net.parameters()
    return Amos(params, **options)


def loss_fn(net: torch.nn.Module, t: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(t)
    dtype = next(net.parameters()).dtype
    x = torch.randn(8, 5, generator=g, dtype=torch.float64).to(dtype)
    return (net(x) ** 2).mean()


def train(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for t in steps:
        opt.zero_grad()
        loss_fn(net, t).backward()
        opt.step()


def same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_state_dict_deterministic(options):
    """torch: test_state_dict_deterministic. A copy loaded from the state_dict continues
    exactly as the original."""
    net_a = model()
    opt_a = build(net_a, options)
    train(net_a, opt_a, range(5))
    net_b = copy.deepcopy(net_a)
    opt_b = build(net_b, options)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    train(net_a, opt_a, range(5, 10))
    train(net_b, opt_b, range(5, 10))
    assert same_params(net_a, net_b)
    assert str(opt_a.state_dict()) == str(opt_b.state_dict())


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_save_load_equality_with_weights_only(options):
    """torch: test_save_load_equality_with_weights_only. Through a file with torch.load's
    defaults (weights_only=True)."""
    net = model()
    opt = build(net, options)
    train(net, opt, range(3))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    fresh = build(copy.deepcopy(net), options)
    fresh.load_state_dict(loaded)
    for (i, state), (j, other) in zip(opt.state_dict()["state"].items(),
                                      fresh.state_dict()["state"].items(), strict=True):
        assert i == j and state.keys() == other.keys()
        for key, value in state.items():
            assert torch.equal(value, other[key]) if torch.is_tensor(value) \
                else value == other[key]


def test_can_be_printed_deepcopied_and_pickled():
    """torch: test_optimizer_can_be_printed, test_deepcopy_copies_all_public_attrs,
    test_can_be_pickled (via OptimizerInfo)."""
    net = model()
    opt = build(net, OPTIONS[1])
    train(net, opt, range(2))
    text = repr(opt)
    assert text.startswith("Amos (") and "lr: 0.05" in text and "momentum: 0.9" in text
    clone = copy.deepcopy(opt)
    assert opt.defaults.items() <= clone.defaults.items() and len(clone.state) == len(opt.state)
    public = lambda o: {k for k in vars(o) if not k.startswith("_")}  # noqa: E731
    assert public(clone) == public(opt)
    restored = pickle.loads(pickle.dumps(opt))
    assert opt.defaults.items() <= restored.defaults.items()
    assert [len(g["params"]) for g in restored.param_groups] == [4]


def test_tensor_lr():
    """torch: test_tensor_lr. A 0-d tensor lr gives the float lr's numbers, and a scheduler
    may change it in place."""
    net_a, net_b = model(), model()
    opt_a = Amos(net_a.parameters(), lr=0.05, eta=0.5)
    opt_b = Amos(net_b.parameters(), lr=torch.tensor(0.05, dtype=torch.float64), eta=0.5)
    train(net_a, opt_a, range(5))
    train(net_b, opt_b, range(5))
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    sched = torch.optim.lr_scheduler.StepLR(opt_b, step_size=1, gamma=0.5)
    train(net_b, opt_b, range(5, 6))
    sched.step()
    assert float(opt_b.param_groups[0]["lr"]) == pytest.approx(0.025)


def test_param_groups_lr():
    """torch: test_param_groups_lr. A group's lr overrides the default; a group with lr 0 does
    not move."""
    net = model()
    frozen, moving = list(net[0].parameters()), list(net[2].parameters())
    opt = Amos([{"params": frozen, "lr": 0.0}, {"params": moving}], lr=0.05, eta=0.5)
    before = [p.detach().clone() for p in frozen + moving]
    train(net, opt, range(3))
    assert all(torch.equal(a, p) for a, p in zip(before[:2], frozen))
    assert not any(torch.equal(a, p) for a, p in zip(before[2:], moving))


def test_separate_optimizers_equal_one_with_groups():
    """torch: test_param_groups_weight_decay / the 'separate optimizers' check of
    _test_derived_optimizers: two optimizers over two halves equal one with two groups."""
    net_a, net_b = model(), model()
    opt_a = Amos([{"params": net_a[0].parameters(), "eta": 0.3},
                  {"params": net_a[2].parameters(), "lr": 0.02}], lr=0.05, eta=0.5)
    first = Amos(net_b[0].parameters(), lr=0.05, eta=0.3)
    second = Amos(net_b[2].parameters(), lr=0.02, eta=0.5)
    for t in range(5):
        for opt in (opt_a, first, second):
            opt.zero_grad()
        loss_fn(net_a, t).backward()
        loss_fn(net_b, t).backward()
        opt_a.step()
        first.step()
        second.step()
    assert same_params(net_a, net_b)


def test_step_is_noop_when_params_have_no_grad():
    """torch: test_step_is_noop_when_params_have_no_grad: no gradient, no change, no state."""
    net = model()
    opt = build(net, OPTIONS[1])
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters()))
    assert len(opt.state) == 0


def test_step_is_noop_for_zero_grads():
    """torch: test_step_is_noop_for_zero_grads. A zero gradient gives a zero Amos update
    (the weight decay 0.5 * gamma is 0 when g^2 = 0)."""
    net = model()
    opt = build(net, OPTIONS[0])
    before = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters()))


def test_closure_and_zero_grad():
    """torch: the closure contract of Optimizer.step and test_zero_grad: step(closure)
    returns the closure's loss; zero_grad sets gradients to None by default."""
    net = model()
    opt = build(net, OPTIONS[0])

    def closure():
        opt.zero_grad()
        loss = loss_fn(net, 0)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    loss_fn(net, 1).backward()
    opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in net.parameters())


def test_maximize_equals_minimizing_the_negative():
    """torch: test_forloop_goes_right_direction with maximize=True: maximizing L equals
    minimizing -L, bit for bit."""
    net_a, net_b = model(), model()
    opt_a = Amos(net_a.parameters(), lr=0.05, eta=0.5, maximize=True, momentum=0.9)
    opt_b = Amos(net_b.parameters(), lr=0.05, eta=0.5, momentum=0.9)
    for t in range(5):
        opt_a.zero_grad()
        opt_b.zero_grad()
        loss_fn(net_a, t).backward()
        (-loss_fn(net_b, t)).backward()
        opt_a.step()
        opt_b.step()
    assert same_params(net_a, net_b)
    assert loss_fn(net_a, 0).item() > loss_fn(model(), 0).item()


@pytest.mark.parametrize("options", OPTIONS[:2], ids=IDS[:2])
def test_forloop_goes_right_direction(options):
    """torch: test_forloop_goes_right_direction: the loss goes down."""
    net = model()
    opt = build(net, options)
    start = loss_fn(net, 0).item()
    for _ in range(30):
        opt.zero_grad()
        loss_fn(net, 0).backward()
        opt.step()
    assert loss_fn(net, 0).item() < 0.5 * start


def test_foreach_matches_forloop_on_mixed_dtypes():
    """torch: test_foreach_matches_forloop (mixed dtypes: float64, float32, bfloat16)."""
    def mixed():
        torch.manual_seed(1)
        return [torch.randn(4, 3, dtype=torch.float64, requires_grad=True),
                torch.randn(5, dtype=torch.float32, requires_grad=True),
                torch.randn(3, 2, dtype=torch.bfloat16, requires_grad=True)]

    runs = []
    for foreach in (False, True):
        params = mixed()
        opt = Amos(params, lr=0.05, eta=0.5, momentum=0.9, clip_value=1.0, foreach=foreach)
        for t in range(5):
            g = torch.Generator().manual_seed(t)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            opt.step()
        runs.append(params)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_load_state_dict_casts_to_the_parameters_device_and_dtype():
    """torch: test_load_nontensor_step / the dtype casting of Optimizer.load_state_dict: a
    float64 model loads a float32 model's state; slots follow the parameters (float32 slots
    stay float32 for 16-bit parameters)."""
    net32 = model(torch.float32)
    opt32 = build(net32, OPTIONS[0])
    train(net32, opt32, range(3))
    net64 = model(torch.float64)
    opt64 = build(net64, OPTIONS[0])
    opt64.load_state_dict(opt32.state_dict())
    for p in net64.parameters():
        assert opt64.state[p]["v"].dtype == torch.float64
    train(net64, opt64, range(3, 5))  # and it steps
    net16 = model(torch.bfloat16)
    opt16 = build(net16, OPTIONS[0])
    opt16.load_state_dict(opt32.state_dict())
    assert all(opt16.state[p]["v"].dtype == torch.float32 for p in net16.parameters())


def test_step_hooks():
    """torch: test_step_pre_hook, test_step_post_hook, test_step_all_hooks."""
    net = model()
    opt = build(net, OPTIONS[0])
    calls = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(
        lambda o, args, kwargs: calls.append("global"))
    try:
        train(net, opt, range(2))
    finally:
        handle.remove()
    pre.remove()
    post.remove()
    train(net, opt, range(2, 3))
    assert calls == ["global", "pre", "post"] * 2


def test_state_dict_hooks():
    """torch: test_state_dict_pre_hook, test_state_dict_post_hook,
    test_load_state_dict_pre_hook_and_prepend, test_load_state_dict_post_hook."""
    net = model()
    opt = build(net, OPTIONS[0])
    train(net, opt, range(2))
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("sd-pre"))

    def post(o, state_dict):
        seen.append("sd-post")
        state_dict["extra"] = 1
        return state_dict

    opt.register_state_dict_post_hook(post)
    state = opt.state_dict()
    assert seen == ["sd-pre", "sd-post"] and state["extra"] == 1

    other = build(copy.deepcopy(net), OPTIONS[0])
    order = []

    def pre_load(o, state_dict):
        order.append("pre")
        state_dict = dict(state_dict)
        state_dict.pop("extra", None)
        return state_dict

    other.register_load_state_dict_pre_hook(pre_load)
    other.register_load_state_dict_pre_hook(lambda o, sd: order.append("first"), prepend=True)
    other.register_load_state_dict_post_hook(lambda o: order.append("post"))
    other.load_state_dict(state)
    assert order == ["first", "pre", "post"]


def test_loads_an_older_state_dict_without_param_names():
    """torch: test_can_load_older_state_dict: a state_dict from before param_names were saved
    (torch < 2.6 style) loads and continues."""
    net = model()
    opt = build(net, OPTIONS[1])
    train(net, opt, range(3))
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        group.pop("param_names", None)
    clone_net = copy.deepcopy(net)
    clone = build(clone_net, OPTIONS[1])
    clone.load_state_dict(old)
    train(net, opt, range(3, 6))
    train(clone_net, clone, range(3, 6))
    assert same_params(net, clone_net)


# ------------------------------------------------------------------------------------------
# Param groups and checkpoints: each test failed on the code before its fix


def test_param_groups_alone_supply_the_required_lr():
    """torch: the ``required`` pattern of the built-in optimizers (their tests build optimizers
    from param groups only)."""
    w = torch.zeros(3, requires_grad=True)
    opt = Amos([{"params": [w], "lr": 0.01, "eta": 0.5}])
    w.grad = torch.ones(3)
    opt.step()
    assert opt.param_groups[0]["lr"] == 0.01 and not torch.equal(w, torch.zeros(3))
    with pytest.raises(ValueError, match="lr"):
        Amos([{"params": [torch.zeros(2, requires_grad=True)], "eta": 0.5}])
    with pytest.raises(ValueError, match="eta"):
        Amos([{"params": [torch.zeros(2, requires_grad=True)], "lr": 0.1}])


@pytest.mark.parametrize("foreach", [False, True])
def test_load_nontensor_step(foreach):
    """torch: test_load_nontensor_step: a state_dict whose per-parameter step is a plain number
    (older or converted checkpoints) loads and continues like the tensor one."""
    net_a = model()
    opt_a = Amos(net_a.parameters(), lr=0.05, eta=0.5, foreach=foreach)
    train(net_a, opt_a, range(3))
    state = copy.deepcopy(opt_a.state_dict())
    for entry in state["state"].values():
        entry["step"] = float(entry["step"])
    net_b = copy.deepcopy(net_a)
    opt_b = Amos(net_b.parameters(), lr=0.05, eta=0.5, foreach=foreach)
    opt_b.load_state_dict(state)
    train(net_a, opt_a, range(3, 6))
    train(net_b, opt_b, range(3, 6))
    assert same_params(net_a, net_b)


def test_load_state_dict_pre_hook_remapping_bf16_state_is_kept():
    """A pre-hook that reorders the state (torch's recipe for reordered models) decides the
    final state, for bfloat16 parameters too (their slots stay float32)."""
    a = torch.zeros(3, 2, dtype=torch.bfloat16, requires_grad=True)
    b = torch.zeros(3, 2, dtype=torch.bfloat16, requires_grad=True)
    opt = Amos([a, b], lr=0.1, eta=0.5)
    a.grad = torch.full_like(a, 1.0)
    b.grad = torch.full_like(b, 3.0)
    opt.step()
    saved = opt.state_dict()
    v_a, v_b = saved["state"][0]["v"].clone(), saved["state"][1]["v"].clone()

    other = Amos([torch.zeros_like(b, requires_grad=True), torch.zeros_like(a, requires_grad=True)],
                 lr=0.1, eta=0.5)

    def swap(optimizer, state_dict):
        state_dict = copy.deepcopy(state_dict)
        state_dict["state"] = {0: state_dict["state"][1], 1: state_dict["state"][0]}
        return state_dict

    other.register_load_state_dict_pre_hook(swap)
    other.load_state_dict(saved)
    first, second = (other.state[p] for p in other.param_groups[0]["params"])
    assert first["v"].dtype == torch.float32
    assert torch.equal(first["v"], v_b) and torch.equal(second["v"], v_a)


def _specs():
    from amosopt.rules import Rules
    from amosopt.torch import auto_scales

    table = auto_scales(model())
    return {
        "float": dict(eta=0.5, slot_shape=None),
        "rule-dicts": dict(eta={r".*weight": "sqrt(1 / SHAPE[1])", r".*": 0.5},
                           slot_shape={r".*weight": "(SHAPE[0], 1)", r".*": "()"}),
        "Rules": dict(eta=Rules({r".*": 0.5}), slot_shape=Rules({r".*": "()"})),
        "ScaleTable": dict(eta=table.eta, slot_shape=table.slot_shape),
        "callables": dict(eta=lambda name, shape: 0.5, slot_shape=lambda name, shape: ()),
    }


@pytest.mark.parametrize("kind", [
    "float", "rule-dicts", "callables",
    "Rules", "ScaleTable",
])
def test_state_dict_is_plain_data_for_every_kind_of_spec(kind, tmp_path):
    """Whatever eta and slot_shape are, the state_dict loads with torch.load's
    defaults (weights_only=True) into an optimizer built the same way, and continues exactly."""
    net = model()
    opt = Amos(net.named_parameters(), lr=0.05, momentum=0.9, **_specs()[kind])
    train(net, opt, range(3))
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt")  # weights_only=True
    net_b = copy.deepcopy(net)
    opt_b = Amos(net_b.named_parameters(), lr=0.05, momentum=0.9, **_specs()[kind])
    opt_b.load_state_dict(loaded)
    assert opt_b.param_groups[0]["eta"] is not None
    train(net, opt, range(3, 6))
    train(net_b, opt_b, range(3, 6))
    assert same_params(net, net_b)
