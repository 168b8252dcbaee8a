"""Automatic scales for PyTorch models (amosopt.torch.scales).

Every expected value is computed here from the architecture (config, layer sizes) with the
principles written out in closed form, independently of the implementation.
"""

import math
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from amosopt.torch.scales import auto_amos, auto_scales  # noqa: E402


def _assert_table(table, expected):
    assert list(table) == list(expected), "names or order differ"
    for name, (eta, slot) in expected.items():
        assert table[name].eta == pytest.approx(eta, rel=1e-12), (name, table[name].reason)
        assert table[name].slot_shape == slot, (name, table[name].reason)


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------------
# Hugging Face BERT: exactly the authors' table (paper.md section 2.2, in torch layout)

transformers = pytest.importorskip("transformers")

BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            vocab_size=100, max_position_embeddings=32, type_vocab_size=2)


def _bert_expected(model, hidden, intermediate):
    """jestimator's BERT eta_fn / shape_fn, mapped to torch names and (out, in) layout."""
    expected = {}
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.endswith("_embeddings.weight"):
            expected[name] = (math.sqrt(2 / hidden), (shape[0], 1))
        elif name.endswith("LayerNorm.weight"):
            expected[name] = (1.0, ())
        elif name.endswith("bias"):
            expected[name] = (0.5, ())
        elif name.endswith(".output.dense.weight") and ".attention." not in name:
            expected[name] = (math.sqrt(2 / intermediate), (shape[0], 1))
        else:
            assert name.endswith(".weight") and len(shape) == 2, name
            expected[name] = (math.sqrt(1 / hidden), (shape[0], 1))
    return expected


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(transformers.BertConfig(**BERT))


@pytest.mark.parametrize("with_inputs", [False, True])
def test_bert_gets_the_authors_table(bert, with_inputs):
    inputs = {"input_ids": torch.randint(0, 100, (2, 8))} if with_inputs else None
    table = _no_warnings(auto_scales, bert, inputs)
    expected = _bert_expected(bert, BERT["hidden_size"], BERT["intermediate_size"])
    _assert_table(table, expected)
    # the tied MLM decoder appears once, as the word embedding; its bias is the MLM output bias
    assert "cls.predictions.decoder.weight" not in table
    assert table["cls.predictions.bias"].eta == 0.5
    assert "GELU" in table["bert.encoder.layer.0.output.dense.weight"].reason


def test_trace_restores_mode_and_leaves_parameters_alone(bert):
    bert.train()
    before = {n: p.detach().clone() for n, p in bert.named_parameters()}
    auto_scales(bert, {"input_ids": torch.zeros(1, 4, dtype=torch.long)})
    assert bert.training and all(m.training for m in bert.modules())
    assert all(torch.equal(before[n], p) for n, p in bert.named_parameters())
    assert all(p.grad is None for p in bert.parameters())
    bert.eval()


def test_bert_base_memory_matches_the_papers_count():
    """paper.md section 3: BERT-base, vocab 32k: Amos+momentum 50.11% of AdamW, without 0.105%."""
    config = transformers.BertConfig(vocab_size=32000)
    with torch.device("meta"):
        model = transformers.BertForMaskedLM(config)
    memory = auto_scales(model).memory()
    assert round(memory.percent(memory.amos_momentum), 2) == 50.11
    assert round(memory.percent(memory.amos), 3) == 0.105
    assert memory.params == 4 * sum(p.numel() for p in model.parameters())
    # second_moment="row-col": a (1, in) column factor per kernel (Q, K, V, attention output,
    # MLP in and out per layer, and the MLM transform) and a (1, 768) one per embedding table
    # (words, positions, token types); the paper's <= 51% of AdamW's state still holds
    columns = 12 * (4 * 768 + 768 + 3072) + 768 + 3 * 768
    assert memory.columns == 4 * columns
    assert round(memory.percent(memory.row_col_momentum), 2) == 50.14  # 50.11 without u


# ------------------------------------------------------------------------------------------------
# Hugging Face GPT-2 (Conv1D stores (in, out)) and Llama (SwiGLU, RMSNorm)


