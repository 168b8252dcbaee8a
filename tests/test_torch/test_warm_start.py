"""The warm start from pretrained weights (``b0``, ``auto_scales(pretrained=True)``) and the
scales of ``peft`` LoRA adapters, in PyTorch.

Oracles: the NumPy transcription of the paper's update (:class:`tests.oracles.NumpyAmos`, whose
``b`` starts at ``b0``), the first step computed by hand from the paper's equations, RMS values
computed here with NumPy, and the LoRA ``B`` scale written out from its definition.
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from amosopt.hyperparameters import WARM_START_B0, WARM_START_ETA_FLOOR  # noqa: E402
from amosopt.scales import LORA_RELATIVE_UPDATE  # noqa: E402
from amosopt.torch import Amos, auto_amos, auto_scales  # noqa: E402
from tests.oracles import NumpyAmos  # noqa: E402
from tests.test_torch.conftest import batch, mlp, train  # noqa: E402


def _rms(tensor: torch.Tensor) -> float:
    x = tensor.detach().double().numpy()
    return float(np.sqrt(np.mean(x * x)))


# ------------------------------------------------------------------------------------------------
# b0 in the update


def test_first_step_by_hand() -> None:
    """One scalar, one step, from the paper's equations with b_0 = 50: v_1 = (1 - beta) g^2,
    so v_hat_1 = g^2; c_1 = (1 + c sqrt(xi) b_0)^(-1/2), d_1 = (1 + d sqrt(xi eta) b_0)^(-1),
    gamma_1 = c_1 xi^2, theta_1 = theta_0 - d_1 (xi eta sign(g) + gamma_1 / 2 theta_0),
    b_1 = b_0 + gamma_1 (1 + b_0)."""
    xi, eta, b0, theta0, g = 0.04, 0.3, 50.0, 2.0, 0.5
    p = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    opt = Amos([p], lr=xi, eta=eta, b0=b0, beta=0.9, foreach=False)
    p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    c1 = 1 / math.sqrt(1 + 0.25 * math.sqrt(xi) * b0)
    d1 = 1 / (1 + 0.25 * math.sqrt(xi * eta) * b0)
    gamma1 = c1 * xi**2
    assert p.item() == pytest.approx(theta0 - d1 * (xi * eta + 0.5 * gamma1 * theta0), rel=1e-12)
    assert opt.state[p]["b"].item() == pytest.approx(b0 + gamma1 * (1 + b0), rel=1e-12)
    # the warm start shrinks the step: d_1 < 1 for b_0 > 0
    assert d1 < 0.6


@pytest.mark.parametrize("foreach", [False, None])
def test_b0_matches_the_numpy_transcription(foreach) -> None:
    """30 steps of a small MLP, b0 per parameter by a rule table, against NumpyAmos."""
    model = mlp(0)
    b0 = {r"0\.weight": 80.0, r"2\.weight": 5.0, r".*": 0.0}
    eta = {r".*weight": 0.2, r".*": 0.5}
    slots = {r"0\.weight": (7, 1), r"2\.weight": (1, 7), r".*": ()}
    opt = Amos(model.named_parameters(), lr=0.03, eta=eta, slot_shape=slots, b0=b0,
               beta=0.99, momentum=0.9, foreach=foreach)
    oracles = {"0.weight": NumpyAmos(0.2, (7, 1), beta=0.99, momentum=0.9, b0=80.0),
               "2.weight": NumpyAmos(0.2, (1, 7), beta=0.99, momentum=0.9, b0=5.0),
               "0.bias": NumpyAmos(0.5, (), beta=0.99, momentum=0.9),
               "2.bias": NumpyAmos(0.5, (), beta=0.99, momentum=0.9)}
    expected = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    for t in range(30):
        x, y = batch(t)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
        opt.step()
        for n in expected:
            expected[n] = oracles[n].step(expected[n], grads[n], 0.03)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.detach().numpy(), expected[n], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(opt.state[p]["b"].numpy(),
                                   np.broadcast_to(oracles[n].b, opt.state[p]["b"].shape),
                                   rtol=1e-10)


def test_off_by_default_is_the_papers_start() -> None:
    model = mlp(0)
    opt = auto_amos(model, lr=0.03)
    assert all(g["b0"] == 0.0 for g in opt.param_groups)
    train(model, opt, range(1))
    # one step from b_0 = 0: b_1 = gamma_1 = c_1 xi^2 M(g^2) / v_hat_1 = xi^2 (1 - beta)^0 ...
    # with v_hat_1 = M(g^2): exactly xi^2 wherever the gradient is nonzero
    for p in model.parameters():
        np.testing.assert_allclose(opt.state[p]["b"].numpy(), 0.03**2, rtol=1e-12)


def test_bad_b0_fails_early() -> None:
    model = mlp(0)
    with pytest.raises(ValueError, match="b0"):
        Amos(model.parameters(), lr=0.01, eta=0.1, b0=-1.0)
    with pytest.raises(ValueError, match="b0.*'0.weight'"):
        Amos(model.named_parameters(), lr=0.01, eta=0.1, b0={r"0\.weight": float("nan"),
                                                            r".*": 0.0})
    with pytest.raises(ValueError, match="needs parameter names"):
        Amos(model.parameters(), lr=0.01, eta=0.1, b0={r".*": 1.0})


# ------------------------------------------------------------------------------------------------
# eta from the weights


def _pretrained_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).double()
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # "pretrained": 3 x its init
        model[0].bias.normal_(0, 0.2)
        model[2].weight.mul_(1e-3)  # nearly zero: the floor
        model[2].bias.zero_()  # exactly zero: the automatic scale, a fresh start
    return model


def test_pretrained_scales_by_the_rules() -> None:
    model = _pretrained_mlp()
    auto = auto_scales(model)
    table = auto_scales(model, pretrained=True)
    assert list(table) == list(auto)
    w0, b0_, w2 = model[0].weight, model[0].bias, model[2].weight
    assert table["0.weight"].eta == pytest.approx(_rms(w0), rel=1e-6)
    assert table["0.bias"].eta == pytest.approx(_rms(b0_), rel=1e-6)
    floor = WARM_START_ETA_FLOOR * math.sqrt(2 / 32)  # input after GELU: sqrt(2 / fan-in)
    assert _rms(w2) < floor and table["2.weight"].eta == pytest.approx(floor, rel=1e-12)
    assert table["2.bias"].eta == 0.5 and table["2.bias"].b0 == 0.0  # zero: automatic
    for name in ("0.weight", "0.bias", "2.weight"):
        assert table[name].b0 == WARM_START_B0
        assert table[name].slot_shape == auto[name].slot_shape
        assert table[name].reason.startswith("pretrained, RMS")
    assert "below the floor" in table["2.weight"].reason
    assert auto["0.weight"].b0 == 0.0  # not pretrained: the paper's start
    other = auto_scales(model, pretrained=True, b0=7.0, eta_floor=0.0)
    assert other["0.weight"].b0 == 7.0
    assert other["2.weight"].eta == pytest.approx(_rms(w2), rel=1e-6)


def test_pretrained_overrides_apply_last() -> None:
    table = auto_scales(_pretrained_mlp(), pretrained=True, eta_overrides={r"0\.weight": 0.25})
    assert table["0.weight"].eta == 0.25 and table["0.weight"].b0 == WARM_START_B0


def test_pretrained_bad_input() -> None:
    model = _pretrained_mlp()
    with pytest.raises(ValueError, match="b0"):
        auto_scales(model, pretrained=True, b0=-1.0)
    with pytest.raises(ValueError, match="eta_floor"):
        auto_scales(model, pretrained=True, eta_floor=float("nan"))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="'0.weight'.*non-finite"):
        auto_scales(model, pretrained=True)


def test_auto_amos_pretrained_starts_b_at_b0() -> None:
    model = _pretrained_mlp()
    opt = auto_amos(model, lr=0.02, pretrained=True)
    x = torch.randn(8, 16, dtype=torch.float64)
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    table = opt.scales
    for name, p in model.named_parameters():
        state = opt.state[p]
        assert state["eta"] == table[name].eta
        gamma = state["b"].sub(table[name].b0).div(1 + table[name].b0)  # b_1 = b_0 + gamma (1+b_0)
        assert float(gamma.max()) <= 0.02**2 * (1 + 1e-9)  # gamma_1 = c_1 xi^2 <= xi^2


def test_resume_is_exact() -> None:
    """k steps, state_dict, a fresh model and optimizer built the same way (pretrained=True,
    now from the trained weights), load, continue: equal to the uninterrupted run. Each
    parameter's eta and b come from the checkpoint, not from the weights at resume time."""
    def build(model):
        return auto_amos(model, lr=0.02, pretrained=True, momentum=0.9)

    straight = _pretrained_mlp()
    opt = build(straight)
    x = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def run(model, optimizer, steps):
        for t in steps:
            optimizer.zero_grad()
            model(x[t % 8 * 8:(t % 8 + 1) * 8]).sin().sum().backward()
            optimizer.step()

    first = _pretrained_mlp()
    first_opt = build(first)
    run(first, first_opt, range(5))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = _pretrained_mlp()
    resumed.load_state_dict(saved["model"])
    resumed_opt = build(resumed)
    assert resumed_opt.scales["0.weight"].eta != first_opt.scales["0.weight"].eta  # moved
    resumed_opt.load_state_dict(saved["optimizer"])
    run(resumed, resumed_opt, range(5, 12))

    run(straight, opt, range(12))
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
        assert resumed_opt.state[b]["eta"] == opt.state[a]["eta"]


