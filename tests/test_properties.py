"""Property-based tests (hypothesis): random shapes, slot shapes, dtypes and options against the
NumPy transcription of the paper; random shape expressions against the evaluator's promises;
random invalid hyper-parameters against the optimizers' validation.

Profiles are in ``tests/conftest.py``: ``make test`` runs a few seconds per property;
``pytest tests/test_properties.py --hypothesis-profile=long`` runs thousands of examples.
"""

from __future__ import annotations

import math
import string
import time

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from amosopt.rules import evaluate_shape_expression  # noqa: E402
from tests.oracles import NumpyAmos  # noqa: E402

STEPS = 3
#: the properties that build optimizers and step them run a tenth of the profile's examples
#: (the profile, default or ``long``, is loaded before this module is imported)
heavy = settings(max_examples=max(8, settings().max_examples // 10))

# ---- (a) the update, any shape, slot shape, dtype and option -------------------------------------

#: a parameter's shape (rank 0 to 4, size-0 axes included) and a valid slot shape for it:
#: None (full size), () (one scalar slot) or the shape with any subset of axes reduced to 1
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@st.composite
def shape_and_slot(draw) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    shape = draw(shapes)
    kind = draw(st.sampled_from(["full", "scalar", "reduced"]))
    if kind == "full":
        return shape, None
    if kind == "scalar":
        return shape, ()
    reduced = draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))
    return shape, tuple(1 if r else d for d, r in zip(shape, reduced))


options = st.fixed_dictionaries({
    "lr": st.floats(1e-3, 0.5),
    "eta": st.floats(0.05, 4.0),
    "beta": st.sampled_from([0.0, 0.5, 0.9, 0.999]),
    "momentum": st.sampled_from([0.0, 0.5, 0.9]),
    "clip_value": st.one_of(st.none(), st.floats(0.05, 3.0)),
    "extra_l2": st.sampled_from([0.0, 1e-3, 0.1]),
})
DTYPES = ["float32", "float64", "bfloat16"]
#: tolerance on the update, relative to its largest entry: float32 and bfloat16 parameters are
#: stepped in float32 arithmetic (bfloat16 keeps float32 slots); plus the rounding of the new
#: parameter to its dtype
UPDATE_TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 2e-5}
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "bfloat16": 2.0**-8}


def check_step(name: str, got: np.ndarray, theta: np.ndarray, want: np.ndarray,
               oracle: NumpyAmos, g: np.ndarray, lr: float, dtype: str,
               rounded_update: bool = False, ulps: float = 1.0) -> None:
    """``got`` (one framework step from ``theta``) equals ``want`` (the oracle's step from the
    same ``theta`` with gradient ``g``) up to the arithmetic's error and the rounding to
    ``dtype`` (of the update too where ``rounded_update``: optax returns updates in the
    gradient's dtype); ``ulps``: units in the last place the storing may add (2 for the
    stochastic and compensated ``rounding`` of 16-bit parameters; the compensation carried from
    the previous step is up to half a unit of ``theta``, which may be the larger).

    The arithmetic's error is relative to the largest term of the update, not to the update:
    the gradient term and the weight decay can nearly cancel (lr 0.5, extra_l2 0.1: terms of 1
    giving an update of 0.003, whose float32 error is then 1e-7, not 1e-7 of 0.003).
    """
    delta = want - theta
    if oracle.clip_value is not None:
        g = np.clip(g, -oracle.clip_value, oracle.clip_value)
    v_hat = np.maximum(oracle.v, oracle.epsilon) / (1 - oracle.beta**oracle.t)
    terms = np.maximum(np.abs(delta), lr * oracle.eta * np.abs(g) / np.sqrt(v_hat)
                       + oracle.extra_l2 * np.abs(theta))
    scale = float(np.max(terms, initial=0.0))
    tolerance = UPDATE_TOLERANCE[dtype] + (EPS[dtype] if rounded_update else 0.0)
    bound = (tolerance * scale + EPS[dtype] * np.abs(want)
             + (ulps - 1.0) * EPS[dtype] * np.maximum(np.abs(want), np.abs(theta)) + 1e-300)
    excess = np.abs(got - want) - bound
    assert np.all(excess <= 0), (
        f"{name} ({dtype}): worst error {np.max(np.abs(got - want), initial=0):.3g} "
        f"with update terms of size {scale:.3g}")