@pytest.mark.parametrize("with_inputs", [False, True])
def test_gpt2_conv1d_layout(with_inputs):
    d, layers = 32, 2
    config = transformers.GPT2Config(n_embd=d, n_layer=layers, n_head=4, vocab_size=50,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    inputs = torch.zeros(1, 6, dtype=torch.long) if with_inputs else None
    table = _no_warnings(auto_scales, model, inputs)
    expected = {}
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.endswith(("wte.weight", "wpe.weight")):
            expected[name] = (math.sqrt(2 / d), (shape[0], 1))
        elif ".ln_" in name and name.endswith("weight"):
            expected[name] = (1.0, ())
        elif name.endswith("bias"):
            expected[name] = (0.5, ())
        elif name.endswith("mlp.c_proj.weight"):  # input after GELU, fan-in 4d
            expected[name] = (math.sqrt(2 / (4 * d)), (1, d))
        else:  # Conv1D (in, out): fan-in d, one slot per output column
            expected[name] = (math.sqrt(1 / d), (1, shape[1]))
    _assert_table(table, expected)
    assert "lm_head.weight" not in table  # tied to wte


@pytest.mark.parametrize("with_inputs", [False, True])
def test_llama_swiglu_and_rmsnorm(with_inputs):
    d, ffn = 32, 64
    config = transformers.LlamaConfig(hidden_size=d, intermediate_size=ffn, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      vocab_size=50, max_position_embeddings=16)
    model = transformers.LlamaForCausalLM(config)
    inputs = {"input_ids": torch.zeros(1, 5, dtype=torch.long)} if with_inputs else None
    table = _no_warnings(auto_scales, model, inputs)
    for name, p in model.named_parameters():
        shape, scale = tuple(p.shape), table[name]
        if "embed_tokens" in name:
            assert (scale.eta, scale.slot_shape) == (math.sqrt(2 / d), (shape[0], 1))
        elif "norm" in name:
            assert (scale.eta, scale.slot_shape) == (1.0, ())
        elif "down_proj" in name:  # silu(gate) * up: a gated product, k = 2
            assert scale.eta == pytest.approx(math.sqrt(2 / ffn)), scale.reason
        else:
            assert scale.eta == pytest.approx(math.sqrt(1 / d)), (name, scale.reason)
            assert scale.slot_shape == (shape[0], 1)


def _vit():
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=64, image_size=16, patch_size=8)
    return transformers.ViTModel(config), torch.zeros(1, 3, 16, 16)


def _t5():
    config = transformers.T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=4, d_kv=8,
                                   vocab_size=60, feed_forward_proj="gated-gelu")
    ids = torch.zeros(1, 5, dtype=torch.long)
    return transformers.T5ForConditionalGeneration(config), {"input_ids": ids,
                                                               "decoder_input_ids": ids}


def _distilbert():
    config = transformers.DistilBertConfig(dim=32, n_layers=1, n_heads=4, hidden_dim=64,
                                           vocab_size=60)
    return transformers.DistilBertForMaskedLM(config), {"input_ids": torch.zeros(1, 5).long()}


@pytest.mark.parametrize("build, checks", [
    (_vit, {  # ViTMLP registers its activation before fc1: fc1 must still get k = 1
        "embeddings.cls_token": (math.sqrt(2 / 32), (1, 1, 1)),
        "embeddings.position_embeddings": (math.sqrt(2 / 32), (1, 5, 1)),
        "embeddings.patch_embeddings.projection.weight": (math.sqrt(1 / 192), (32, 1, 1, 1)),
        "layers.0.mlp.fc1.weight": (math.sqrt(1 / 32), (64, 1)),
        "layers.0.mlp.fc2.weight": (math.sqrt(2 / 64), (32, 1)),
    }),
    (_t5, {  # relative-position bias table: the authors' 0.5, one slot per bucket
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (0.5, (32, 1)),
        "encoder.block.0.layer.1.DenseReluDense.wo.weight": (math.sqrt(2 / 64), (32, 1)),
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": (math.sqrt(1 / 32), (64, 1)),
        "encoder.block.0.layer.0.layer_norm.weight": (1.0, ()),
        "shared.weight": (math.sqrt(2 / 32), (60, 1)),
    }),
    (_distilbert, {
        "distilbert.transformer.layer.0.ffn.lin2.weight": (math.sqrt(2 / 64), (32, 1)),
        "distilbert.transformer.layer.0.ffn.lin1.weight": (math.sqrt(1 / 32), (64, 1)),
    }),
])
@pytest.mark.parametrize("with_inputs", [False, True])
def test_more_hugging_face_families(build, checks, with_inputs):
    torch.manual_seed(0)
    model, inputs = build()
    table = _no_warnings(auto_scales, model, inputs if with_inputs else None)
    for name, (eta, slot) in checks.items():
        assert table[name].eta == pytest.approx(eta), (name, table[name].reason)
        assert table[name].slot_shape == slot, (name, table[name].reason)


