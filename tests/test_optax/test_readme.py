"""The README's JAX quick-start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("optax")

README = Path(__file__).resolve().parents[2] / "README.md"


def jax_section() -> str:
    text = README.read_text()
    start = text.index("## JAX quick start\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_jax_quick_start_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", jax_section(), flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    with jax.enable_x64(False):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    y = namespace["y"]
    final = float(capsys.readouterr().out.split()[-1])  # the printed final loss
    assert final < 0.1 * float((y**2).mean())  # well below predicting zero
    P = jax.sharding.PartitionSpec
    assert namespace["state_specs"][1].v == {  # slots (1, out) and (): fan-in axis not split
        "hidden": {"kernel": P(None, "model"), "bias": P()},
        "out": {"kernel": P(None, None), "bias": P()},
    }


def test_use_with_flax_nnx():
    nnx = pytest.importorskip("flax.nnx")
    from tests.test_optax.test_integrations import MLP, data

    text = README.read_text()
    start = text.index("## Use with your trainer\n")
    section = text[start:text.index("\n## ", start + 1)]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.S)[-1]
    x, y = data()
    namespace = {"nnx_model": MLP(nnx.Rngs(0)), "x_batch": x[:2]}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    model, optimizer = namespace["nnx_model"], namespace["optimizer"]
    loss = nnx.jit(lambda m: ((m(x) - y) ** 2).mean())
    before = float(loss(model))
    for _ in range(50):
        grads = nnx.grad(lambda m: ((m(x) - y) ** 2).mean())(model)
        optimizer.update(model, grads)
    assert float(loss(model)) < 0.3 * before
