"""amosopt.compare.optimizers: each optimizer of the study, its schedule against the closed form,
and the scales of the study's model against the paper's explicit rules."""

import math

import pytest

torch = pytest.importorskip("torch")

from amosopt.compare import optimizers  # noqa: E402
from amosopt.compare.optimizers import OPTIMIZERS, OptimizerSettings, build  # noqa: E402
from amosopt.suggest import suggest  # noqa: E402

RECIPE = suggest(10**6, 32, steps=20)  # the short-budget recipe: a warm-up and a cooldown
SETTINGS = OptimizerSettings(budget=20, xi=0.01, beta=0.98, clip_value=1.0, eta=0.5,
                             slot_shape=None, warmup_fraction=0.1, cooldown_fraction=0.25,
                             recipe=RECIPE)


def _rates(name: str, value: float, steps: int = 22) -> list[float]:
    model = torch.nn.Linear(3, 2)
    built = build(name, model, value, SETTINGS)
    rates = []
    for _ in range(steps):
        rates.append(built.lr())
        model.weight.grad = torch.ones_like(model.weight)
        model.bias.grad = torch.ones_like(model.bias)
        built.optimizer.step()
        if built.scheduler is not None:
            built.scheduler.step()
    return rates


def _wsd(s: int, total: int, warmup: int, cooldown: int) -> float:
    if s >= total:
        return 0.0
    if s >= total - cooldown:
        return (total - s) / cooldown
    return min(1.0, (s + 1) / warmup) if warmup else 1.0


def test_amos_is_constant_at_multiplier_times_suggested_xi():
    assert _rates("amos", 2.0, 20) == pytest.approx([0.02] * 20, rel=1e-12)


def test_amos_wsd_cools_down_over_the_last_fraction():
    want = [0.01 * _wsd(s, 20, 0, 5) for s in range(22)]
    assert _rates("amos-wsd", 1.0) == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("second_moment", ["slot", "row-col"])
def test_amos_takes_the_studys_second_moment(second_moment):
    from dataclasses import replace

    run = replace(SETTINGS, amos_second_moment=second_moment,
                  slot_shape=lambda name, shape: (shape[0], 1) if len(shape) == 2 else ())
    for name in ("amos", "amos-wsd"):
        model = torch.nn.Linear(3, 2)
        optimizer = build(name, model, 1.0, run).optimizer
        assert optimizer.param_groups[0]["second_moment"] == second_moment
        model.weight.grad, model.bias.grad = torch.ones(2, 3), torch.ones(2)
        optimizer.step()
        # a (1, 3) column factor beside the weight's (2, 1) slot; none beside the bias's ()
        assert [tuple(optimizer.state[p]["u"].shape) if "u" in optimizer.state[p] else None
                for p in model.parameters()] == ([(1, 3), None] if second_moment == "row-col"
                                                 else [None, None])
    assert SETTINGS.amos_second_moment == "slot"


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_linear_warmup_then_linear_decay_to_zero(name):
    # warm-up 2 steps (10% of 20): (s+1)/2, then (20 - s) / 18, 0 at the budget
    want = [3e-3 * ((s + 1) / 2 if s < 2 else max(0.0, (20 - s) / 18)) for s in range(22)]
    assert _rates(name, 3e-3) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_adamw_wsd_has_the_same_cooldown_as_amos_wsd():
    want = [3e-3 * _wsd(s, 20, 2, 5) for s in range(22)]
    assert _rates("adamw-wsd", 3e-3) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_schedulefree_switches_modes():
    pytest.importorskip("schedulefree")
    model = torch.nn.Linear(3, 2)
    built = build("schedulefree", model, 1e-2, SETTINGS)
    built.train_mode()
    for _ in range(3):
        model.weight.grad = torch.ones_like(model.weight)
        model.bias.grad = torch.ones_like(model.bias)
        built.optimizer.step()
    trained = model.weight.detach().clone()
    built.eval_mode()  # the averaged weights: differ from the training iterate
    assert not torch.equal(model.weight, trained)
    built.train_mode()
    assert torch.allclose(model.weight, trained)


@pytest.mark.parametrize("name, momentum", [("amos-recipe", 0.9), ("amos-recipe-nomom", 0.0)])
def test_amos_recipe_is_the_suggestion_for_the_budget(name, momentum):
    assert (RECIPE.recipe, RECIPE.warmup_steps, RECIPE.cooldown_steps) == ("short-budget", 1, 4)
    expected = [2.0 * RECIPE.xi * _wsd(s, 20, 1, 4) for s in range(22)]
    assert _rates(name, 2.0) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    group = build(name, torch.nn.Linear(3, 2), 1.0, SETTINGS).optimizer.param_groups[0]
    assert group["momentum"] == momentum
    for key in ("beta", "clip_value", "decay_ratio", "second_moment"):
        assert group[key] == getattr(RECIPE, key), key
    assert "decay ratio 0.25, row-col second moment" in optimizers.schedule_description(
        name, SETTINGS)