# ------------------------------------------------------------------------------------------------
# Convolutions, attention, transformer layers


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3)
        self.c2 = nn.Conv2d(8, 12, (3, 2), groups=4)
        self.c3 = nn.Conv3d(12, 6, (1, 2, 2), groups=3, bias=False)
        self.up = nn.ConvTranspose2d(6, 4, 2, groups=2)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):  # x: (N, 4, L)
        x = F.relu(self.c1(x))                           # (N, 8, L-2)
        x = x.unsqueeze(-1).expand(-1, -1, -1, 4)        # (N, 8, L-2, 4)
        x = F.max_pool2d(torch.tanh(self.c2(x)), 1)      # tanh: k = 1 for c3
        x = self.c3(x.unsqueeze(2)).squeeze(2)           # (N, 6, ., .)
        x = self.bn(self.up(F.gelu(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("with_inputs", [False, True])
def test_conv_fan_in_groups_and_slots(with_inputs):
    model = ConvNet()
    table = _no_warnings(auto_scales, model, torch.randn(2, 4, 9) if with_inputs else None)
    expected_conv = {
        "c1.weight": (4 * 3, (8, 1, 1), 1),
        "c2.weight": (8 // 4 * 3 * 2, (12, 1, 1, 1), 2),     # after ReLU (through expand)
        "c3.weight": (12 // 3 * 1 * 2 * 2, (6, 1, 1, 1, 1), 1),
        "up.weight": (6 // 2 * 2 * 2, (1, 2, 1, 1), 2),       # (in, out/groups, kh, kw)
    }
    for name, (fan_in, slot, k) in expected_conv.items():
        if not with_inputs and name in ("c2.weight", "up.weight"):
            k = 1  # functional activations are invisible to the heuristic
        assert table[name].eta == pytest.approx(math.sqrt(k / fan_in)), table[name].reason
        assert table[name].slot_shape == slot
    assert (table["bn.weight"].eta, table["bn.bias"].eta, table["c1.bias"].eta) == (1.0, 0.5, 0.5)
    assert table["fc.weight"].eta == pytest.approx(math.sqrt(1 / 4))


def test_sequential_cnn_after_relu_and_pool_heuristic_and_trace_agree():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 4, 3),
                          nn.ReLU(), nn.Flatten(), nn.Dropout(0.1), nn.Linear(4 * 2 * 2, 10))
    plain = auto_scales(model)
    traced = auto_scales(model, torch.randn(1, 1, 10, 10))
    for table in (plain, traced):
        assert table["0.weight"].eta == pytest.approx(math.sqrt(1 / 9))
        assert table["3.weight"].eta == pytest.approx(math.sqrt(2 / 72))  # like MNIST Conv_1
        assert table["7.weight"].eta == pytest.approx(math.sqrt(2 / 16))  # like MNIST Dense_0
        assert table["7.weight"].slot_shape == (10, 1)


@pytest.mark.parametrize("with_inputs", [False, True])
def test_multihead_attention_in_proj(with_inputs):
    e, kdim = 16, 10
    model = nn.ModuleDict({"self": nn.MultiheadAttention(e, 4, bias=True, add_bias_kv=True),
                           "cross": nn.MultiheadAttention(e, 4, kdim=kdim, vdim=kdim)})

    def forward(x, mem):
        y = model["self"](x, x, x)[0]
        return model["cross"](F.relu(y), mem, mem)[0]

    model.forward = forward
    inputs = (torch.randn(3, 2, e), torch.randn(5, 2, kdim)) if with_inputs else None
    table = _no_warnings(auto_scales, model, inputs)
    assert table["self.in_proj_weight"].slot_shape == (3 * e, 1)
    assert table["self.in_proj_weight"].eta == pytest.approx(math.sqrt(1 / e))
    assert table["self.out_proj.weight"].eta == pytest.approx(math.sqrt(1 / e))
    assert table["self.out_proj.weight"].slot_shape == (e, 1)
    assert table["cross.k_proj_weight"].eta == pytest.approx(math.sqrt(1 / kdim))
    assert table["cross.k_proj_weight"].slot_shape == (e, 1)
    k_query = 2 if with_inputs else 1  # query = relu(y): seen by the trace only
    assert table["cross.q_proj_weight"].eta == pytest.approx(math.sqrt(k_query / e))
    for name in ("self.in_proj_bias", "self.bias_k", "self.bias_v", "self.out_proj.bias"):
        assert (table[name].eta, table[name].slot_shape) == (0.5, ())


@pytest.mark.parametrize("activation", ["relu", "gelu", nn.GELU()])
@pytest.mark.parametrize("with_inputs", [False, True])
def test_transformer_encoder(activation, with_inputs):
    d, ffn = 16, 48
    layer = nn.TransformerEncoderLayer(d, 4, ffn, activation=activation, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    table = _no_warnings(auto_scales, model, torch.randn(2, 5, d) if with_inputs else None)
    for i in range(2):
        prefix = f"layers.{i}."
        assert table[prefix + "linear2.weight"].eta == pytest.approx(math.sqrt(2 / ffn))
        assert table[prefix + "linear1.weight"].eta == pytest.approx(math.sqrt(1 / d))
        assert table[prefix + "self_attn.in_proj_weight"].slot_shape == (3 * d, 1)
        assert table[prefix + "self_attn.out_proj.weight"].eta == pytest.approx(math.sqrt(1 / d))
        assert table[prefix + "norm1.weight"].eta == 1.0


# ------------------------------------------------------------------------------------------------
# GLU, tied, frozen, unknown modules


class SwiGLU(nn.Module):
    def __init__(self, d=8, hidden=24, fused=False):
        super().__init__()
        self.fused = fused
        if fused:
            self.w13 = nn.Linear(d, 2 * hidden, bias=False)
        else:
            self.w1 = nn.Linear(d, hidden, bias=False)
            self.w3 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        if self.fused:
            gate, up = self.w13(x).chunk(2, dim=-1)
        else:
            gate, up = self.w1(x), self.w3(x)
        return self.w2(F.silu(gate) * up)


@pytest.mark.parametrize("fused", [False, True])
def test_swiglu_down_projection_gets_k2_from_the_data_flow(fused):
    table = auto_scales(SwiGLU(fused=fused), torch.randn(2, 8))
    assert table["w2.weight"].eta == pytest.approx(math.sqrt(2 / 24))
    assert "gated product" in table["w2.weight"].reason
    first = ["w13.weight"] if fused else ["w1.weight", "w3.weight"]
    for name in first:
        assert table[name].eta == pytest.approx(math.sqrt(1 / 8))


def test_sigmoid_glu_and_plain_products():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out, self.out2 = (nn.Linear(4, 6), nn.Linear(4, 6),
                                                   nn.Linear(6, 2), nn.Linear(6, 2))

        def forward(self, x):
            return self.out(torch.sigmoid(self.a(x)) * self.b(x)) + self.out2(self.a(x) * 2.0)

    table = auto_scales(Gated(), torch.randn(3, 4))
    assert table["out.weight"].eta == pytest.approx(math.sqrt(2 / 6))
    assert table["out2.weight"].eta == pytest.approx(math.sqrt(1 / 6))


def test_gelu_written_out_is_a_gated_product():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 12), nn.Linear(12, 3)

        def forward(self, x):
            h = self.fc1(x)
            h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h**3)))
            return self.fc2(h)

    table = auto_scales(Net(), torch.randn(2, 4))
    assert table["fc2.weight"].eta == pytest.approx(math.sqrt(2 / 12))
    assert "tanh" in table["fc2.weight"].reason


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.body = nn.Linear(8, 8)
        self.frozen = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight
        self.frozen.requires_grad_(False)

    def forward(self, ids):
        return self.head(self.frozen(self.body(self.embed(ids))))


def test_tied_once_and_frozen_skipped():
    model = Tied()
    for table in (auto_scales(model), auto_scales(model, torch.tensor([[1, 2, 3]]))):
        assert list(table) == ["embed.weight", "body.weight", "body.bias"]
        assert table["embed.weight"].eta == pytest.approx(math.sqrt(2 / 8))
        assert table["embed.weight"].slot_shape == (20, 1)


class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 3, 2))
        self.v = nn.Parameter(torch.ones(7))
        self.t = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x.sum() * self.t + self.w.sum() + self.v.sum()


