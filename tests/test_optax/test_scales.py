"""Automatic scales for flax parameter trees (amosopt.optax.scales).

Expected values are computed here from the architecture, independently of the implementation.
"""

import math
import warnings

import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
flax = pytest.importorskip("flax")
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

from amosopt.optax.scales import auto_scales  # noqa: E402

HIDDEN, HEADS, INTERMEDIATE, VOCAB, POSITIONS, LAYERS = 32, 4, 64, 50, 16, 2


class Layer(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.MultiHeadDotProductAttention(HEADS, name="attention")(x, x)
        x = nn.LayerNorm(name="attention_layer_norm")(x + y)
        h = nn.gelu(nn.Dense(INTERMEDIATE, name="dense1")(x))
        h = nn.Dense(HIDDEN, name="dense2")(h)  # jestimator: mlp_block/dense2
        return nn.LayerNorm(name="layer_norm")(x + h)


class MlpBlockLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.MultiHeadDotProductAttention(HEADS, name="attention")(x, x)
        x = nn.LayerNorm(name="attention_layer_norm")(x + y)

        class MlpBlock(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.Dense(HIDDEN, name="dense2")(nn.gelu(nn.Dense(INTERMEDIATE,
                                                                        name="dense1")(x)))

        return nn.LayerNorm(name="layer_norm")(x + MlpBlock(name="mlp_block")(x))


class BertMLM(nn.Module):
    """A BERT-like masked LM in flax, laid out like jestimator's models/bert."""

    @nn.compact
    def __call__(self, ids):
        word = nn.Embed(VOCAB, HIDDEN, name="word_embeddings")
        positions = jnp.arange(ids.shape[-1])
        x = word(ids) + nn.Embed(POSITIONS, HIDDEN, name="position_embeddings")(positions)
        x = x + nn.Embed(2, HIDDEN, name="token_type_embeddings")(jnp.zeros_like(ids))
        x = nn.LayerNorm(name="embeddings_layer_norm")(x)
        for i in range(LAYERS):
            x = MlpBlockLayer(name=f"layer_{i}")(x)
        x = nn.LayerNorm(name="mlm_layer_norm")(nn.gelu(nn.Dense(HIDDEN, name="mlm_dense")(x)))
        bias = self.param("bias", nn.initializers.zeros, (VOCAB,))  # the MLM output bias
        return word.attend(x) + bias


def _expected_bert(params):
    """jestimator's BERT eta_fn / shape_fn (paper.md section 2.2), flax layout."""
    expected = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = tuple(k.key for k in path)
        shape = leaf.shape
        if name[-1] == "embedding":
            expected[name] = (math.sqrt(2 / HIDDEN), (shape[0], 1))
        elif name[-1] == "scale":
            expected[name] = (1.0, ())
        elif name[-1] == "bias":
            expected[name] = (0.5, ())
        elif name[-3:] == ("mlp_block", "dense2", "kernel"):
            expected[name] = (math.sqrt(2 / INTERMEDIATE), (1, shape[1]))
        else:
            assert name[-1] == "kernel", name
            # one slot per output unit: the fan-in axes are 1
            if name[-2] in ("query", "key", "value"):
                slot = (1,) + shape[1:]
            else:
                slot = (1,) * (len(shape) - 1) + (shape[-1],)
            expected[name] = (math.sqrt(1 / HIDDEN), slot)
    return expected


@pytest.fixture(scope="module")
def bert():
    model = BertMLM()
    ids = jnp.zeros((2, 8), jnp.int32)
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), ids)["params"], ids


def _assert_table(table, expected):
    assert list(table) == list(expected)
    for name, (eta, slot) in expected.items():
        assert table[name].eta == pytest.approx(eta, rel=1e-12), (name, table[name].reason)
        assert table[name].slot_shape == slot, (name, table[name].reason)


@pytest.mark.parametrize("with_inputs", [False, True])
def test_flax_bert_gets_the_authors_table(bert, with_inputs):
    model, params, ids = bert
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        if with_inputs:
            table = auto_scales(params, model, ids)
        else:
            table = auto_scales(params)
    _assert_table(table, _expected_bert(params))
    out = table[("layer_0", "attention", "out", "kernel")]
    assert out.slot_shape == (1, 1, HIDDEN) and f"fan-in {HIDDEN}" in out.reason


def test_flax_bert_table_drives_amos(bert):
    from amosopt.optax import amos

    _, params, _ = bert
    table = auto_scales(params)
    optimizer = amos(0.01, eta_fn=table.eta, shape_fn=table.slot_shape)
    state = next(s for s in optimizer.init(params) if hasattr(s, "v"))
    for path, v in jax.tree_util.tree_flatten_with_path(state.v)[0]:
        name = tuple(k.key for k in path)
        assert v.shape == table[name].slot_shape, name
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))


def test_mlp_without_mlp_ancestor_needs_the_trace():
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Layer(name="layer")(x)

    model, x = Plain(), jnp.ones((1, 3, HIDDEN))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(1), x)["params"]
    dense2 = ("layer", "dense2", "kernel")
    assert auto_scales(params)[dense2].eta == pytest.approx(math.sqrt(1 / INTERMEDIATE))
    traced = auto_scales(params, model, x)[dense2]
    assert traced.eta == pytest.approx(math.sqrt(2 / INTERMEDIATE))
    assert "tanh-gated product" in traced.reason  # GELU is inlined as x * 0.5 * (1 + tanh)


