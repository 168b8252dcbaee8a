"""The README's JAX quick start runs as it stands, alone (a user copies the one block)."""

from __future__ import annotations

import re

import pytest

from tests.markdown_blocks import README, python_blocks

jax = pytest.importorskip("jax")
pytest.importorskip("optax")


def quick_start() -> str:
    text = README.read_text()
    start = text.index("## JAX quick start\n")
    end = text.index("\n## ", start + 1)
    (block,) = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    return block


def test_jax_quick_start_runs_alone(capsys) -> None:
    assert quick_start() == python_blocks(README)[1].code
    namespace: dict = {}  # nothing but what the block imports
    with jax.enable_x64(False):
        exec(compile(quick_start(), str(README), "exec"), namespace)  # noqa: S102
    y = namespace["y"]
    final = float(capsys.readouterr().out.split()[-1])  # the printed final loss
    assert final < 0.1 * float((y**2).mean())  # well below predicting zero