def test_unknown_module_gets_fallback_and_one_warning():
    model = nn.Sequential(nn.Linear(2, 2), Odd())
    with pytest.warns(UserWarning, match="no rule for 3 parameter") as record:
        table = auto_scales(model)
    assert len(record) == 1
    message = str(record[0].message)
    assert "1.w (5, 3, 2)" in message and "1.v (7,)" in message and "1.t ()" in message
    assert table["1.w"].eta == pytest.approx(math.sqrt(1 / 6))
    assert table["1.w"].slot_shape == (5, 1, 1)
    assert (table["1.v"].eta, table["1.v"].slot_shape) == (0.5, ())
    assert table["1.t"].reason.startswith("guessed")
    assert table["0.weight"].eta == pytest.approx(math.sqrt(1 / 2))


def test_unknown_module_weights_found_by_the_trace():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(11, 6))
            self.proj = nn.Parameter(torch.randn(6, 4))    # used as h @ proj: (in, out) layout
            self.kernel = nn.Parameter(torch.randn(3, 6))  # used by F.linear: (out, in)
            self.gain = nn.Parameter(torch.ones(3))
            self.spare = nn.Parameter(torch.ones(5))       # never used

        def forward(self, ids):
            h = F.relu(F.embedding(ids, self.table))
            return (F.layer_norm(F.linear(h, self.kernel), (3,), self.gain).sum()
                    + (h.transpose(0, 1).t() @ self.proj).sum())

    with pytest.warns(UserWarning, match="no rule for 1 parameter.*spare") as record:
        table = auto_scales(Custom(), torch.tensor([1, 2]))
    assert len(record) == 1
    assert table["table"].eta == pytest.approx(math.sqrt(2 / 6))
    assert table["table"].slot_shape == (11, 1)
    assert table["kernel"].eta == pytest.approx(math.sqrt(2 / 6))  # after ReLU
    assert table["kernel"].slot_shape == (3, 1)
    assert table["proj"].eta == pytest.approx(math.sqrt(2 / 6))
    assert table["proj"].slot_shape == (1, 4)
    assert table["gain"].eta == 1.0
    assert table["spare"].reason.startswith("guessed")


