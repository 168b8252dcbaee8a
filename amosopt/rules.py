"""Framework-free rules: (parameter name, shape) -> eta or slot shape.

Amos needs, for every variable, a model-oriented scale ``eta`` and optionally a *slot shape*
(the shape of its ``v`` and ``b`` slots, which broadcasts to the variable). Both are usually
written as an ordered table of ``regex -> value`` rules, exactly like the authors' assign maps
(``jestimator.amos_helper.params_fn_from_assign_map``):

* the **first** regex that matches the **start** of the name (``re.match``) wins, so published
  tables port unchanged; a name that no rule matches is an error;
* a value is a number, a tuple, a callable of the shape, or a string expression over ``SHAPE``
  such as ``'sqrt(2/prod(SHAPE[:-1]))'`` or ``'(SHAPE[0], 1)'``.

String expressions are evaluated by a small, safe interpreter over Python's ``ast`` (no
``eval``): numbers, arithmetic, tuples, ``SHAPE`` with subscripts and slices, and calls of a fixed
list of math functions (:data:`FUNCTIONS`). Anything else is rejected with :class:`ValueError`.

Names: torch uses ``named_parameters()`` strings (``encoder.layer.0.attention.self.query.weight``);
optax uses key paths, given as tuples of strings and joined with ``'/'`` for matching
(``encoder/layer_0/query/kernel``), as jestimator does.
"""

from __future__ import annotations

import ast
import difflib
import math
import numbers
import operator
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

#: a tensor's shape
Shape = tuple[int, ...]
#: an optax parameter's name: the strings of its key path (``path_to_name``), as in jestimator
PathName = tuple[str, ...]
#: a parameter's name as rules see it: torch's dotted string, or an optax :data:`PathName`
ParamName = Union[str, Sequence[str]]
RuleValue = Union[float, int, tuple, str, Callable[[Shape], Any]]
RuleTable = Union[Mapping[str, RuleValue], Sequence[tuple[str, RuleValue]]]

__all__ = [
    "FUNCTIONS",
    "Rules",
    "UnmatchedRuleWarning",
    "as_b0_fn",
    "as_eta_fn",
    "as_shape_fn",
    "check_b0",
    "check_eta",
    "column_shape",
    "eta_fn_from_rules",
    "evaluate_shape_expression",
    "is_rule_table",
    "lookup",
    "reduced_axes",
    "shape_fn_from_rules",
    "unused_rules",
    "validate_slot_shape",
    "warn_unused_rules",
]


def _prod(values: Any) -> float | int:
    return math.prod(_as_tuple(values, "prod"))


def _as_tuple(values: Any, fn: str) -> tuple:
    if isinstance(values, tuple):
        return values
    raise ValueError(f"{fn}() takes a tuple such as SHAPE or SHAPE[:-1], got {values!r}")


def _min(*args: Any) -> Any:
    return min(_as_tuple(args[0], "min") if len(args) == 1 else args)


def _max(*args: Any) -> Any:
    return max(_as_tuple(args[0], "max") if len(args) == 1 else args)


#: The functions a shape expression may call.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "rsqrt": lambda x: 1.0 / math.sqrt(x),
    "prod": _prod,
    "sum": lambda values: sum(_as_tuple(values, "sum")),
    "len": lambda values: len(_as_tuple(values, "len")),
    "min": _min,
    "max": _max,
    "abs": abs,
    "int": int,
    "float": float,
    "pow": math.pow,
    "exp": math.exp,
    "log": math.log,
    "log2": math.log2,
}

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPONENT = 64  # keeps `9**9**9`-style expressions from hanging the interpreter
_MAX_POWER_BITS = 1024  # no power beyond float range: `((9**64)**64)**64` would exhaust memory
_MAX_EXPRESSION_LENGTH = 1000
#: nesting depth of the parsed expression: `-` * 999 + `1` would otherwise end in RecursionError
#: (each level costs the interpreter two Python frames), not in a ValueError
_MAX_DEPTH = 100