def draw_problem(data) -> tuple[list, dict, str, int]:
    tensors = data.draw(st.lists(shape_and_slot(), min_size=1, max_size=3), label="tensors")
    opts = data.draw(options, label="options")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    return tensors, opts, dtype, seed


def random_values(seed: int, tensors: list) -> tuple[list, list]:
    """Initial parameters and STEPS gradients per tensor, float64; some gradients are large
    (so clipping acts) and some tiny (so v sits near its floor)."""
    rng = np.random.default_rng(seed)
    start = [rng.normal(size=shape) for shape, _ in tensors]
    grads = [[rng.normal(size=shape) * 10.0 ** rng.integers(-3, 2) for shape, _ in tensors]
             for _ in range(STEPS)]
    return start, grads


def in_dtype(opts: dict, to_dtype) -> dict:
    """``opts`` with ``clip_value`` rounded by ``to_dtype``: both frameworks clip in the
    gradient's dtype, so a bfloat16 gradient is clipped at the nearest bfloat16 (up to 2**-9
    away), which the float64 oracle would otherwise not see."""
    clip = opts["clip_value"]
    return dict(opts, clip_value=None if clip is None else float(to_dtype(clip)))


def oracles_for(tensors: list, opts: dict) -> list[NumpyAmos]:
    return [NumpyAmos(eta=opts["eta"], slot_shape=slot, beta=opts["beta"],
                      momentum=opts["momentum"], clip_value=opts["clip_value"],
                      extra_l2=opts["extra_l2"]) for _, slot in tensors]


@heavy
@given(data=st.data(), foreach=st.booleans(),
       rounding=st.sampled_from(["nearest", "stochastic", "compensated"]))
def test_torch_follows_the_numpy_transcription(data, foreach, rounding) -> None:
    """Every option; for bfloat16/float16, each ``rounding`` stays within the tolerance of one
    rounding of the oracle's step (stochastic: the other neighbour; compensated: the carried
    error, under half a unit in the last place)."""
    torch = pytest.importorskip("torch")
    from amosopt.torch import Amos

    tensors, opts, dtype, seed = draw_problem(data)
    torch_dtype = getattr(torch, dtype)
    opts = in_dtype(opts, lambda x: torch.tensor(x, dtype=torch_dtype).item())
    start, grads = random_values(seed, tensors)
    params = [torch.nn.Parameter(torch.tensor(x).to(torch_dtype)) for x in start]
    named = [(f"p{i}", p) for i, p in enumerate(params)]
    slots = {f"p{i}": shape if slot is None else slot
             for i, (shape, slot) in enumerate(tensors)}
    opt = Amos(named, slot_shape=lambda n, s: slots[n], foreach=foreach, rounding=rounding,
               **opts)
    oracles = oracles_for(tensors, opts)
    for t in range(STEPS):
        theta = [p.detach().double().numpy().copy() for p in params]
        for i, p in enumerate(params):
            p.grad = torch.tensor(grads[t][i]).to(torch_dtype)
        opt.step()
        for i, p in enumerate(params):
            if p.numel() == 0:  # nothing to update; Amos keeps no state for it
                assert p.shape == tensors[i][0] and p not in opt.state
                continue
            g = p.grad.double().numpy()  # the gradient as the framework saw it
            want = oracles[i].step(theta[i], g, opts["lr"])
            check_step(f"p{i}", p.detach().double().numpy(), theta[i], want, oracles[i], g,
                       opts["lr"], dtype, ulps=1.0 if rounding == "nearest" else 2.0)
            state = opt.state[p]
            for key, slot in (("v", oracles[i].v), ("b", oracles[i].b)):
                np.testing.assert_allclose(state[key].double().numpy(), slot,
                                           rtol=1e-10 if dtype == "float64" else 1e-4,
                                           atol=1e-300, err_msg=f"p{i} {key}")


