"""Tests for amosopt.rules: the framework-free rule tables and the safe expression evaluator."""

import math

import pytest

from amosopt import rules
from amosopt.rules import Rules, evaluate_shape_expression, reduced_axes, validate_slot_shape
from tests.oracles import jestimator_amos_helper


@pytest.mark.parametrize(
    "expression, shape, expected",
    [
        ("sqrt(1 / prod(SHAPE[:-1]))", (3, 3, 8, 16), math.sqrt(1 / 72)),
        ("sqrt(2/prod(SHAPE[:-1]))", (256, 10), math.sqrt(2 / 256)),
        ("(SHAPE[0], 1)", (7, 5), (7, 1)),
        ("(1, 1, SHAPE[2])", (2, 3, 4), (1, 1, 4)),
        ("(1,) + SHAPE[1:]", (4, 5, 6), (1, 5, 6)),
        ("SHAPE[-1] ** -0.25", (512,), 512**-0.25),
        ("0.5 * max(SHAPE) // 2", (3, 9), 0.5 * 9 // 2),
        ("min(SHAPE[0], 4) - -1", (9, 2), 5),
        ("()", (3,), ()),
        ("len(SHAPE)", (1, 2, 3), 3),
        ("SHAPE[::2]", (1, 2, 3), (1, 3)),
    ],
)
def test_expression_values(expression, shape, expected):
    assert evaluate_shape_expression(expression, shape) == pytest.approx(expected)


@pytest.mark.parametrize(
    "expression, shape",
    [
        ("sqrt(1 / prod(SHAPE[:-1]))", (3, 3, 8, 16)),
        ("sqrt(2 / SHAPE[0])", (300, 10)),
        ("(1, 1, SHAPE[2])", (2, 3, 4)),
        ("(SHAPE[0], 1)", (7, 5)),
        ("-SHAPE[1] * 3 + 2 ** 3 % 5", (2, 9)),
    ],
)
def test_expression_matches_jestimator(expression, shape):
    helper = jestimator_amos_helper()
    assert evaluate_shape_expression(expression, shape) == pytest.approx(
        helper.evaluate(expression, shape)
    )


@pytest.mark.parametrize(
    "hostile, fragment",
    [
        ("__import__('os').system('true')", "Attribute"),
        ("__import__('os')", "calling '__import__'"),
        ("SHAPE.__class__", "Attribute"),
        ("(lambda: 1)()", "Lambda"),
        ("[d for d in SHAPE]", "ListComp"),
        ("open('/etc/passwd')", "calling 'open'"),
        ("x", "the name 'x'"),
        ("math.sqrt(2)", "Attribute"),
        ("sqrt(x=2)", "keyword"),
        ("9 ** 9 ** 9", "exponent"),
        ("(((9 ** 64) ** 64) ** 64) ** 64", "power larger"),
        ("(-3) ** 60 ** 1 ** 64 * (7 ** 64) ** 64", "power larger"),
        ("'abc'", "constant"),
        ("SHAPE if 1 else 2", "IfExp"),
        ("(y := 3)", "NamedExpr"),
        ("sqrt", "the name 'sqrt'"),
        ("1 < 2", "Compare"),
        ("True", "constant"),
        ("SHAPE * 2", "arithmetic on a tuple"),
        ("{'a': 1}", "Dict"),
        ("print(1)", "calling 'print'"),
    ],
)
def test_hostile_expressions_rejected(hostile, fragment):
    with pytest.raises(ValueError) as info:
        evaluate_shape_expression(hostile, (3, 4))
    assert "Invalid shape expression" in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "expression, fragment",
    [("SHAPE[5]", "out of range"), ("1/0", "division"), ("sqrt(-1)", "failed"), ("1 +", "Invalid")],
)
def test_expression_errors_are_value_errors(expression, fragment):
    with pytest.raises(ValueError, match=fragment):
        evaluate_shape_expression(expression, (3, 4))


@pytest.mark.parametrize("expression, fragment", [
    ("-" * 999 + "1", "nesting deeper than 100"),  # was a RecursionError
    ("sqrt(" * 120 + "4" + ")" * 120, "nesting deeper than 100"),
    ("(-8) ** 0.5", "not a real number"),  # was the complex number 2.83j
    ("(-8.0) ** (1 / 3)", "not a real number"),
    ("\ud800", "surrogates"),  # was a UnicodeEncodeError
    ("\x00", "null bytes"),
])
def test_deep_nesting_complex_powers_and_bad_characters_are_value_errors(expression, fragment):
    with pytest.raises(ValueError, match="Invalid shape expression|failed") as info:
        evaluate_shape_expression(expression, (3, 4))
    assert fragment in str(info.value)
    assert type(info.value) is ValueError