class _Evaluator:
    """Walks a parsed expression, allowing only the node types listed in its methods."""

    def __init__(self, source: str, shape: Shape):
        self.source = source
        self.shape = shape
        self.depth = 0

    def reject(self, node: ast.AST, what: str) -> ValueError:
        return ValueError(
            f"Invalid shape expression {self.source!r}: {what} is not allowed. "
            "Use numbers, + - * / // % **, tuples, SHAPE with subscripts or slices, and the "
            f"functions {sorted(FUNCTIONS)}."
        )

    def eval(self, node: ast.AST) -> Any:
        method = getattr(self, f"eval_{type(node).__name__}", None)
        if method is None:
            raise self.reject(node, type(node).__name__)
        if self.depth >= _MAX_DEPTH:
            raise self.reject(node, f"nesting deeper than {_MAX_DEPTH} levels")
        self.depth += 1
        try:
            return method(node)
        finally:
            self.depth -= 1

    def eval_Expression(self, node: ast.Expression) -> Any:
        return self.eval(node.body)

    def eval_Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise self.reject(node, f"the constant {node.value!r}")
        return node.value

    def eval_Name(self, node: ast.Name) -> Any:
        if node.id == "SHAPE":
            return self.shape
        raise self.reject(node, f"the name {node.id!r}")

    def eval_Tuple(self, node: ast.Tuple) -> tuple:
        return tuple(self.eval(element) for element in node.elts)

    def eval_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise self.reject(node, type(node.op).__name__)
        left, right = self.eval(node.left), self.eval(node.right)
        if isinstance(left, tuple) or isinstance(right, tuple):
            both = isinstance(left, tuple) and isinstance(right, tuple)
            if isinstance(node.op, ast.Add) and both:
                return left + right  # (1,) + SHAPE[1:]
            raise self.reject(node, "arithmetic on a tuple (other than tuple + tuple)")
        if isinstance(node.op, ast.Pow) and (
            abs(right) > _MAX_EXPONENT
            or (abs(left) > 1 and abs(right) * math.log2(abs(left)) > _MAX_POWER_BITS)
        ):  # nested powers such as ((9**64)**64)**64 would grow without bound
            raise self.reject(node, f"an exponent larger than {_MAX_EXPONENT} or a power "
                              f"larger than 2**{_MAX_POWER_BITS}")
        try:
            result = op(left, right)
        except ArithmeticError as error:
            raise ValueError(f"Shape expression {self.source!r} failed: {error}") from None
        if isinstance(result, complex):  # (-8) ** 0.5: Python's power of a negative base
            raise ValueError(f"Shape expression {self.source!r} failed: a negative number to a "
                             f"fractional power (({left!r}) ** {right!r}) is not a real number")
        return result

    def eval_UnaryOp(self, node: ast.UnaryOp) -> Any:
        op = _UNARY.get(type(node.op))
        if op is None:
            raise self.reject(node, type(node.op).__name__)
        operand = self.eval(node.operand)
        if isinstance(operand, tuple):
            raise self.reject(node, "a sign on a tuple")
        return op(operand)

    def eval_Subscript(self, node: ast.Subscript) -> Any:
        value = self.eval(node.value)
        if not isinstance(value, tuple):
            raise self.reject(node, "a subscript of a number")
        index = self.eval_index(node.slice)
        try:
            return value[index]
        except IndexError:
            raise ValueError(
                f"Shape expression {self.source!r}: index {index} is out of range for {value}"
            ) from None

    def eval_index(self, node: ast.AST) -> int | slice:
        if isinstance(node, ast.Slice):
            parts = [None if part is None else self.eval_int(part)
                     for part in (node.lower, node.upper, node.step)]
            return slice(*parts)
        return self.eval_int(node)

    def eval_int(self, node: ast.AST) -> int:
        value = self.eval(node)
        if not isinstance(value, int):
            raise self.reject(node, f"a non-integer index {value!r}")
        return value

    def eval_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
            raise self.reject(node, f"calling {what!r}")
        if node.keywords:
            raise self.reject(node, "a keyword argument")
        args = [self.eval(arg) for arg in node.args]
        try:
            return FUNCTIONS[node.func.id](*args)
        except (TypeError, ValueError, ArithmeticError) as error:
            raise ValueError(f"Shape expression {self.source!r} failed: {error}") from None