# ------------------------------------------------------------------------------------------------
# LoRA adapters of peft models

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _gpt2():
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2,
                                     n_positions=32, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                           fan_in_fan_out=True)
    return peft.get_peft_model(model, lora), {"input_ids": torch.zeros(1, 8, dtype=torch.long)}


def _bert():
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    lora = peft.LoraConfig(r=8, lora_alpha=4, task_type="SEQ_CLS",
                           target_modules=["query", "value", "dense"])
    return peft.get_peft_model(model, lora), {"input_ids": torch.zeros(1, 8, dtype=torch.long)}


@pytest.mark.parametrize("make", [_gpt2, _bert], ids=["gpt2", "bert"])
@pytest.mark.parametrize("pretrained,kappa", [(False, None), (True, None), (False, 0.4)])
def test_lora_scales(make, pretrained, kappa) -> None:
    model, inputs = make()
    table = (auto_scales(model, inputs, pretrained=pretrained) if kappa is None else
             auto_scales(model, inputs, pretrained=pretrained, lora_update=kappa))
    kappa = LORA_RELATIVE_UPDATE if kappa is None else kappa
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert list(table) == trainable  # frozen base weights left out
    adapters = [n for n in trainable if ".lora_" in n]
    assert len(adapters) >= 8 and all(".base_layer." not in n for n in table)
    for name in adapters:
        prefix, matrix, adapter, _ = name.rsplit(".", 3)
        layer = model.get_submodule(prefix)
        a = layer.lora_A[adapter].weight
        shape = tuple(model.get_parameter(name).shape)
        scale = table[name]
        assert scale.slot_shape == (shape[0], 1) and scale.b0 == 0.0  # adapters start fresh
        if matrix == "lora_A":
            assert scale.eta == pytest.approx(_rms(a), rel=1e-6)
            assert "LoRA A" in scale.reason
        else:
            r = a.shape[0]
            s = layer.lora_alpha[adapter] / r  # alpha / r
            w = layer.get_base_layer().weight
            # s * B * A has entries of RMS eta_B * rms(A) * sqrt(r) * s = kappa * rms(W)
            expected = kappa * _rms(w) / (s * _rms(a) * math.sqrt(r))
            assert scale.eta == pytest.approx(expected, rel=1e-6)
            assert "LoRA B" in scale.reason and f"at {kappa:g} x the adapted" in scale.reason
    others = [n for n in trainable if n not in adapters]  # the classifier (modules_to_save)
    for name in others:
        assert (table[name].b0 == WARM_START_B0) == (pretrained and
                                                     _rms(model.get_parameter(name)) > 0)