def test_nesting_up_to_the_limit_evaluates():
    assert evaluate_shape_expression("+" * 95 + "SHAPE[0]", (3, 4)) == 3


def test_long_expression_rejected():
    with pytest.raises(ValueError, match="longer than"):
        evaluate_shape_expression("1+" * 600 + "1", ())


TABLE = {
    r".*/layer_norm/scale": 1.0,
    r".*/bias": 0.5,
    r".*embedding": "sqrt(2/SHAPE[1])",
    r".*kernel": lambda shape: 1 / math.sqrt(shape[0]),
    r"special": (1, 2),
}


@pytest.mark.parametrize("as_pairs", [False, True])
@pytest.mark.parametrize(
    "name, shape, expected",
    [
        (("encoder", "layer_norm", "scale"), (8,), 1.0),
        ("encoder/layer_norm/bias", (8,), 0.5),  # the bias rule, not layer_norm/scale
        (("embed", "embedding"), (100, 8), math.sqrt(2 / 8)),
        (("dense", "kernel"), (16, 4), 0.25),
        ("special_thing", (), (1, 2)),  # re.match anchors at the start only
    ],
)
def test_first_match_wins(as_pairs, name, shape, expected):
    table = list(TABLE.items()) if as_pairs else TABLE
    assert Rules(table)(name, shape) == pytest.approx(expected)
    assert rules.lookup(table, name, shape) == pytest.approx(expected)


def test_rule_order_matters():
    assert Rules([(r".*", 1.0), (r"a", 2.0)])("a", ()) == 1.0
    assert Rules([(r"a", 2.0), (r".*", 1.0)])("a", ()) == 2.0


def test_match_is_anchored_at_start_like_jestimator():
    helper = jestimator_amos_helper()
    table = {r"kernel": 1.0, r".*": 2.0}
    reference = helper.params_fn_from_assign_map(table)
    for name in [("dense", "kernel"), ("kernel",), ("kernel_x",)]:
        assert Rules(table)(name, (2, 2)) == reference(name, (2, 2))


def test_match_reports_pattern():
    assert Rules(TABLE).match(("a", "bias"), (3,)) == (r".*/bias", 0.5)


def test_unmatched_name_raises_with_name_shape_and_rules():
    with pytest.raises(ValueError) as info:
        Rules({r".*kernel": 1.0, r".*bias": 0.5})("encoder.weight", (3, 4))
    message = str(info.value)
    assert "'encoder.weight'" in message and "(3, 4)" in message
    assert "'.*kernel'" in message and "'.*bias'" in message


@pytest.mark.parametrize(
    "table, fragment",
    [({}, "at least one"), ([("a", 1, 2)], "pair"), ([(3, 1.0)], "pair"), ({"(": 1.0}, "regex")],
)
def test_bad_tables(table, fragment):
    with pytest.raises(ValueError, match=fragment):
        Rules(table)


@pytest.mark.parametrize(
    "shape, slot, expected",
    [
        ((4, 5), (4, 5), (4, 5)),
        ((4, 5), (4, 1), (4, 1)),
        ((4, 5), (1, 5), (1, 5)),
        ((4, 5), (), ()),
        ((), (), ()),
        ((3, 3, 8, 16), (1, 1, 1, 16), (1, 1, 1, 16)),
    ],
)
def test_valid_slot_shapes(shape, slot, expected):
    assert validate_slot_shape("w", shape, slot) == expected


@pytest.mark.parametrize("slot", [(4,), (2, 5), (4, 5, 1), (5, 4), "abc", 3, (1.5, 1)])
def test_invalid_slot_shapes_name_the_parameter(slot):
    with pytest.raises(ValueError, match="'layer.weight'"):
        validate_slot_shape("layer.weight", (4, 5), slot)


@pytest.mark.parametrize(
    "shape, slot, axes",
    [((4, 5), (4, 5), ()), ((4, 5), (4, 1), (1,)), ((4, 5), (1, 5), (0,)), ((4, 5), (), (0, 1)),
     ((), (), ()), ((1, 5), (1, 1), (1,))],
)
def test_reduced_axes(shape, slot, axes):
    assert reduced_axes(shape, slot) == axes


