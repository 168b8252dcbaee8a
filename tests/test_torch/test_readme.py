"""The README's PyTorch code runs as written: the quick start (a budget with a cooldown, the
anytime cooldown from a checkpoint, fused=True, torch.compile) and the scales section, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import torch

from amosopt.torch import Amos

README = Path(__file__).resolve().parents[2] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def python_blocks(title: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section(title), flags=re.S)


def test_torch_quick_start_and_scales_run(capsys) -> None:
    torch.manual_seed(0)
    blocks = python_blocks("PyTorch quick start")
    assert len(blocks) == 4
    namespace: dict = {}
    for block in blocks[:3]:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    optimizer = namespace["optimizer"]  # the third block's
    assert isinstance(optimizer, Amos) and optimizer.param_groups[0]["fused"] is True
    exec(compile(blocks[3], str(README), "exec"), namespace)  # noqa: S102
    # the compiled step of the last block steps the model
    model, optimizer = namespace["model"], namespace["optimizer"]
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(namespace["x"]), namespace["y"]).backward()
    namespace["compiled_step"]()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    printed = [float(v) for v in capsys.readouterr().out.split()]
    assert len(printed) == 2  # after the 300-step budget, and after the branched cooldown
    baseline = torch.nn.functional.mse_loss(torch.zeros_like(namespace["y"]),
                                            namespace["y"]).item()
    assert all(loss < 0.5 * baseline for loss in printed)  # well below predicting zero
    assert namespace["cooldown"].get_last_lr() == [0.0]  # the cooldown reached 0

    (scales_block,) = python_blocks("Scales")
    exec(compile(scales_block, str(README), "exec"), namespace)  # noqa: S102
    assert capsys.readouterr().out.strip() == "Linear weight, fan-in 8: sqrt(1/8)"
    scales = namespace["scales"]
    assert scales["2.weight"].eta == 1.0 and "override" in str(scales["2.weight"].reason)
    assert scales["0.weight"].slot_shape == (64, 1) and scales["0.bias"].slot_shape == ()
    assert isinstance(namespace["optimizer"], Amos)


def test_use_with_hugging_face_and_lightning(tmp_path, monkeypatch) -> None:
    pytest.importorskip("transformers")
    lightning = pytest.importorskip("lightning")
    from tests.test_torch.test_integrations import MaskedBytes, regression_data, tiny_bert

    hf_block, lightning_block, _ = python_blocks("Use with your trainer")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"model": tiny_bert(), "train_dataset": MaskedBytes()}
    batch = torch.utils.data.default_collate([MaskedBytes()[i] for i in range(32)])

    def mlm_loss() -> float:
        with torch.no_grad():
            return namespace["model"](**batch).loss.item()

    before = mlm_loss()
    exec(compile(hf_block, str(README), "exec"), namespace)  # noqa: S102
    assert mlm_loss() < before - 0.3
    assert isinstance(namespace["trainer"].optimizer.optimizer
                      if hasattr(namespace["trainer"].optimizer, "optimizer")
                      else namespace["trainer"].optimizer, Amos)

    namespace: dict = {}  # the block imports what it needs
    exec(compile(lightning_block, str(README), "exec"), namespace)  # noqa: S102
    x, y = regression_data().tensors
    # Lightning's usual max_epochs (max_steps is then -1) and a max_steps budget: 10 batches
    # of 16 per epoch, so 15 epochs are the same 150 steps
    for limit in (dict(max_epochs=15), dict(max_steps=150)):
        torch.manual_seed(0)
        module = namespace["Regression"]()
        before = torch.nn.functional.mse_loss(module(x), y).item()
        trainer = lightning.Trainer(**limit, accelerator="cpu", logger=False,
                                    enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(module, torch.utils.data.DataLoader(regression_data(), batch_size=16))
        assert trainer.global_step == 150, limit
        assert isinstance(trainer.optimizers[0], Amos)
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        assert scheduler.total_steps == 150, limit
        assert trainer.optimizers[0].param_groups[0]["lr"] == 0.0  # cooled down at the end
        assert torch.nn.functional.mse_loss(module(x), y).item() < 0.5 * before
        # Lightning's wrapper has Amos's methods
        numbers = module.optimizers().diagnostics(per_parameter=False)
        assert numbers["step/max"] == 0.0 and "b/median" in numbers  # xi = 0 after cooldown


def test_what_is_amos_doing(capsys) -> None:
    from amosopt.torch import auto_amos

    (block,) = python_blocks("What is Amos doing?")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
    optimizer = auto_amos(model, lr=0.05, clip_value=1.0)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(32, 8)).pow(2).mean().backward()
        optimizer.step()
    namespace = {"optimizer": optimizer}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    step, onset = capsys.readouterr().out.split()
    numbers = namespace["numbers"]
    assert float(step) == pytest.approx(numbers["step/median"], rel=1e-2)
    assert float(onset.replace(",", "")) == pytest.approx(numbers["decay_onset/min"], abs=1)
    assert {"lr/0.weight", "weight_decay/max", "clip_fraction/2.bias", "decay/min"} <= set(numbers)
    summary = namespace["summary"]  # the same summary, without a key per parameter
    assert summary == {k: v for k, v in numbers.items()
                       if k.rsplit("/", 1)[1] in ("min", "median", "max")}