def evaluate_shape_expression(expression: str, shape: Sequence[int]) -> Any:
    """Evaluates a string expression over ``SHAPE`` safely.

    >>> evaluate_shape_expression('sqrt(2/prod(SHAPE[:-1]))', (3, 3, 8, 16))
    0.16666666666666666
    >>> evaluate_shape_expression('(1,) + SHAPE[1:]', (4, 5))
    (1, 5)

    Raises:
        ValueError: the expression uses anything outside the allowed grammar, or fails.
    """
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a str, got {type(expression).__name__}")
    if len(expression) > _MAX_EXPRESSION_LENGTH:
        raise ValueError(f"Shape expression is longer than {_MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"Invalid shape expression {expression!r}: {error.msg}") from None
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes, lone surrogates,
        # or nesting the parser itself gives up on
        raise ValueError(f"Invalid shape expression {expression!r}: {error}") from None
    return _Evaluator(expression, tuple(int(d) for d in shape)).eval(tree)


def _join(name: ParamName, sep: str) -> str:
    if isinstance(name, str):
        return name
    return sep.join(str(part) for part in name)


class Rules:
    """An ordered table of ``regex -> value`` rules; first match (``re.match``) wins.

    Args:
        table: a mapping (insertion order is the rule order) or a sequence of
            ``(regex, value)`` pairs. A value is a number, a tuple, a callable of the shape,
            or a string expression over ``SHAPE``.
        name_sep: joins tuple names (optax key paths) before matching.

    Calling the table, ``rules(name, shape)``, returns the resolved value (jestimator's
    ``(name, shape) -> value`` signature). :meth:`match` also returns the pattern that matched.
    """

    def __init__(self, table: RuleTable | Rules, name_sep: str = "/") -> None:
        if isinstance(table, Rules):
            pairs = list(table.pairs)
        elif isinstance(table, Mapping):
            pairs = list(table.items())
        else:
            pairs = [tuple(pair) for pair in table]
        for pair in pairs:
            if len(pair) != 2 or not isinstance(pair[0], str):
                raise ValueError(f"A rule must be a (regex, value) pair, got {pair!r}")
        if not pairs:
            raise ValueError("A rule table needs at least one (regex, value) rule")
        self.pairs: list[tuple[str, RuleValue]] = pairs
        self.name_sep = name_sep
        self._compiled = []
        for pattern, _ in pairs:
            try:
                self._compiled.append(re.compile(pattern))
            except re.error as error:
                raise ValueError(f"Invalid regex {pattern!r} in rule table: {error}") from None

    def __repr__(self) -> str:
        return f"Rules({self.pairs!r})"

    def find(self, name: ParamName, shape: Sequence[int]) -> tuple[str, Any] | None:
        """``(pattern, resolved value)`` of the first rule matching ``name``, or ``None``."""
        joined = _join(name, self.name_sep)
        shape = tuple(int(d) for d in shape)
        for regex, (pattern, value) in zip(self._compiled, self.pairs):
            if regex.match(joined):
                return pattern, _resolve(value, shape)
        return None

    def match(self, name: ParamName, shape: Sequence[int]) -> tuple[str, Any]:
        """Returns ``(pattern, resolved value)`` of the first rule matching ``name``; raises
        ``ValueError`` naming the parameter, its shape and the rules if none does."""
        found = self.find(name, shape)
        if found is not None:
            return found
        joined = _join(name, self.name_sep)
        shape = tuple(int(d) for d in shape)
        patterns = ", ".join(repr(pattern) for pattern, _ in self.pairs)
        raise ValueError(
            f"No rule matches parameter {joined!r} with shape {shape}; rules tried, in order: "
            f"[{patterns}]. Add a rule for it (a catch-all such as r'.*' goes last)."
        )

    def __call__(self, name: ParamName, shape: Sequence[int]) -> Any:
        return self.match(name, shape)[1]


def _resolve(value: RuleValue, shape: Shape) -> Any:
    if isinstance(value, str):
        return evaluate_shape_expression(value, shape)
    if callable(value):
        return value(shape)
    return value


def is_rule_table(spec: Any) -> bool:
    """True for a :class:`Rules`, a mapping, or a non-empty sequence of ``(str, value)`` pairs."""
    if isinstance(spec, (Rules, Mapping)):
        return True
    if isinstance(spec, (list, tuple)) and spec and not isinstance(spec, str):
        return all(isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)
                   for pair in spec)
    return False