def test_amos_recipe_builds_what_amosopt_torch_recipe_builds():
    from amosopt.torch import auto_scales, recipe

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    x = torch.randn(2, 4)
    scales = auto_scales(model, x)
    settings = OptimizerSettings(budget=20, xi=1.0, beta=0.9, clip_value=1.0, eta=scales.eta,
                                 slot_shape=scales.slot_shape, recipe=RECIPE)
    ours = build("amos-recipe", model, 1.0, settings).optimizer
    theirs, _ = recipe(model, RECIPE, x)
    tables = ("params", "eta", "slot_shape")  # two tables with the same entries
    for a, b in zip(ours.param_groups, theirs.param_groups):
        assert {k: v for k, v in a.items() if k not in tables} == {
            k: v for k, v in b.items() if k not in tables}
        for name, p in zip(a["param_names"], a["params"]):
            assert a["eta"](name, p.shape) == b["eta"](name, p.shape)
            assert a["slot_shape"](name, p.shape) == b["slot_shape"](name, p.shape)


def test_every_optimizer_builds_and_names_its_hyper_parameter():
    for name, info in OPTIMIZERS.items():
        if not info.available():
            continue
        built = build(name, torch.nn.Linear(3, 2), 1.0 if info.hyper != "lr" else 1e-3,
                      SETTINGS)
        assert isinstance(built.optimizer, torch.optim.Optimizer)
        assert info.hyper in ("xi multiplier", "lr")
        assert optimizers.schedule_description(name, SETTINGS)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build("sgd", torch.nn.Linear(3, 2), 1.0, SETTINGS)


# The paper's explicit rules for a pre-LN transformer (paper.md §2; the authors' T5/BERT
# configs), written out as the oracle of the automatic scales on the study's language model.
LM_ETA_RULES = [
    (r"(tok|pos)_emb\.weight$", "sqrt(2 / SHAPE[1])"),
    (r".*norm.*\.weight$", 1.0),
    (r".*\.bias$", 0.5),
    (r".*mlp\.proj\.weight$", "sqrt(2 / SHAPE[1])"),  # its input comes after GELU
    (r".*\.weight$", "sqrt(1 / SHAPE[1])"),  # input normalised (LayerNorm) or linear
]
LM_SLOT_RULES = [
    (r"(tok|pos)_emb\.weight$", "(SHAPE[0], 1)"),  # one slot per row (token / position)
    (r".*norm.*", ()),
    (r".*\.bias$", ()),
    (r".*\.weight$", "(SHAPE[0], 1)"),  # one slot per output unit, fan-in shared
]


def test_auto_scales_of_the_study_model_agree_with_the_papers_rules():
    from amosopt.compare.models import ByteLM
    from amosopt.rules import Rules
    from amosopt.torch import auto_scales

    model = ByteLM(seq_len=16, d_model=16, n_layers=1, n_heads=2)
    scales = auto_scales(model, example_inputs=torch.zeros(2, 16, dtype=torch.long))
    eta, slot = Rules(LM_ETA_RULES), Rules(LM_SLOT_RULES)
    for name, p in model.named_parameters():
        assert scales[name].eta == pytest.approx(eta(name, tuple(p.shape))), name
        assert tuple(scales[name].slot_shape) == tuple(slot(name, tuple(p.shape))), name
    assert scales["blocks.0.mlp.proj.weight"].eta == pytest.approx(math.sqrt(2 / 64))
    assert scales["tok_emb.weight"].eta == pytest.approx(math.sqrt(2 / 16))


def test_layer_kinds_of_the_study_models():
    from amosopt.compare.models import ByteLM
    from amosopt.compare.train import layer_kind

    kinds = {name: layer_kind(name) for name, _ in
             ByteLM(seq_len=16, d_model=16, n_layers=1, n_heads=2).named_parameters()}
    assert kinds["tok_emb.weight"] == kinds["pos_emb.weight"] == "embedding"
    assert kinds["blocks.0.attn.qkv.weight"] == "attention"
    assert kinds["blocks.0.mlp.proj.weight"] == "mlp"
    assert kinds["blocks.0.norm1.weight"] == kinds["norm_f.weight"] == "norm"
    assert kinds["blocks.0.mlp.fc.bias"] == "bias" and kinds["head.weight"] == "other"
    assert layer_kind("conv1.weight") == "conv" and layer_kind("fc2.weight") == "mlp"


