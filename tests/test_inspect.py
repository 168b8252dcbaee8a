"""`amos inspect`: the table and the memory comparison for a model built from a factory."""

import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from amosopt.cli import main  # noqa: E402


def make_mlp(width: int = 8, hidden: int = 32, frozen_head: bool = False) -> nn.Module:
    """The factory that the tests name as TARGET (tests.test_inspect:make_mlp)."""
    model = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.LayerNorm(hidden),
                          nn.Linear(hidden, 3))
    if frozen_head:
        model[3].requires_grad_(False)
    return model


def not_a_model():
    return 42


def broken():
    raise RuntimeError("boom")


def _rows(text):
    return {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}


def test_inspect_prints_table_and_memory(capsys):
    width, hidden = 6, 10
    code = main(["inspect", "tests.test_inspect:make_mlp",
                 "--kwargs", f'{{"width": {width}, "hidden": {hidden}}}',
                 "--example-input-shape", f"2,{width}"])
    out = capsys.readouterr().out
    assert code == 0
    rows = _rows(out)
    assert rows["0.weight"][1:3] == [f"({hidden},", f"{width})"]
    assert float(rows["0.weight"][3]) == pytest.approx(math.sqrt(1 / width), rel=1e-5)
    assert float(rows["3.weight"][3]) == pytest.approx(math.sqrt(1 / hidden), rel=1e-5)
    assert float(rows["2.weight"][2]) == 1.0  # shape "(10,)" is one token
    # memory, counted here from the architecture: AdamW 2 * params, Amos 2 * slots
    params = hidden * width + hidden + 2 * hidden + 3 * hidden + 3
    slots = hidden + 1 + 1 + 1 + 3 + 1
    adamw, amos, amos_m = 8 * params, 8 * slots, 8 * slots + 4 * params
    assert f"{adamw:,}" in rows["AdamW"]
    assert f"{amos:,}" in out and f"{100 * amos / adamw:.3f}%" in out
    assert f"{amos_m:,}" in out and f"{100 * amos_m / adamw:.3f}%" in out


def test_inspect_without_inputs_uses_heuristic_and_skips_frozen(capsys):
    assert main(["inspect", "tests.test_inspect:make_mlp",
                 "--kwargs", '{"frozen_head": true}']) == 0
    rows = _rows(capsys.readouterr().out)
    assert "3.weight" not in rows
    assert float(rows["0.bias"][2]) == 0.5


