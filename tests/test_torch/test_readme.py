"""The README's PyTorch quick-start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from amosopt.torch import Amos

README = Path(__file__).resolve().parents[2] / "README.md"


def torch_section() -> str:
    text = README.read_text()
    start = text.index("## PyTorch quick-start")
    return text[start:text.index("\n## ", start + 1)]


def test_torch_quick_start_runs(capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", torch_section(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    final_loss = float(capsys.readouterr().out.split()[-1])  # printed after 300 steps
    assert final_loss < torch.nn.functional.mse_loss(
        torch.zeros_like(namespace["y"]), namespace["y"]).item()  # below predicting zero
    optimizer = namespace["optimizer"]  # the last block's
    assert isinstance(optimizer, Amos) and optimizer.param_groups[0]["fused"] is True