def test_adamw_takes_the_studys_weight_decay_and_beta1():
    from dataclasses import replace

    run = replace(SETTINGS, adamw_weight_decay=0.1, adamw_beta1=0.95)
    for name in ("adamw", "adamw-wsd"):
        group = build(name, torch.nn.Linear(3, 2), 1e-3, run).optimizer.param_groups[0]
        assert group["weight_decay"] == 0.1 and group["betas"] == (0.95, 0.999)
    group = build("adamw", torch.nn.Linear(3, 2), 1e-3, SETTINGS).optimizer.param_groups[0]
    assert group["weight_decay"] == 0.01 and group["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("k", [1.0, 4.0])
def test_eta_scale_keeps_the_initial_step_and_weakens_the_decay(k):
    """--amos-eta-scale k: eta x k, xi / k, so xi * eta is unchanged and xi^2 (the decay)
    is k^2 times smaller; the studies recorded before the option resume (fingerprint)."""
    from amosopt.compare import CompareConfig
    from amosopt.compare.prepare import seed_setup
    from amosopt.suggest import suggest

    config = CompareConfig(task="digits", budgets=[10], amos_eta_scale=k).resolve()
    base = seed_setup({**vars(config), "amos_eta_scale": 1.0}, 0, 10).settings
    scaled = seed_setup(vars(config), 0, 10).settings
    examples = seed_setup(vars(config), 0, 10).task.train_examples
    assert base.xi == suggest(examples, config.batch_size, "mean").xi
    assert scaled.xi == pytest.approx(base.xi / k, rel=1e-15)
    for name, shape in [("conv1.weight", (16, 1, 3, 3)), ("fc2.bias", (10,))]:
        assert scaled.eta(name, shape) == pytest.approx(k * base.eta(name, shape), rel=1e-15)
        assert scaled.xi * scaled.eta(name, shape) == pytest.approx(
            base.xi * base.eta(name, shape), rel=1e-12)
    assert ("amos_eta_scale" in config.fingerprint()) == (k != 1)


def test_amos_takes_the_studys_decay_ratio():
    from dataclasses import replace

    for name in ("amos", "amos-wsd"):
        group = build(name, torch.nn.Linear(3, 2), 1.0,
                      replace(SETTINGS, amos_decay_ratio=0.25)).optimizer.param_groups[0]
        assert group["decay_ratio"] == 0.25
    assert build("amos", torch.nn.Linear(3, 2), 1.0, SETTINGS).optimizer.param_groups[0][
        "decay_ratio"] == 1.0


def _lm_model():
    from amosopt.compare.models import ByteLM

    torch.manual_seed(0)
    return ByteLM(d_model=32, n_heads=4, n_layers=2, seq_len=16)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    from amosopt.compare.optimizers import muon_split

    model = _lm_model()
    names = {id(p): n for n, p in model.named_parameters()}
    hidden, rest = muon_split(model)
    assert sorted(names[id(p)] for p in hidden) == sorted(
        f"blocks.{i}.{layer}.weight" for i in range(2)
        for layer in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"))
    assert {names[id(p)] for p in rest} >= {"tok_emb.weight", "pos_emb.weight", "head.weight",
                                            "head.bias", "norm_f.weight"}
    assert len(hidden) + len(rest) == len(names)


def test_muon_steps_and_schedules_as_muon_and_adamw_apart():
    """One step of the study's muon equals torch's Muon on the hidden matrices and AdamW on the
    rest, each stepped on its own; the WSD scheduler moves both parts' rates."""
    import copy

    from amosopt.compare.optimizers import muon_split

    model = _lm_model()
    twin = copy.deepcopy(model)
    built = build("muon", model, 3e-3, SETTINGS)
    hidden, rest = muon_split(twin)
    apart = [torch.optim.Muon(hidden, lr=3e-3 * 0.5, weight_decay=0.01,
                              adjust_lr_fn="match_rms_adamw"),
             torch.optim.AdamW(rest, lr=3e-3 * 0.5, weight_decay=0.01)]
    tokens = torch.randint(0, 256, (4, 16))
    for m in (model, twin):
        m(tokens).square().mean().backward()
    built.optimizer.step()  # warm-up step 1 of 2: half the rate, as for `apart`
    for opt in apart:
        opt.step()
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)
    built.scheduler.step()
    assert [g["lr"] for g in built.optimizer.param_groups] == pytest.approx([3e-3, 3e-3])
    assert {id(g) for g in built.optimizer.param_groups} == {
        id(g) for part in built.optimizer.parts for g in part.param_groups}


def test_adam_mini_shares_second_moments_by_row_and_token():
    pytest.importorskip("adam_mini")
    from amosopt.compare.train import state_bytes

    model = _lm_model()
    built = build("adam-mini", model, 3e-3, SETTINGS)
    model(torch.randint(0, 256, (4, 16))).square().mean().backward()
    built.optimizer.step()
    state = {n: built.optimizer.state[p] for n, p in model.named_parameters()}
    assert state["blocks.0.attn.qkv.weight"]["vmean"].shape == (96, 1)  # one per output row
    assert state["tok_emb.weight"]["vmean"].shape == (256, 1)  # one per token
    assert state["head.weight"]["vmean"].shape == (256, 1)
    adamw = build("adamw", _lm_model(), 3e-3, SETTINGS)
    for p in adamw.optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    adamw.optimizer.step()
    assert 0.45 < state_bytes(built.optimizer) / state_bytes(adamw.optimizer) < 0.6
