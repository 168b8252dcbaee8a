"""The first mistakes a new optax user makes get an error that names the fix."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from amosopt.optax import amos, auto_scales, diagnostics, scale_by_amos  # noqa: E402


@pytest.mark.parametrize("factory", [amos, scale_by_amos])
def test_missing_eta_fn_points_to_auto_scales(factory):
    with pytest.raises(TypeError, match=r"eta_fn.*auto_scales\(params\)"):
        factory(0.05)


@pytest.mark.parametrize("factory", [amos, scale_by_amos])
@pytest.mark.parametrize("kwargs, fix", [
    (dict(weight_decay=0.1), r"weight_decay=: Amos decays the weights itself.*extra_l2="),
    (dict(b1=0.9), r"b1=: momentum="),
    (dict(b2=0.95), r"b2=: beta= is the decay"),
    (dict(eps=1e-8), r"eps=: epsilon="),
    (dict(lr=0.1), r"lr=: learning_rate= is Amos's global learning rate"),
    (dict(foo=1), r"foo=: not an argument of Amos"),
])
def test_arguments_of_other_optimizers_name_what_amos_takes(factory, kwargs, fix):
    with pytest.raises(TypeError, match=fix + r".*Its arguments: learning_rate, eta_fn"):
        factory(0.05, eta_fn=0.5, **kwargs)


def test_the_hint_keeps_the_signature_that_inject_hyperparams_binds():
    """optax.inject_hyperparams reads the factory's signature: the check must not hide it."""
    params = {"w": jnp.ones(3)}
    tx = optax.inject_hyperparams(amos)(learning_rate=0.1, eta_fn=0.5, beta=0.9)
    state = tx.init(params)
    updates, _ = tx.update(params, state, params)
    expected, _ = amos(0.1, eta_fn=0.5, beta=0.9).update(
        params, amos(0.1, eta_fn=0.5, beta=0.9).init(params), params)
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
    assert float(state.hyperparams["beta"]) == pytest.approx(0.9)


def test_diagnostics_takes_every_argument_of_amos():
    kwargs = dict(learning_rate=0.1, eta_fn=0.5, shape_fn=lambda name, shape: (1, shape[1]),
                  momentum=0.9, clip_value=1.0, beta=0.9)
    params = {"w": jnp.ones((4, 3))}
    tx = amos(**kwargs)
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full((4, 3), 0.5)}, state, params)
    given_all = diagnostics(state, params, **kwargs)
    without = {k: v for k, v in kwargs.items() if k not in ("shape_fn", "momentum")}
    assert given_all == diagnostics(state, params, **without)
    # after one step v_hat = (1 - beta) g^2 / (1 - beta) = 0.25, so the paper's step per unit
    # gradient is xi eta d / sqrt(v_hat), with d = 1 / (1 + d_coef sqrt(xi eta) b)
    b = float(given_all["b/w"])
    d = 1 / (1 + 0.25 * np.sqrt(0.1 * 0.5) * b)
    assert float(given_all["lr/w"]) == pytest.approx(0.1 * 0.5 * d / 0.5, rel=1e-5)


def test_diagnostics_per_parameter_false_keeps_only_the_summary():
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(2)}
    tx = amos(0.1, eta_fn=0.5)
    state = tx.init(params)
    _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    numbers = diagnostics(state, params, learning_rate=0.1, eta_fn=0.5, per_parameter=False)
    assert numbers and all(k.rsplit("/", 1)[1] in ("min", "median", "max") for k in numbers)


class _BatchNormModel:
    """A flax linen model with BatchNorm (built lazily: flax is optional)."""

    @staticmethod
    def build():
        linen = pytest.importorskip("flax.linen")

        class Model(linen.Module):
            @linen.compact
            def __call__(self, x):
                x = linen.Dense(8)(x)
                x = linen.BatchNorm(use_running_average=True)(x)
                return linen.Dense(1)(linen.relu(x))

        model, x = Model(), jnp.ones((2, 4))
        return model, model.init(jax.random.key(0), x), x


def test_flax_batchnorm_model_hint_names_apply_fn():
    model, variables, x = _BatchNormModel.build()
    with pytest.raises(ValueError, match=r"apply_fn=lambda params, x: model\.apply"):
        auto_scales(variables["params"], model, x)
    # the hinted form works
    table = auto_scales(variables["params"], example_inputs=x, apply_fn=lambda p, x: model.apply(
        {"params": p, "batch_stats": variables["batch_stats"]}, x))
    assert len(table) == len(jax.tree.leaves(variables["params"]))


def test_flax_whole_variables_are_refused_with_the_fix():
    model, variables, x = _BatchNormModel.build()
    with pytest.raises(ValueError, match=r"whole flax variables.*variables\['params'\].*apply_fn="):
        auto_scales(variables, model, x)


def test_rule_table_entry_that_matches_no_variable_warns_at_init():
    from amosopt.rules import UnmatchedRuleWarning

    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    tx = amos(0.1, eta_fn={r"dense/kernal": 0.5, r".*": 1.0},
              shape_fn={r".*": (), r"dense/bias": ()})
    with pytest.warns(UnmatchedRuleWarning) as record:
        tx.init(params)
    messages = [str(w.message) for w in record]
    assert any("eta_fn: the rule 'dense/kernal' is never used: it matches no parameter" in m
               and "Nearest parameter names: 'dense/kernel'" in m for m in messages)
    assert any("shape_fn: the rule 'dense/bias' is never used: every parameter it matches is "
               "taken by an earlier rule" in m for m in messages)
