"""Framework-free principles of automatic scales (amosopt.scales), against closed-form math."""

import math
import warnings

import pytest

from amosopt.scales import (
    Scale,
    ScaleTable,
    additive_scale,
    embedding_scale,
    fallback_scale,
    gain_scale,
    is_activation,
    kernel_scale,
    state_memory,
    warn_guessed,
)


@pytest.mark.parametrize("fan_in", [1, 64, 3072])
@pytest.mark.parametrize("activation, k", [(None, 1), ("GELU", 2), ("gated product", 2)])
def test_kernel_scale_is_sqrt_k_over_fan_in(fan_in, activation, k):
    scale = kernel_scale("Linear weight", fan_in, (7, 1), activation)
    assert scale.eta == pytest.approx(math.sqrt(k / fan_in), rel=1e-15)
    assert scale.slot_shape == (7, 1)
    assert f"sqrt({k}/{fan_in})" in scale.reason


def test_kernel_reason_names_layer_fan_in_and_activation():
    scale = kernel_scale("Linear weight", 3072, (768, 1), "GELU")
    assert scale.reason == "Linear weight, fan-in 3072, input after GELU: sqrt(2/3072)"


def test_kernel_scale_rejects_empty_fan_in():
    with pytest.raises(ValueError, match="fan_in"):
        kernel_scale("Linear weight", 0, (3, 1))


def test_embedding_gain_additive():
    embedding = embedding_scale("Embedding weight", (100, 64))
    assert embedding.eta == pytest.approx(math.sqrt(2 / 64))
    assert embedding.slot_shape == (100, 1)
    assert gain_scale("LayerNorm weight") == Scale(1.0, (), "LayerNorm weight (gain): 1.0")
    assert additive_scale("Linear bias").eta == 0.5
    assert additive_scale("Linear bias").slot_shape == ()


@pytest.mark.parametrize("shape, out_first, eta, slot", [
    ((6, 4, 5), True, math.sqrt(1 / 20), (6, 1, 1)),
    ((3, 9), True, 1 / 3, (3, 1)),
    ((6, 4, 5), False, math.sqrt(1 / 24), (1, 1, 5)),  # flax layout (..., in, out)
    ((9, 3), False, 1 / 3, (1, 3)),
    ((7,), True, 0.5, ()),
    ((7,), False, 0.5, ()),
    ((), True, 0.5, ()),
])
def test_fallback_by_rank(shape, out_first, eta, slot):
    scale = fallback_scale(shape, out_first=out_first)
    assert scale.eta == pytest.approx(eta)
    assert scale.slot_shape == slot
    assert scale.reason.startswith("guessed")


def test_warn_guessed_is_one_warning_listing_all():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_guessed([("a.w", (3, 4)), ("b.s", ())])
        warn_guessed([])
    assert len(caught) == 1
    assert "a.w (3, 4)" in str(caught[0].message) and "b.s ()" in str(caught[0].message)


@pytest.mark.parametrize("name, expected", [
    ("relu", True), ("relu_", True), ("GELUActivation", True), ("NewGELUActivation", True),
    ("LeakyReLU", True), ("leaky_relu", True), ("SiLU", True), ("Tanh", False),
    ("sigmoid", False), ("linear", False), ("softmax", False),
])
def test_is_activation(name, expected):
    assert is_activation(name) is expected


def _table():
    return ScaleTable([
        ("enc.dense.weight", (4, 3), kernel_scale("Linear weight", 3, (4, 1))),
        ("enc.dense.bias", (4,), additive_scale("Linear bias")),
        (("tok", "embedding"), (10, 4), embedding_scale("Embed embedding", (10, 4))),
    ])


def test_table_callables_and_order():
    table = _table()
    assert list(table) == ["enc.dense.weight", "enc.dense.bias", ("tok", "embedding")]
    assert table.eta("enc.dense.weight", (4, 3)) == pytest.approx(math.sqrt(1 / 3))
    assert table.slot_shape("enc.dense.weight", (4, 3)) == (4, 1)
    # tuple names are also found as lists and in their '/'-joined form
    assert table.slot_shape(["tok", "embedding"], (10, 4)) == (10, 1)
    assert table["tok/embedding"].eta == pytest.approx(math.sqrt(2 / 4))
    assert table.shape("enc.dense.bias") == (4,)


def test_table_rejects_unknown_name_and_wrong_shape():
    table = _table()
    with pytest.raises(ValueError, match="'enc.other.weight'.*not in the automatic"):
        table.eta("enc.other.weight", (4, 3))
    with pytest.raises(ValueError, match=r"shape \(5, 3\).*built for shape \(4, 3\)"):
        table.slot_shape("enc.dense.weight", (5, 3))


def test_overrides_first_match_wins_and_unmatched_keep_automatic():
    table = _table().with_overrides(
        eta=[(r"enc\.dense\.b", 0.1), (r"enc", 0.2)],
        slot_shape={r"enc\.dense\.weight": "(1, SHAPE[1])"},
    )
    assert table["enc.dense.bias"].eta == 0.1
    assert table["enc.dense.weight"].eta == 0.2
    assert table["enc.dense.weight"].slot_shape == (1, 3)
    assert "override" in table["enc.dense.weight"].reason
    assert table["tok/embedding"] == _table()["tok/embedding"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(eta={"enc": -1.0}), "Invalid eta for parameter 'enc.dense.weight'"),
    (dict(slot_shape={"enc.dense.w": (3, 1)}), "Invalid slot shape"),
    (dict(eta=0.3), "Invalid overrides for eta"),
])
def test_bad_overrides_fail_early(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _table().with_overrides(**kwargs)


def test_state_memory_closed_form():
    memory = state_memory([((4, 3), (4, 1)), ((4,), ()), ((10, 4), (10, 1))], itemsize=4)
    n_params, n_slots = 12 + 4 + 40, 4 + 1 + 10
    assert memory.params == 4 * n_params
    assert memory.amos == 2 * 4 * n_slots
    assert memory.amos_momentum == 2 * 4 * n_slots + 4 * n_params
    assert memory.adamw == 2 * 4 * n_params
    assert memory.percent(memory.adamw) == 100.0
    # second_moment="row-col": u of (1, 3) and (1, 4) beside the (4, 1) and (10, 1) slots
    assert memory.columns == 4 * (3 + 4)
    assert memory.row_col_momentum == memory.amos_momentum + memory.columns