def test_inspect_int64_inputs(capsys):
    assert main(["inspect", "torch.nn:Embedding", "--kwargs",
                 '{"num_embeddings": 10, "embedding_dim": 8}', "--example-input-shape", "3",
                 "--example-input-dtype", "int64"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert float(rows["weight"][3]) == pytest.approx(0.5)  # sqrt(2/8)


@pytest.mark.parametrize("argv, message", [
    (["no_colon_here"], "package.module:callable"),
    (["no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
    (["tests.test_inspect:missing"], "has no attribute 'missing'"),
    (["tests.test_inspect:not_a_model"], "returned int, not a torch.nn.Module"),
    (["tests.test_inspect:broken"], "failed: RuntimeError: boom"),
    (["tests.test_inspect:make_mlp", "--kwargs", "{bad"], "--kwargs is not valid JSON"),
    (["tests.test_inspect:make_mlp", "--kwargs", '{"nope": 1}'], "TypeError"),
    (["tests.test_inspect:make_mlp", "--example-input-shape", "2,x"], "--example-input-shape"),
    (["tests.test_inspect:make_mlp", "--example-input-shape", "2,5"], "forward pass"),
])
def test_inspect_errors_are_one_line(capsys, argv, message):
    assert main(["inspect", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------------------
# --checkpoint: what Amos is doing, from a saved state_dict


def _checkpoint(tmp_path, named: bool = True, steps: int = 12):
    from amosopt.torch import Amos

    torch.manual_seed(0)
    model = make_mlp()
    params = model.named_parameters() if named else model.parameters()
    opt = Amos(params, lr=0.03, eta=0.4, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(16, 8)).pow(2).mean().backward()
        opt.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    return path, opt


@pytest.mark.parametrize("named", [True, False])
def test_inspect_checkpoint_prints_the_diagnostics(capsys, tmp_path, named):
    from amosopt.torch.diagnostics import diagnostics

    path, opt = _checkpoint(tmp_path, named)
    assert main(["inspect", "tests.test_inspect:make_mlp", "--checkpoint", str(path)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint after 12 steps (xi = 0.03)" in out
    table = out[out.index("checkpoint after"):].splitlines()[3:]
    rows = {line.split()[0]: line.split()[1:] for line in table}
    numbers = diagnostics(opt)
    names = ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"]
    assert list(rows) == names  # names from the factory's model when the optimizer had none
    for i, name in enumerate(names):
        key = name if named else str(i)
        assert float(rows[name][0]) == pytest.approx(numbers[f"step/{key}"], rel=1e-3)
        assert float(rows[name][2]) == pytest.approx(numbers[f"d_t/{key}"], abs=1e-4)


def test_inspect_checkpoint_errors(capsys, tmp_path):
    argv = ["inspect", "tests.test_inspect:make_mlp", "--checkpoint"]
    assert main(argv + [str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    adamw = torch.optim.AdamW(make_mlp().parameters())
    torch.save(adamw.state_dict(), tmp_path / "adamw.pt")
    assert main(argv + [str(tmp_path / "adamw.pt")]) == 2
    assert "not Amos's" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(2)}, tmp_path / "weights.pt")
    assert main(argv + [str(tmp_path / "weights.pt")]) == 2
    assert "no optimizer state_dict" in capsys.readouterr().err


def test_format_rows_aligns_columns():
    from amosopt.commands.inspect import format_rows

    text = format_rows([("a", "bb"), ("ccc", "d")])
    assert text.splitlines() == ["a    bb", "---  --", "ccc  d"]


def _pretrained_mlp_weights(path):
    """A "pretrained" make_mlp(6, 10): the first weight 4 x its init, the LayerNorm bias 0."""
    torch.manual_seed(0)
    model = make_mlp(6, 10)
    with torch.no_grad():
        model[0].weight.mul_(4.0)
        model[0].bias.fill_(0.3)
    torch.save({"model": model.state_dict()}, path)
    return model


def _rms(tensor):
    return tensor.detach().double().square().mean().sqrt().item()


def test_inspect_pretrained_shows_both_etas(capsys, tmp_path):
    from amosopt.hyperparameters import WARM_START_B0

    model = _pretrained_mlp_weights(tmp_path / "weights.pt")
    code = main(["inspect", "tests.test_inspect:make_mlp", "--kwargs",
                 '{"width": 6, "hidden": 10}', "--example-input-shape", "2,6", "--pretrained",
                 "--weights", str(tmp_path / "weights.pt")])
    assert code == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["name"][:6] == ["name", "shape", "eta", "(weights)", "eta", "(automatic)"]
    weight = rows["0.weight"]  # name, "(10,", "6)", weights, automatic, ratio, b0, ...
    assert float(weight[3]) == pytest.approx(_rms(model[0].weight), rel=1e-5)
    assert float(weight[4]) == pytest.approx(math.sqrt(1 / 6), rel=1e-5)
    assert float(weight[5]) == pytest.approx(float(weight[3]) / float(weight[4]), rel=1e-2)
    assert float(weight[6]) == WARM_START_B0
    bias = rows["0.bias"]
    assert float(bias[2]) == pytest.approx(0.3, rel=1e-5) and float(bias[3]) == 0.5
    ln_bias = rows["2.bias"]  # zero: the automatic eta and a fresh start
    assert float(ln_bias[2]) == 0.5 and float(ln_bias[5]) == 0.0
    assert "all zero" in " ".join(ln_bias)


def test_inspect_weights_errors(capsys, tmp_path):
    torch.save({"x": torch.zeros(2)}, tmp_path / "other.pt")
    for path, message in ((tmp_path / "missing.pt", "no such file"),
                          (tmp_path / "other.pt", "not this model's weights")):
        assert main(["inspect", "tests.test_inspect:make_mlp", "--weights", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_inspect_pretrained_hf_folder_loads_its_weights(capsys, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(5.0)
    model.save_pretrained(tmp_path / "gpt2")
    assert main(["inspect", "--hf-config", str(tmp_path / "gpt2"), "--hf-class",
                 "GPT2LMHeadModel", "--pretrained"]) == 0
    rows = _rows(capsys.readouterr().out)
    row = rows["transformer.h.0.mlp.c_fc.weight"]
    assert float(row[3]) == pytest.approx(_rms(model.transformer.h[0].mlp.c_fc.weight), rel=1e-5)
    assert float(row[4]) == pytest.approx(math.sqrt(1 / 16), rel=1e-5)