def lookup(rules: RuleTable | Rules, name: ParamName, shape: Sequence[int]) -> Any:
    """Resolves ``name`` (with ``shape``) against a rule table; see :class:`Rules`."""
    return Rules(rules)(name, shape)


def check_eta(value: Any, name: ParamName, shape: Sequence[int] = ()) -> float:
    """Returns ``value`` as a float if it is a positive finite number, else raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Invalid eta for parameter {_join(name, '/')!r} with shape {tuple(shape)}: "
            f"expected a positive finite number, got {value!r}"
        )
    eta = float(value)
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(
            f"Invalid eta for parameter {_join(name, '/')!r} with shape {tuple(shape)}: {eta}; "
            "eta is the expected magnitude of the entries, a positive finite number"
        )
    return eta


def check_b0(value: Any, name: ParamName, shape: Sequence[int] = ()) -> float:
    """Returns ``value`` as a float if it is a finite number >= 0, else raises ValueError."""
    b0 = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None
    if b0 is None or not (math.isfinite(b0) and b0 >= 0):
        raise ValueError(
            f"Invalid b0 for parameter {_join(name, '/')!r} with shape {tuple(shape)}: "
            f"{value!r}; b0, the value the decay accumulator b starts at, must be a finite "
            "number >= 0 (0 is the paper's fresh start)"
        )
    return b0


def validate_slot_shape(name: ParamName, shape: Sequence[int], slot_shape: Any) -> Shape:
    """Checks that ``slot_shape`` broadcasts to ``shape``: ``()`` or the same rank, each axis
    either the parameter's size or 1. Returns it as a tuple of ints."""
    shape = tuple(int(d) for d in shape)
    try:
        slot = tuple(int(d) for d in slot_shape)
        if any(int(d) != d for d in slot_shape):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(
            f"Invalid slot shape for parameter {_join(name, '/')!r} with shape {shape}: "
            f"expected a tuple of ints, got {slot_shape!r}"
        ) from None
    if slot == ():
        return slot
    if len(slot) != len(shape) or any(s not in (1, d) for s, d in zip(slot, shape)):
        raise ValueError(
            f"Invalid slot shape {slot} for parameter {_join(name, '/')!r} with shape {shape}: "
            "it must be () or have the same rank with each axis equal to the parameter's or 1, "
            f"e.g. {shape[:-1] + (1,) if shape else ()} for one slot per row"
        )
    return slot


def reduced_axes(shape: Sequence[int], slot_shape: Sequence[int]) -> tuple[int, ...]:
    """The axes over which the squared gradient is averaged for this slot shape.

    A scalar slot ``()`` reduces every axis; otherwise the axes where the slot is smaller
    than the parameter (jestimator: ``[i for i, k in enumerate(shape) if slot[i] < k]``).
    """
    shape, slot_shape = tuple(shape), tuple(slot_shape)
    if slot_shape == ():
        return tuple(range(len(shape)))
    return tuple(i for i, (s, d) in enumerate(zip(slot_shape, shape)) if s < d)