@pytest.mark.parametrize("activation, k", [
    (nn.relu, 2), (nn.silu, 2), (lambda h: jax.nn.gelu(h, approximate=False), 2),
    (lambda h: jnp.maximum(h, 0.0), 2), (jnp.tanh, 1), (lambda h: h, 1),
])
def test_activation_detection(activation, k):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2, name="out")(activation(nn.Dense(6, name="inp")(x)))

    model, x = Net(), jnp.ones((1, 3))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    assert auto_scales(params, model, x)[("out", "kernel")].eta == pytest.approx(math.sqrt(k / 6))


def test_swiglu_and_conv_groups():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):  # x: (N, 8, 8, 4)
            x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
            x = nn.Conv(6, (2, 2), feature_group_count=2, name="conv2")(x)
            x = x.reshape(x.shape[0], -1)
            gate, up = nn.Dense(10, name="w1")(x), nn.Dense(10, name="w3")(x)
            return nn.Dense(3, name="w2")(nn.silu(gate) * up)

    model, x = Net(), jnp.ones((1, 8, 8, 4))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]  # shapes suffice
    for table, k_conv2, k_w2 in ((auto_scales(params), 1, 1),
                                 (auto_scales(params, model, x), 2, 2)):
        c1, c2 = table[("conv1", "kernel")], table[("conv2", "kernel")]
        assert c1.eta == pytest.approx(math.sqrt(1 / (3 * 3 * 4)))
        assert c1.slot_shape == (1, 1, 1, 8)
        assert c2.eta == pytest.approx(math.sqrt(k_conv2 / (2 * 2 * 4)))  # in/groups = 8/2
        assert c2.slot_shape == (1, 1, 1, 6)
        w2 = table[("w2", "kernel")]
        assert w2.eta == pytest.approx(math.sqrt(k_w2 / 10)) and w2.slot_shape == (1, 3)
        assert table[("w1", "kernel")].eta == pytest.approx(math.sqrt(1 / (4 * 4 * 6)))


def test_nnx_model():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(12, 8, rngs=rngs)
            self.norm = nnx.LayerNorm(8, rngs=rngs)
            self.fc1 = nnx.Linear(8, 16, rngs=rngs)
            self.fc2 = nnx.Linear(16, 8, rngs=rngs)

        def __call__(self, ids):
            return self.fc2(jax.nn.relu(self.fc1(self.norm(self.embed(ids)))))

    model = Net(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    table = auto_scales(params, model, jnp.zeros((2,), jnp.int32))
    assert list(table)[0] == ("embed", "embedding")
    assert table[("embed", "embedding")].slot_shape == (12, 1)
    assert table[("fc2", "kernel")].eta == pytest.approx(math.sqrt(2 / 16))
    assert table[("fc1", "kernel")].eta == pytest.approx(math.sqrt(1 / 8))
    assert table[("norm", "scale")].eta == 1.0
    assert table.eta(("fc2", "bias"), (8,)) == 0.5


def test_unknown_leaves_warn_once_and_overrides():
    params = {"dense": {"kernel": jnp.zeros((4, 3))}, "odd": jnp.zeros((5, 2, 3)),
              "gate": jnp.zeros(())}
    with pytest.warns(UserWarning, match="no rule for 2 parameter") as record:
        table = auto_scales(params, eta_overrides={"dense": 0.3})
    assert len(record) == 1 and "odd (5, 2, 3)" in str(record[0].message)
    assert table["odd"].eta == pytest.approx(math.sqrt(1 / 10))
    assert table["odd"].slot_shape == (1, 1, 3)
    assert table[("dense", "kernel")].eta == 0.3 and "override" in table["dense/kernel"].reason


def test_scanned_layer_stack():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return nn.Dense(4, name="dense2")(nn.relu(nn.Dense(6, name="dense1")(x))), None

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                            length=3)
            return stack(name="layers")(x, None)[0]

    model, x = Net(), jnp.ones((2, 4))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    table = auto_scales(params, model, x)
    dense1, dense2 = table["layers/dense1/kernel"], table["layers/dense2/kernel"]
    assert (dense1.eta, dense1.slot_shape) == (pytest.approx(math.sqrt(1 / 4)), (3, 1, 6))
    assert (dense2.eta, dense2.slot_shape) == (pytest.approx(math.sqrt(2 / 6)), (3, 1, 4))


def test_relative_position_tables():
    params = {"relpos_embed": jnp.zeros((255, 16)),
              "encoder": {"relpos_bias": {"rel_embedding": jnp.zeros((4, 32))}}}
    table = auto_scales(params)
    assert (table["relpos_embed"].eta, table["relpos_embed"].slot_shape) == (0.5, (255, 1))
    assert table[("encoder", "relpos_bias", "rel_embedding")].slot_shape == (4, 1)


def test_errors():
    params = {"dense": {"kernel": jnp.zeros((4, 3))}}
    with pytest.raises(ValueError, match="needs example_inputs"):
        auto_scales(params, model=nn.Dense(3))
    with pytest.raises(ValueError, match="needs model= or apply_fn="):
        auto_scales(params, example_inputs=jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="tracing the model with example_inputs failed"):
        auto_scales(params, apply_fn=lambda p, x: x @ p["dense"]["kernel"],
                    example_inputs=jnp.ones((1, 5)))
    with pytest.raises(TypeError, match="flax linen or nnx Module"):
        auto_scales(params, model=object(), example_inputs=jnp.ones((1, 4)))