@heavy
@given(data=st.data())
def test_optax_follows_the_numpy_transcription(data) -> None:
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp

    from amosopt.optax import amos

    tensors, opts, dtype, seed = draw_problem(data)
    start, grads = random_values(seed, tensors)
    slots = {f"p{i}": shape if slot is None else slot
             for i, (shape, slot) in enumerate(tensors)}
    with jax.enable_x64(dtype == "float64"):
        jdtype = getattr(jnp, dtype)
        opts = in_dtype(opts, lambda x: jnp.asarray(x, jdtype).item())
        params = {f"p{i}": jnp.asarray(x, jdtype) for i, x in enumerate(start)}
        tx = amos(learning_rate=opts["lr"], eta_fn=opts["eta"],
                  shape_fn=lambda name, shape: slots["/".join(name)], beta=opts["beta"],
                  momentum=opts["momentum"] or None, clip_value=opts["clip_value"],
                  extra_l2=opts["extra_l2"])
        state = tx.init(params)
        oracles = oracles_for(tensors, opts)
        for t in range(STEPS):
            g = {f"p{i}": jnp.asarray(grads[t][i], jdtype) for i in range(len(tensors))}
            theta = {k: np.asarray(v, np.float64) for k, v in params.items()}
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            for i in range(len(tensors)):
                k = f"p{i}"
                assert params[k].dtype == jdtype and params[k].shape == tensors[i][0]
                if params[k].size == 0:
                    continue
                g64 = np.asarray(g[k], np.float64)
                want = oracles[i].step(theta[k], g64, opts["lr"])
                check_step(k, np.asarray(params[k], np.float64), theta[k], want, oracles[i], g64,
                           opts["lr"], dtype, rounded_update=True)


# ---- (b) shape expressions ---------------------------------------------------------------------

ATOMS = ["SHAPE", "SHAPE[0]", "SHAPE[-1]", "SHAPE[1:]", "SHAPE[:-1]", "SHAPE[::2]", "0", "1",
         "2", "-1", "0.5", "1e308", "64", "65", "1024", "9", "10**64", "2**0.5", "()", "(1,)"]
FUNCS = ["sqrt", "rsqrt", "prod", "sum", "len", "min", "max", "abs", "int", "float", "pow",
         "exp", "log", "log2"]
HOSTILE = ["__import__('os')", "SHAPE.__class__", "open('x')", "[1]", "{1}", "lambda: 1", "x",
           "'a'", "b'a'", "True", "None", "...", "f'{1}'", "(y:=1)", "1 if 1 else 2", "1<2",
           "not 1", "~1", "1 << 64", "1 & 1", "SHAPE[0:1, 1]", "sqrt(x=1)", "[*SHAPE]",
           "(*SHAPE,)", "print(1)", "eval('1')", "globals()", "SHAPE.count(1)", "1 @ 1"]


def expressions(max_leaves: int = 30):
    """Syntactically valid expressions built from the allowed grammar and from forbidden
    pieces, with huge numbers, powers and deep nesting."""
    leaf = st.sampled_from(ATOMS + HOSTILE)

    def extend(inner):
        return st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), inner
                      ).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(st.sampled_from(FUNCS), st.lists(inner, min_size=1, max_size=3)
                      ).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
            st.tuples(st.sampled_from(["-", "+"]), inner).map(lambda t: f"{t[0]}{t[1]}"),
            st.lists(inner, min_size=1, max_size=3).map(lambda xs: f"({', '.join(xs)},)"),
            st.tuples(inner, inner).map(lambda t: f"{t[0]}[{t[1]}]"),
        )

    return st.recursive(leaf, extend, max_leaves=max_leaves)


#: strings of the expressions' characters, most of them not even Python
noise = st.text(alphabet=string.digits + "SHAPE()[]:,+-*/%.e _sqrtlogminax" + "\x00\ud800é",
                max_size=80)
#: deep nesting and long repetitions, of any depth up to past the limits
repeated = st.tuples(st.sampled_from(["-", "+", "(", "sqrt(", "2**", "SHAPE[0]*", "(1,)+",
                                      "int(exp(709))*", "10**64*", "abs("]),
                     st.integers(0, 1200)).map(lambda t: t[0] * t[1] + "2"
                                              + ")" * (t[0].count("(") * t[1]))

#: the largest result: the expression length bound allows a few hundred products of numbers of
#: up to 1024 bits, and tuples no longer than the expression
MAX_BITS, MAX_TUPLE = 2**20, 1000