def column_shape(shape: Sequence[int], slot_shape: Sequence[int]) -> Shape | None:
    r"""The shape of the column factor ``u`` of a parameter with this slot shape, or ``None``
    where it has none.

    The slot ``v`` keeps the axes :math:`K` and averages :math:`g^2` over the reduced axes
    :math:`R` (:func:`reduced_axes`); the column factor is the other half of Adafactor's
    factorisation (Shazeer & Stern 2018, arXiv 1804.04235): :math:`g^2` averaged over
    :math:`K`, so its shape is the parameter's with the kept axes set to 1: ``(1, in)`` for a
    ``(out, in)`` kernel with slot ``(out, 1)``, ``(1, d)`` for a ``(V, d)`` embedding with
    slot ``(V, 1)``, ``(1, in, kh, kw)`` for a conv kernel with slot ``(out, 1, 1, 1)``,
    ``(in, 1)`` for a Hugging Face ``Conv1D`` weight ``(in, out)`` with slot ``(1, out)``.

    ``None`` when the slot reduces no axis (a full-size slot already normalises each entry)
    or has a single entry (a scalar slot ``()``, or all ones: biases, norms): there the
    column factor would be the whole per-entry second moment, a parameter-sized state, not a
    factor; use a full-size slot for that.

    >>> column_shape((8, 4), (8, 1)), column_shape((4, 3, 3, 2), (4, 1, 1, 1))
    ((1, 4), (1, 3, 3, 2))
    >>> column_shape((8, 4), (8, 4)), column_shape((8,), ()), column_shape((8, 4), (1, 1))
    (None, None, None)
    """
    shape, slot_shape = tuple(shape), tuple(slot_shape)
    axes = reduced_axes(shape, slot_shape)
    if not axes or math.prod(slot_shape) <= 1:
        return None
    return tuple(n if i in axes else 1 for i, n in enumerate(shape))


def _own_lookup(spec: Any, attr: str) -> Callable[[ParamName, Shape], Any] | None:
    """``spec.eta`` / ``spec.slot_shape`` when ``spec`` carries its own lookups, as the tables of
    :mod:`amosopt.scales` (``auto_scales``) do, so that ``eta=table`` works like
    ``eta=table.eta``."""
    method = getattr(spec, attr, None)
    return method if callable(method) else None


def _as_value_fn(spec: Any, key: str, check: Callable[..., float], expected: str,
                 name_sep: str) -> Callable[[ParamName, Shape], float]:
    """A per-parameter number's spec (number, rule table, ``(name, shape) -> number``, or a
    table with a ``key(name, shape)`` method) as a ``(name, shape) -> float`` that ``check``s
    every value."""
    if isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        check(spec, "<all parameters>")
        return lambda name, shape: float(spec)
    fn = _own_lookup(spec, key) or (Rules(spec, name_sep) if is_rule_table(spec) else spec)
    if not callable(fn):
        raise ValueError(
            f"Invalid {key}: {spec!r}; pass {expected}, a rule table "
            "({regex: value} or [(regex, value), ...]) or a callable (name, shape) -> float"
        )
    return lambda name, shape: check(fn(name, tuple(shape)), name, shape)


def as_eta_fn(spec: Any, name_sep: str = "/") -> Callable[[ParamName, Shape], float]:
    """Turns an ``eta`` spec (number, rule table, ``(name, shape) -> number``, or a table with
    an ``eta(name, shape)`` method) into a checked ``(name, shape) -> float`` function."""
    return _as_value_fn(spec, "eta", check_eta, "a positive number", name_sep)


def as_b0_fn(spec: Any, name_sep: str = "/") -> Callable[[ParamName, Shape], float]:
    """Turns a ``b0`` spec (number, rule table, ``(name, shape) -> number``, or a table with a
    ``b0(name, shape)`` method, as :class:`amosopt.scales.ScaleTable`) into a checked
    ``(name, shape) -> float`` function: the value each parameter's slot ``b`` starts at."""
    return _as_value_fn(spec, "b0", check_b0, "a number >= 0", name_sep)