@pytest.mark.parametrize(
    "shape, slot, column",
    [((6, 4), (6, 1), (1, 4)),  # torch Linear (out, in): one slot per output row
     ((4, 6), (1, 6), (4, 1)),  # flax kernel (in, out); Hugging Face Conv1D (in, out)
     ((50, 8), (50, 1), (1, 8)),  # embedding (V, d): one slot per row
     ((8, 3, 5, 5), (8, 1, 1, 1), (1, 3, 5, 5)),  # torch conv kernel (out, in, kh, kw)
     ((5, 5, 3, 8), (1, 1, 1, 8), (5, 5, 3, 1)),  # flax conv kernel (kh, kw, in, out)
     ((2, 4, 6), (2, 1, 6), (1, 4, 1)),  # kept axes on both sides of the reduced one
     ((6, 4), (6, 4), None),  # full-size slot: already per entry
     ((6,), (), None), ((6, 4), (), None), ((6, 4), (1, 1), None),  # one entry: no factor
     ((1, 4), (1, 1), None),  # a kept axis of size 1 only
     ((), (), None)],
)
def test_column_shape(shape, slot, column):
    assert rules.column_shape(shape, slot) == column
    if column is not None:  # the kept axes are 1 in the column factor, the reduced ones full
        axes = reduced_axes(shape, slot)
        assert all((column[i] == n) == (i in axes or n == 1) for i, n in enumerate(shape))


@pytest.mark.parametrize("value", ["row", "Row-Col", None, 1])
def test_check_second_moment_names_the_choices(value):
    from amosopt.hyperparameters import check_second_moment

    with pytest.raises(ValueError, match="second_moment.*'slot', 'row-col'"):
        check_second_moment(value)
    assert check_second_moment("row-col") == "row-col"


def test_eta_fn_checks_values():
    fn = rules.eta_fn_from_rules({r"a": 0.5, r"b": -1.0, r"c": "sqrt(0)", r"d": "nope"})
    assert fn(("a",), (2,)) == 0.5
    with pytest.raises(ValueError, match="'b'"):
        fn(("b",), (2,))
    with pytest.raises(ValueError, match="'c'"):
        fn("c", (2,))
    with pytest.raises(ValueError, match="name 'nope'"):
        fn("d", (2,))


def test_shape_fn_checks_broadcast():
    fn = rules.shape_fn_from_rules({r".*kernel": "(1, SHAPE[1])", r".*": "(SHAPE[0],)"})
    assert fn(("dense", "kernel"), (3, 4)) == (1, 4)
    with pytest.raises(ValueError, match="'x/bias'"):
        fn(("x", "bias"), (3, 4))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "1.0", None, True])
def test_as_eta_fn_rejects_bad_specs(bad):
    with pytest.raises(ValueError, match="eta"):
        rules.as_eta_fn(bad)("w", (2,)) if bad is not None else rules.as_eta_fn(bad)


def test_is_rule_table():
    assert rules.is_rule_table({"a": 1})
    assert rules.is_rule_table([("a", 1), ("b", 2)])
    assert not rules.is_rule_table(0.5)
    assert not rules.is_rule_table(lambda n, s: 1.0)
    assert not rules.is_rule_table((1, 2))
    assert not rules.is_rule_table([])


def test_import_amosopt_does_not_import_frameworks():
    import subprocess
    import sys

    code = "import sys, amosopt, amosopt.rules, amosopt.cli; " \
           "print(any(m in sys.modules for m in ('torch', 'jax', 'optax', 'flax')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tables_with_their_own_lookups():
    class Table(dict):  # a Mapping, like amosopt.scales.ScaleTable, with its own lookups
        def eta(self, name, shape):
            return self[name][0]

        def slot_shape(self, name, shape):
            return self[name][1]

    table = Table(w=(0.25, (3, 1)))
    assert rules.as_eta_fn(table)("w", (3, 4)) == 0.25
    assert rules.as_shape_fn(table)("w", (3, 4)) == (3, 1)
    with pytest.raises(ValueError, match="'w'"):
        rules.as_shape_fn(Table(w=(0.25, (2, 1))))("w", (3, 4))


def test_find_returns_none_where_match_raises() -> None:
    rules = Rules({r"encoder/.*kernel": "sqrt(1 / SHAPE[0])", r"decoder": 0.5})
    assert rules.find(("encoder", "layer", "kernel"), (16, 4)) == (r"encoder/.*kernel", 0.25)
    assert rules.find("decoder/bias", (3,)) == ("decoder", 0.5)
    assert rules.find("head/kernel", (2, 2)) is None
    with pytest.raises(ValueError, match=r"No rule matches parameter 'head/kernel'"):
        rules.match("head/kernel", (2, 2))