def assert_plain_result(value, depth: int = 0) -> None:
    """Numbers and (nested) tuples of them only, and of bounded size."""
    assert depth < 200
    if isinstance(value, tuple):
        assert len(value) <= MAX_TUPLE
        for element in value:
            assert_plain_result(element, depth + 1)
    else:
        assert type(value) in (int, float), type(value)
        if isinstance(value, int):
            assert value.bit_length() <= MAX_BITS


@given(expression=st.one_of(expressions(), noise, repeated),
       shape=st.lists(st.integers(0, 2**31), max_size=5).map(tuple))
def test_shape_expressions_are_arithmetic_bounded_and_fail_with_value_error(expression, shape):
    # CPU time of this thread, not wall time: other processes on a busy machine can pause this
    # one for a second (seen once in 3000 examples), which is not the evaluator's doing
    started = time.thread_time()
    try:
        result = evaluate_shape_expression(expression, shape)
    except ValueError as error:
        assert type(error) is ValueError  # not a subclass such as UnicodeEncodeError
        assert "expression" in str(error).lower()
    else:
        assert_plain_result(result)
        # a forbidden piece is never evaluated, only refused
        assert not any(bad in expression for bad in ("__", "lambda", "open(", "print(", "eval("))
    assert time.thread_time() - started < 1.0, expression[:100]


# ---- (c) invalid hyper-parameters --------------------------------------------------------------

#: argument -> invalid values (each a different kind of wrong)
INVALID = {
    "lr": [-1e-3, -math.inf, math.nan, math.inf, "0.1", None, [0.1], True],
    "eta": [0.0, -0.5, math.nan, math.inf, -math.inf, "0.5", True],
    "beta": [1.0, -0.1, 1.5, math.nan, "0.9", None, False],
    "momentum": [1.0, -0.1, 2.0, math.nan, "0.9"],
    "clip_value": [0.0, -1.0, math.nan, -math.inf, "1"],
    "extra_l2": [-1e-6, math.nan, math.inf, "0"],
    "c_coef": [-0.25, math.nan, math.inf, None],
    "d_coef": [-0.25, math.nan, math.inf, None],
    "epsilon": [0.0, -1e-30, math.nan, math.inf, None],
    "second_moment": ["row", "Row-Col", "", None, 1, True],
}
#: (1 and 0.0 pass as flags: they equal True and False, as torch's own optimizers take them)
TORCH_ONLY = {"foreach": ["yes", 2, "auto"], "maximize": [None, "no", 2], "fused": ["yes", None],
              "rounding": ["up", "Nearest", None, True, 0]}
VALID = dict(lr=0.1, eta=0.5)


@heavy
@given(arg=st.sampled_from(sorted(INVALID) + sorted(TORCH_ONLY)), data=st.data(),
       in_group=st.booleans(), seed=st.integers(0, 100))
def test_torch_invalid_hyperparameters_raise_naming_them_and_change_nothing(arg, data, in_group,
                                                                            seed):
    pytest.importorskip("torch")
    from amosopt.torch import Amos
    from tests.test_torch.conftest import assert_same, mlp, snapshot, train

    value = data.draw(st.sampled_from({**INVALID, **TORCH_ONLY}[arg]), label="value")
    model = mlp(seed=seed % 3)
    params = list(model.parameters())
    opt = Amos([{"params": params[:2]}], **VALID, momentum=0.5)
    train(model, opt, range(1))
    before = snapshot(opt)
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        if in_group:  # as a param group's override
            opt.add_param_group({"params": params[2:], arg: value})
        else:  # as a constructor argument
            Amos(params[2:], **dict(VALID, **{arg: value}))
    assert len(opt.param_groups) == 1  # the refused group is not kept
    assert_same(snapshot(opt), before)


@given(arg=st.sampled_from(sorted(set(INVALID) - {"eta"})), data=st.data())
def test_optax_invalid_hyperparameters_raise_naming_them(arg, data):
    pytest.importorskip("optax")
    from amosopt.optax import amos

    value = data.draw(st.sampled_from(INVALID[arg]), label="value")
    # optax's documented meaning of these values: None turns momentum / clipping off
    assume(not (arg in ("momentum", "clip_value") and value is None))
    kwargs = {"learning_rate": 0.1, "eta_fn": 0.5}
    kwargs["learning_rate" if arg == "lr" else arg] = value
    with pytest.raises(ValueError, match=rf"\b{'learning_rate' if arg == 'lr' else arg}\b"):
        amos(**kwargs)
