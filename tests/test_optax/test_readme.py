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