def test_heuristic_mlp_output_by_name():
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj = nn.Linear(8, 16), nn.Linear(8, 16)
            self.down_proj = nn.Linear(16, 8)
            self.act_fn = nn.SiLU()

    table = auto_scales(MLP())
    assert table["down_proj.weight"].eta == pytest.approx(math.sqrt(2 / 16))
    assert table["up_proj.weight"].eta == pytest.approx(math.sqrt(1 / 8))


# ------------------------------------------------------------------------------------------------
# Overrides, the optimizer, errors


def test_overrides():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    table = auto_scales(model, eta_overrides={r"2\.weight": 0.05},
                        slot_shape_overrides=[(r"0\.weight", ())])
    assert table["2.weight"].eta == 0.05 and "override" in table["2.weight"].reason
    assert table["2.weight"].slot_shape == (2, 1)
    assert table["0.weight"].slot_shape == () and table["0.weight"].eta == pytest.approx(0.5)
    assert table["0.bias"] == auto_scales(model)["0.bias"]


def test_auto_amos_builds_amos_with_the_table():
    amos_module = pytest.importorskip("amosopt.torch.optimizer")
    model = Tied()
    optimizer = auto_amos(model, 0.01, momentum=0.9, eta_overrides={"body.bias": 0.25})
    assert isinstance(optimizer, amos_module.Amos)
    assert optimizer.scales["body.bias"].eta == 0.25
    model(torch.tensor([[1, 2]])).square().mean().backward()
    frozen = model.frozen.weight.detach().clone()
    optimizer.step()
    assert torch.equal(frozen, model.frozen.weight)
    for name, p in model.named_parameters():
        if p.requires_grad:
            state = optimizer.state[p]
            assert state["eta"] == pytest.approx(optimizer.scales[name].eta)
            assert tuple(state["v"].shape) == (optimizer.scales[name].slot_shape or ())