def test_lora_update_reaches_the_optimizer_and_the_trainer_recipe() -> None:
    """``lora_update`` through auto_amos and trainer_optimizer: only the zero-initialised
    factor's eta changes, by the ratio of the two values."""
    transformers = pytest.importorskip("transformers")
    from amosopt.torch.integrations import trainer_optimizer

    model, inputs = _gpt2()
    plain = auto_amos(model, 0.01, inputs).scales
    scaled = auto_amos(model, 0.01, inputs, lora_update=0.3).scales
    args = transformers.TrainingArguments("unused", max_steps=10, learning_rate=0.3,
                                          max_grad_norm=0.0, report_to=[])
    optimizer, _ = trainer_optimizer(model, args, example_inputs=inputs, lora_update=0.3)
    assert list(plain) == list(scaled) == list(optimizer.scales)
    for name in plain:
        ratio = 3.0 if ".lora_B." in name else 1.0
        assert scaled[name].eta == pytest.approx(ratio * plain[name].eta, rel=1e-12)
        assert optimizer.scales[name].eta == scaled[name].eta


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf"), "0.4", True])
def test_bad_lora_update_fails_early(bad) -> None:
    model, inputs = _gpt2()
    with pytest.raises(ValueError, match="lora_update.*finite number > 0"):
        auto_amos(model, 0.01, inputs, lora_update=bad)


