"""The README's PyTorch quick start runs as it stands, alone (a user copies the one block)."""

from __future__ import annotations

import re

import torch

from amosopt.torch import Amos
from tests.markdown_blocks import README, python_blocks


def quick_start() -> str:
    text = README.read_text()
    start = text.index("## PyTorch quick start\n")
    end = text.index("\n## ", start + 1)
    (block,) = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    return block


def test_torch_quick_start_runs_alone(capsys) -> None:
    torch.manual_seed(0)
    namespace: dict = {}  # nothing but what the block imports
    exec(compile(quick_start(), str(README), "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["optimizer"], Amos)
    printed = float(capsys.readouterr().out)  # the loss after the 300-step budget
    baseline = torch.nn.functional.mse_loss(torch.zeros_like(namespace["y"]), namespace["y"])
    assert printed < 0.5 * baseline.item()  # well below predicting zero
    assert namespace["scheduler"].get_last_lr() == [0.0]  # the cooldown reached 0


def test_readme_has_one_block_per_backend() -> None:
    # each is run alone: this file's test and tests/test_optax/test_readme.py
    blocks = python_blocks(README)
    assert len(blocks) == 2 and all(b.skip_reason is None for b in blocks)
    assert quick_start() == blocks[0].code