def test_table_plugs_into_amos_directly():
    amos_module = pytest.importorskip("amosopt.torch.optimizer")
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 1))
    table = auto_scales(model)
    optimizer = amos_module.Amos(model.named_parameters(), 0.1, eta=table.eta,
                                 slot_shape=table.slot_shape)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    assert tuple(optimizer.state[model[2].weight]["v"].shape) == (1, 1)


@pytest.mark.parametrize("bad", [{"eta": 1.0}, {"slot_shape": None}])
def test_auto_amos_refuses_eta_and_slot_shape(bad):
    with pytest.raises(TypeError, match="overrides"):
        auto_amos(nn.Linear(2, 2), 0.1, **bad)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        auto_scales({"w": torch.zeros(2)})
    model = nn.Linear(3, 2)
    model.train()
    with pytest.raises(ValueError, match="example_inputs failed"):
        auto_scales(model, torch.zeros(4, 5))
    assert model.training


# ------------------------------------------------------------------------------------------
# engines that flatten parameters: a clear error instead of wrong scales

FSDP1_SCRIPT = """
import os, warnings, torch, torch.distributed as dist
warnings.simplefilter("ignore")
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
dist.init_process_group("gloo", rank=0, world_size=1)
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from amosopt.torch import auto_scales
model = FSDP(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
             device_id=torch.device("cpu"))
try:
    auto_scales(model)
    print("no error")
except ValueError as error:
    print(error)
dist.destroy_process_group()
"""


def test_fsdp1_flat_parameter_is_refused():
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", FSDP1_SCRIPT], capture_output=True, text=True,
                            env=dict(os.environ, PORT=str(port), PYTHONPATH=str(root)),
                            cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout.strip().splitlines()[-1]
    assert "_flat_param" in out and "FlatParameter" in out and "fully_shard" in out, out


def test_flattened_parameters_are_refused():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    model[2].weight = torch.nn.Parameter(model[2].weight.detach().flatten())  # a 1-D shard
    with pytest.raises(ValueError, match=r"'2\.weight' \(shape \(8,\)\) is a 1-D tensor, but a "
                                         "Linear weight"):
        auto_scales(model)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    model[0].weight.ds_shape = (4, 8)  # how DeepSpeed ZeRO-3 marks a partitioned parameter
    with pytest.raises(ValueError, match="DeepSpeed ZeRO partition"):
        auto_scales(model)


def test_amos_refuses_flattened_parameters_at_its_first_step():
    from amosopt.torch import Amos

    flat = torch.nn.Parameter(torch.zeros(46))
    opt = Amos([("_fsdp_wrapped_module._flat_param", flat)], lr=0.1, eta=0.5)
    flat.grad = torch.ones(46)
    with pytest.raises(ValueError, match="FlatParameter"):
        opt.step()
    assert torch.equal(flat, torch.zeros(46)) and not opt.state[flat]
    shard = torch.nn.Parameter(torch.zeros(8))
    shard.ds_shape = (4, 8)  # a DeepSpeed ZeRO partition of a (4, 8) weight
    opt = Amos([shard], lr=0.1, eta=0.5)
    shard.grad = torch.ones(8)
    with pytest.raises(ValueError, match="DeepSpeed ZeRO partition"):
        opt.step()
