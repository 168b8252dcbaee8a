"""The command line where a new user meets it first: `amos inspect` on a Hugging Face config
and on a factory in the current directory, a checkpoint after its cooldown, `python -m
amosopt`, `amos suggest --examples 1e6`, and `amos compare` without torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from amosopt.cli import main

ROOT = Path(__file__).resolve().parents[1]
GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 100,
        "n_positions": 16}


def _rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}


def _run_module(*argv: str, prelude: str = "") -> subprocess.CompletedProcess:
    """``python -m amosopt ARGV`` (after ``prelude``) with this checkout first on the path."""
    code = f"{prelude}\nimport runpy, sys\nsys.argv = ['amosopt', *{list(argv)!r}]\n" \
           "runpy.run_module('amosopt', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          timeout=300)


# ------------------------------------------------------------------------------------------
# amos inspect --hf-config


@pytest.mark.parametrize("form", ["json", "file", "folder"])
def test_inspect_builds_a_hugging_face_model_from_its_config(capsys, tmp_path, form):
    transformers = pytest.importorskip("transformers")
    text = json.dumps(GPT2)
    if form != "json":
        (tmp_path / "config.json").write_text(text)
        text = str(tmp_path if form == "folder" else tmp_path / "config.json")
    assert main(["inspect", "--hf-config", text, "--hf-class", "AutoModelForCausalLM",
                 "--kwargs", '{"n_layer": 1}', "--example-input-shape", "1,16",
                 "--example-input-dtype", "int64"]) == 0
    rows = _rows(capsys.readouterr().out)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**GPT2, "n_layer": 1}))
    names = [n for n, _ in model.named_parameters()]
    assert [n for n in rows if n.startswith("transformer.")] == names  # n_layer from --kwargs
    # Conv1D (in, out): fan-in 32, and 128 after the GELU (closed form sqrt(k / fan_in))
    assert float(rows["transformer.h.0.mlp.c_fc.weight"][3]) == pytest.approx(math.sqrt(1 / 32),
                                                                               rel=1e-5)
    assert float(rows["transformer.h.0.mlp.c_proj.weight"][3]) == pytest.approx(
        math.sqrt(2 / 128), rel=1e-5)


def test_inspect_hf_config_default_class_is_auto_model(capsys):
    pytest.importorskip("transformers")
    assert main(["inspect", "--hf-config", json.dumps(GPT2)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert "wte.weight" in rows and "lm_head.weight" not in rows  # GPT2Model, no prefix


@pytest.mark.parametrize("argv, message", [
    ([], "give TARGET (package.module:callable) or --hf-config"),
    (["tests.test_inspect:make_mlp", "--hf-config", "{}"], "not both"),
    (["--hf-config", '{"n_layer": 2}'], 'with its "model_type"'),
    (["--hf-config", "{bad"], "--hf-config is not valid JSON"),
    (["--hf-config", "/no/such/config.json"], "no such file"),
    (["--hf-config", json.dumps(GPT2), "--hf-class", "NoSuchModel"], "no such class"),
])
def test_inspect_hf_config_errors_are_one_line(capsys, argv, message):
    pytest.importorskip("transformers")
    assert main(["inspect", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------
# a factory in the current directory


def test_inspect_finds_a_factory_in_the_current_directory(capsys, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    (tmp_path / "my_models_for_inspect.py").write_text(textwrap.dedent("""
        import torch

        def build(width=4):
            return torch.nn.Sequential(torch.nn.Linear(width, 3))
    """))
    monkeypatch.chdir(tmp_path)
    # as under the console script: the current directory is not on the path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_models_for_inspect", raising=False)
    assert main(["inspect", "my_models_for_inspect:build"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert float(rows["0.weight"][3]) == pytest.approx(0.5)  # sqrt(1/4)


# ------------------------------------------------------------------------------------------
# --checkpoint after the cooldown


def test_inspect_checkpoint_after_its_cooldown_shows_the_peak(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    from amosopt.torch import Amos, wsd_schedule
    from amosopt.torch.diagnostics import diagnostics
    from tests.test_inspect import make_mlp

    torch.manual_seed(0)
    model = make_mlp()
    opt = Amos(model.named_parameters(), lr=0.03, eta=0.4)
    scheduler = wsd_schedule(opt, total_steps=10, cooldown_steps=4)
    for _ in range(10):
        opt.zero_grad()
        model(torch.randn(16, 8)).pow(2).mean().backward()
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.0
    torch.save(opt.state_dict(), tmp_path / "done.pt")
    argv = ["inspect", "tests.test_inspect:make_mlp", "--checkpoint", str(tmp_path / "done.pt")]
    for xi, extra, words in ((0.03, [], "xi = 0: the schedule has cooled down to 0 from its "
                                          "peak 0.03, so nothing moves any more; the rows at "
                                          "the peak xi = 0.03"),
                             (0.01, ["--xi", "0.01"], "the rows at --xi 0.01")):
        assert main(argv + extra) == 0
        out = capsys.readouterr().out
        assert words in out
        table = out[out.index("checkpoint after"):].splitlines()[3:]
        rows = {line.split()[0]: line.split()[1:] for line in table}
        opt.param_groups[0]["lr"] = xi  # the numbers Amos has at that xi
        numbers = diagnostics(opt)
        for name in ("0.weight", "3.bias"):
            assert float(rows[name][0]) == pytest.approx(numbers[f"step/{name}"], rel=1e-3)
            assert float(rows[name][0]) > 0 and "inf" not in rows[name][4]
        opt.param_groups[0]["lr"] = 0.0


# ------------------------------------------------------------------------------------------
# python -m amosopt, amos suggest --examples 1e6, amos compare without torch


def test_python_dash_m_amosopt_is_the_cli_and_suggest_takes_1e6():
    done = _run_module("suggest", "--examples", "1e6", "--batch-size", "32", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["xi"] == pytest.approx(1 / math.sqrt(1e6 / 32))


@pytest.mark.parametrize("text", ["1.5", "1e-3", "many"])
def test_suggest_refuses_a_count_that_is_not_whole(capsys, text):
    with pytest.raises(SystemExit):
        main(["suggest", "--examples", text, "--batch-size", "32"])
    assert "expected a whole number" in capsys.readouterr().err


def test_compare_without_torch_names_the_extra(tmp_path):
    done = _run_module("compare", "--quick", "--out", str(tmp_path / "out"),
                       prelude="import sys; sys.modules['torch'] = None  # not installed")
    assert done.returncode == 2
    assert "amos compare needs torch" in done.stderr and "pip install 'amosopt[cli]'" in done.stderr
    assert "Traceback" not in done.stderr