def as_shape_fn(spec: Any, name_sep: str = "/") -> Callable[[ParamName, Shape], Shape] | None:
    """Turns a slot-shape spec (``None``, rule table, ``(name, shape) -> tuple``, or a table
    with a ``slot_shape(name, shape)`` method) into a checked ``(name, shape) -> tuple``
    function; ``None`` stays ``None`` (full-size slots)."""
    if spec is None:
        return None
    fn = _own_lookup(spec, "slot_shape")
    fn = fn or (Rules(spec, name_sep) if is_rule_table(spec) else spec)
    if not callable(fn):
        raise ValueError(
            f"Invalid slot_shape: {spec!r}; pass None, a rule table "
            "({regex: tuple or expression}) or a callable (name, shape) -> tuple"
        )
    return lambda name, shape: validate_slot_shape(name, shape, fn(name, tuple(shape)))


def eta_fn_from_rules(rules: RuleTable, name_sep: str = "/"
                      ) -> Callable[[ParamName, Shape], float]:
    """jestimator-style ``eta_fn`` from a rule table (values checked positive and finite)."""
    return as_eta_fn(Rules(rules, name_sep))


def shape_fn_from_rules(rules: RuleTable, name_sep: str = "/"
                        ) -> Callable[[ParamName, Shape], Shape]:
    """jestimator-style ``shape_fn`` from a rule table (results checked to broadcast)."""
    fn = as_shape_fn(Rules(rules, name_sep))
    assert fn is not None
    return fn


# ------------------------------------------------------------------------------------------------
# Rules that match nothing


class UnmatchedRuleWarning(UserWarning):
    """A rule of a table that no parameter uses: most often a typo in its regex, which would
    otherwise change nothing and say nothing. For a strict mode that raises instead, turn the
    warning into an error: ``warnings.simplefilter("error", UnmatchedRuleWarning)`` (or pytest's
    ``-W error::amosopt.rules.UnmatchedRuleWarning``)."""


def unused_rules(rules: Rules, names: Iterable[ParamName]) -> list[tuple[str, bool]]:
    """``(pattern, shadowed)`` for each rule that is the first match of none of ``names``:
    ``shadowed`` is True when the pattern matches some name that an earlier rule takes."""
    joined = [_join(name, rules.name_sep) for name in names]
    used: set[int] = set()
    matching: set[int] = set()
    for name in joined:
        first = None
        for i, regex in enumerate(rules._compiled):
            if regex.match(name):
                matching.add(i)
                first = i if first is None else first
        if first is not None:
            used.add(first)
    return [(pattern, i in matching) for i, (pattern, _) in enumerate(rules.pairs)
            if i not in used]


def nearest_names(pattern: str, names: Sequence[str], n: int = 3) -> list[str]:
    """The ``n`` names that read most like ``pattern`` (difflib's ratio): the likely intent of a
    mistyped regex."""
    def likeness(name: str) -> float:
        return difflib.SequenceMatcher(None, pattern, name).ratio()

    return sorted(names, key=likeness, reverse=True)[:n]


def warn_unused_rules(rules: Rules, names: Iterable[ParamName], what: str,
                      stacklevel: int = 3) -> None:
    """One :class:`UnmatchedRuleWarning` per unused rule of ``rules`` (``what``, e.g.
    ``"eta_overrides"``), naming the pattern and the nearest parameter names."""
    joined = [_join(name, rules.name_sep) for name in names]
    for pattern, shadowed in unused_rules(rules, joined):
        why = ("every parameter it matches is taken by an earlier rule (first match wins)"
               if shadowed else "it matches no parameter (re.match: from the start of the name)")
        nearest = ", ".join(repr(name) for name in nearest_names(pattern, joined))
        warnings.warn(f"{what}: the rule {pattern!r} is never used: {why}. Nearest parameter "
                      f"names: {nearest}.", UnmatchedRuleWarning, stacklevel=stacklevel + 1)