def test_lora_b_scale_gives_the_relative_update() -> None:
    """The definition checked on tensors: B with entries of RMS eta_B (random signs) makes
    s * B @ A have entries of RMS about kappa * rms(W)."""
    model, inputs = _gpt2()
    table = auto_scales(model, inputs)
    name = "base_model.model.transformer.h.0.mlp.c_fc.lora_B.default.weight"
    layer = model.get_submodule(name.rsplit(".", 3)[0])
    a, w = layer.lora_A["default"].weight, layer.get_base_layer().weight
    b = torch.randn(w.shape[1], 4, generator=torch.Generator().manual_seed(0)).double()
    b *= table[name].eta / _rms(b)
    delta = layer.scaling["default"] * b @ a.double()
    assert _rms(delta) == pytest.approx(LORA_RELATIVE_UPDATE * _rms(w), rel=0.3)


class _EmbedAndProject(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = torch.nn.Embedding(50, 16), torch.nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(self.emb(x))


@pytest.mark.parametrize("dora", [False, True])
def test_embedding_lora_and_dora_magnitude_scales(dora) -> None:
    """An embedding's LoRA swaps the roles (lora_embedding_A (r, V) starts at zero,
    lora_embedding_B (d, r) is random); DoRA's magnitude starts at W's row norms."""
    torch.manual_seed(0)
    model = peft.get_peft_model(_EmbedAndProject(), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["emb", "fc"], use_dora=dora))
    table = auto_scales(model, torch.zeros(1, 3, dtype=torch.long), pretrained=True)
    emb = model.base_model.model.emb
    a, b = emb.lora_embedding_A["default"], emb.lora_embedding_B["default"]
    assert a.abs().max() == 0 and b.abs().max() > 0  # the roles, as peft initialises them
    prefix = "base_model.model.emb."
    scale_a, scale_b = table[prefix + "lora_embedding_A.default"], table[
        prefix + "lora_embedding_B.default"]
    expected = LORA_RELATIVE_UPDATE * _rms(emb.get_base_layer().weight) / (2.0 * _rms(b) * 2.0)
    assert scale_a.eta == pytest.approx(expected, rel=1e-6)  # s = 8/4, sqrt(r) = 2
    assert scale_a.slot_shape == (1, 50) and scale_b.slot_shape == (16, 1)  # a slot per token
    assert scale_b.eta == pytest.approx(_rms(b), rel=1e-6)
    assert scale_a.b0 == scale_b.b0 == 0.0
    # a token's change s * B @ A[:, i], with A's entries of RMS eta_A, has entries of RMS about
    # kappa * rms(W)
    a_drawn = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)).double()
    a_drawn *= scale_a.eta / _rms(a_drawn)
    delta = 2.0 * b.double() @ a_drawn
    assert _rms(delta) == pytest.approx(LORA_RELATIVE_UPDATE * _rms(emb.weight), rel=0.3)
    magnitudes = [n for n in table if "lora_magnitude_vector" in n]
    assert len(magnitudes) == (2 if dora else 0)
    if dora:
        fc = model.base_model.model.fc
        row_norms = fc.get_base_layer().weight.detach().norm(dim=1)
        scale = table["base_model.model.fc.lora_magnitude_vector.default.weight"]
        assert scale.eta == pytest.approx(_rms(row_norms), rel=1e-5)
        assert scale.slot_shape == () and scale.b0 == 0.0 and "DoRA magnitude" in scale.reason
    assert not any(table[n].reason.startswith("guessed") for n in table)


def test_lora_training_changes_only_the_adapters() -> None:
    model, inputs = _gpt2()
    base = copy.deepcopy({n: p.detach().clone() for n, p in model.named_parameters()
                          if not p.requires_grad})
    opt = auto_amos(model, 0.05, inputs, pretrained=True, clip_value=1.0)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n


def test_b0_under_torch_compile_equals_eager() -> None:
    """``nonfinite="skip"`` under torch.compile makes new state before tracing (``_init_group``):
    ``b`` starts at each parameter's ``b0`` there too."""
    b0 = {r"0\.weight": 40.0, r".*": 2.0}
    models = [mlp(0), mlp(0)]
    opts = [Amos(m.named_parameters(), lr=0.03, eta=0.2, b0=b0, nonfinite="skip")
            for m in models]
    compiled = torch.compile(opts[1].step, backend="eager")
    for t in range(3):
        for model, step in zip(models, (opts[0].step, compiled)):
            x, y = batch(t)
            model.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            step()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=name)
        torch.testing.assert_close(opts[1].state[b]["b"], opts[0].state[a]["b"])
    assert float(opts[0].state[models[0][0].weight]["b"].min()) >= 40.0
