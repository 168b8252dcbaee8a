"""The documentation: every Python block of every guide runs as written
(``tests/markdown_blocks.py`` says how, and how a block is marked as not run), each page's blocks
do what the text around them says, and the site builds in strict mode (a broken reference fails)
without the network."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.markdown_blocks import DOCS, README, ROOT, Page, pages, python_blocks

torch = pytest.importorskip("torch")

GUIDES = DOCS / "guides"
#: the pages with Python blocks, each run by the test named here
TESTED = {
    GUIDES / "trainers.md": "test_trainers_and_sharding",
    GUIDES / "finetuning.md": "test_fine_tuning",
    GUIDES / "scales.md": "test_scales_and_rules",
    GUIDES / "schedules.md": "test_schedules_and_diagnostics",
    GUIDES / "precision.md": "test_16_bit_parameters_and_compile",
}


def test_every_page_with_code_has_its_test() -> None:
    with_code = {page for page in pages() if python_blocks(page)}
    assert with_code == set(TESTED)
    assert all(callable(globals()[name]) for name in TESTED.values())


def test_blocks_not_run_are_few_and_say_why() -> None:
    skipped = [(page, b) for page in [*pages(), README] for b in python_blocks(page)
               if b.skip_reason is not None]
    assert len(skipped) <= 3, skipped
    assert all(len(b.skip_reason.strip()) >= 10 for _, b in skipped), skipped


def test_blocks_and_the_not_run_marker(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\n<!-- not run: needs two GPUs -->\n"
                    "```python\nraise SystemExit\n```\n\n```console\n$ amos\n```\n"
                    "```python\ny = x + 1\n```\n")
    blocks = python_blocks(page)
    assert [(b.code, b.line, b.skip_reason) for b in blocks] == [  # the fences' lines
        ("x = 1\n", 3, None), ("raise SystemExit\n", 8, "needs two GPUs"),
        ("y = x + 1\n", 15, None)]
    run = Page(page)
    assert run.run()["y"] == 2  # one namespace; the marked block did not run
    run.check_all_ran()


def test_trainers_and_sharding(tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("transformers")
    lightning = pytest.importorskip("lightning")
    pytest.importorskip("flax.nnx")
    from amosopt.torch import Amos, unwrap_optimizer

    monkeypatch.chdir(tmp_path)  # the Trainer writes to "out"
    page = Page(GUIDES / "trainers.md")

    page.run(0)  # the tiny BERT and its dataset
    batch = torch.utils.data.default_collate(page["train_dataset"][:64])

    def mlm_loss() -> float:
        with torch.no_grad():
            return page["model"](**batch).loss.item()

    before = mlm_loss()
    assert before == pytest.approx(math.log(257), abs=0.3)  # untrained: about uniform
    page.run(1)  # Trainer with trainer_optimizer
    assert mlm_loss() < before - 0.3
    assert isinstance(unwrap_optimizer(page["trainer"].optimizer), Amos)  # accelerate's wrapper

    page.run(3)  # the Lightning module, trained for 15 epochs of 10 batches
    x, y = page["x"], page["y"]
    check_lightning_run(page["regression"], page["lightning_trainer"], x, y)
    # a max_steps budget: estimated_stepping_batches is the same 150 steps
    torch.manual_seed(0)
    regression = page["Regression"]()
    lightning_trainer = lightning.Trainer(max_steps=150, accelerator="cpu", logger=False,
                                          enable_checkpointing=False, enable_progress_bar=False,
                                          enable_model_summary=False)
    lightning_trainer.fit(regression, page["loader"])
    check_lightning_run(regression, lightning_trainer, x, y)

    page.run(5)  # the nnx model and its nnx.Optimizer
    model, xb, yb = page["nnx_model"], page["x_batch"], page["y_batch"]
    before = float(((model(xb) - yb) ** 2).mean())
    capsys.readouterr()
    page.run(6)  # 50 steps
    printed = float(capsys.readouterr().out)
    assert printed == pytest.approx(float(((model(xb) - yb) ** 2).mean()), abs=1e-4)
    assert printed < 0.5 * before

    page.run()  # the sharding specs of the JAX state
    page.check_all_ran()
    P = pytest.importorskip("jax").sharding.PartitionSpec
    # the Amos state (after clipping in the chain): slots (1, out) and (); the fan-in axis, which
    # a factored slot averages over, is not split
    assert page["state_specs"][1].v == {
        "hidden": {"kernel": P(None, "model"), "bias": P()},
        "out": {"kernel": P(None, None), "bias": P()},
    }


def test_fine_tuning(tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    jax = pytest.importorskip("jax")
    from amosopt.hyperparameters import WARM_START_B0, WARM_START_ETA_FLOOR
    from amosopt.torch import Amos, unwrap_optimizer

    # the defaults the guide and the README state are the code's
    for text in ((GUIDES / "finetuning.md").read_text(), README.read_text()):
        assert f"`b0` (default {WARM_START_B0:g})" in text
    assert f"(default {WARM_START_ETA_FLOOR:g})" in (GUIDES / "finetuning.md").read_text()
    monkeypatch.chdir(tmp_path)  # the Trainer writes to "out" and "lora-out"
    page = Page(GUIDES / "finetuning.md")
    page.run(0)  # the stand-in pretrained GPT-2 and its dataset
    model = page["model"]
    batch = torch.utils.data.default_collate(page["train_dataset"][:32])
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}

    def lm_loss(m) -> float:
        with torch.no_grad():
            return m(**batch).loss.item()

    before = lm_loss(model)
    page.run(1)  # full fine-tuning, 20 steps, checkpoints at 10 and 20
    assert lm_loss(model) < before - 0.3
    optimizer = unwrap_optimizer(page["trainer"].optimizer)
    assert isinstance(optimizer, Amos)
    table = optimizer.scales
    for name, p in model.named_parameters():
        entry = table[name]
        rms = pretrained[name].double().square().mean().sqrt().item()
        if rms == 0:  # the zero biases: automatic, a fresh start
            assert entry.b0 == 0.0
        else:
            assert entry.eta == pytest.approx(max(rms, WARM_START_ETA_FLOOR * float(
                entry.reason.split("automatic ")[1].split(":")[0])), rel=1e-5)
            assert entry.b0 == WARM_START_B0
        assert optimizer.state[p]["eta"] == entry.eta
        assert float(optimizer.state[p]["b"].min()) >= entry.b0  # b grows from b0

    page.run(2)  # a fresh model, resumed from step 10: equal to the run that went on
    resumed = page["resumed"]
    assert page["trainer"].state.global_step == 20
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)

    page.run(3)  # LoRA
    lora_model = page["lora_model"]
    lora_optimizer = unwrap_optimizer(page["trainer"].optimizer)
    named = [n for g in lora_optimizer.param_groups for n in g["param_names"]]
    assert named and all(".lora_" in n for n in named)  # base weights frozen, left out
    assert all(lora_optimizer.scales[n].b0 == 0.0 for n in named)
    b_name = "base_model.model.transformer.h.0.attn.c_attn.lora_B.default.weight"
    assert lora_model.get_parameter(b_name).abs().max() > 0  # B has learned
    page.run(4)
    assert "LoRA B of rank 4, scaling 2" in capsys.readouterr().out

    with jax.enable_x64(False):
        page.run()
    page.check_all_ran()
    b = page["state"][1].b
    assert float(b["hidden"]["kernel"].min()) == WARM_START_B0  # pretrained
    assert float(b["hidden"]["bias"]) == 0.0  # zero: a fresh start
    restored = page["scales"]
    first = page["auto_scales"](page["pretrained_params"], pretrained=True)
    assert [(n, s) for n, _, s in restored.items_with_shapes()] == \
        [(n, s) for n, _, s in first.items_with_shapes()]


def check_lightning_run(module, trainer, x, y) -> None:
    """The Lightning recipe ran its 150 steps and cooled ``xi`` down to 0 at the last."""
    from amosopt.torch import Amos

    assert trainer.global_step == 150
    (optimizer,) = trainer.optimizers
    assert isinstance(optimizer, Amos)
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 150
    assert optimizer.param_groups[0]["lr"] == 0.0  # cooled down at the end of the budget
    fitted = torch.nn.functional.mse_loss(module(x), y).item()
    assert fitted < 0.5 * y.square().mean().item()  # well below predicting zero
    numbers = module.optimizers().diagnostics(per_parameter=False)  # through Lightning's wrapper
    assert numbers["step/max"] == 0.0 and "b/median" in numbers  # xi = 0 after the cooldown


def test_scales_and_rules(capsys) -> None:
    jax = pytest.importorskip("jax")
    from amosopt.torch import Amos

    page = Page(GUIDES / "scales.md")
    page.run(0)
    # the principles of the table on the same page: sqrt(k / fan-in), k = 2 after a GELU;
    # one slot per output unit; 0.5 and a scalar slot for biases
    expected = {"0.weight": (math.sqrt(1 / 8), (64, 1)), "0.bias": (0.5, ()),
                "2.weight": (math.sqrt(2 / 64), (1, 1)), "2.bias": (0.5, ())}
    for line in capsys.readouterr().out.splitlines():
        name, eta, _ = line.split(maxsplit=2)
        assert float(eta.removeprefix("eta=")) == pytest.approx(expected[name][0], abs=1e-4)
        assert f"slots={expected.pop(name)[1]}" in line
    assert not expected

    page.run(1)
    assert capsys.readouterr().out.strip() == "Linear weight, fan-in 8: sqrt(1/8)"
    scales = page["scales"]
    assert scales["2.weight"].eta == 1.0 and "override" in str(scales["2.weight"].reason)
    assert scales["0.weight"].slot_shape == (64, 1) and scales["0.bias"].slot_shape == ()
    optimizer = page["optimizer"]  # the hand-written rules
    assert isinstance(optimizer, Amos)
    optimizer.zero_grad()
    page["model"](page["x"]).square().mean().backward()
    optimizer.step()
    state = optimizer.state[page["model"][2].weight]
    assert state["eta"] == pytest.approx(1 / 8) and tuple(state["v"].shape) == ()

    page.run(2)
    eta, slots = capsys.readouterr().out.splitlines()
    assert float(eta) == pytest.approx(math.sqrt(2 / 512)) and slots == "(64, 1)"

    with jax.enable_x64(False):
        page.run(3)
    page.check_all_ran()
    rows = {name: (float(eta), slots) for name, eta, slots in
            (line.split(" ", 2) for line in capsys.readouterr().out.splitlines())}
    assert rows == {"hidden/kernel": (pytest.approx(math.sqrt(1 / 8)), "(1, 64)"),
                    "hidden/bias": (0.5, "()"), "out/kernel": (0.1, "(1, 1)"),
                    "out/bias": (0.1, "()")}  # the override "out/" matches both


def test_schedules_and_diagnostics(capsys) -> None:
    jax = pytest.importorskip("jax")
    torch.manual_seed(0)
    page = Page(GUIDES / "schedules.md")
    page.run(1)  # the model, then amos suggest's numbers and the recipe in one call
    settings, onset = capsys.readouterr().out.splitlines()
    # 1/sqrt(2500); a 200-step average of g^2; 5% and 20% of 2000
    assert settings.split() == ["0.02", "0.995", "100", "400"]
    group = page["optimizer"].param_groups[0]
    assert (group["second_moment"], group["decay_ratio"]) == ("row-col", 0.25)
    assert page["scheduler"].total_steps == 2000
    # the approximate onset in the text: ln(1 + 4/(9 sqrt(xi))) / xi^2
    approximate = math.log(1 + 4 / (9 * math.sqrt(0.02))) / 0.02**2
    assert float(onset.replace(",", "")) == pytest.approx(approximate, rel=0.05)

    x, y = page["x"], page["y"]
    baseline = y.square().mean().item()  # the loss of predicting zero
    page.run(2)  # the 300-step budget
    assert float(capsys.readouterr().out) < 0.5 * baseline
    assert page["scheduler"].get_last_lr() == [0.0]

    page.run(3)  # a constant-xi run, checkpointed and cooled down later
    assert float(capsys.readouterr().out) < 0.5 * baseline
    assert page["cooldown"].get_last_lr() == [0.0]
    assert page["optimizer"].state_dict()["state"][0]["step"] == 260

    with jax.enable_x64(False):
        page.run(4)  # the optax schedule
    printed = eval(capsys.readouterr().out)  # noqa: S307  (a printed list of floats)
    # WSD by hand: 0.05 until step 240, then linear to 0 at 300
    steps = (0, 239, 240, 270, 299, 300)
    assert printed == [round(0.05 * min(1.0, (300 - s) / 60), 4) for s in steps]

    page.run(6)  # 20 steps at a constant xi, then the diagnostics
    step, onset = capsys.readouterr().out.split()
    numbers = page["numbers"]
    assert float(step) == pytest.approx(numbers["step/median"], rel=1e-2)
    assert float(onset.replace(",", "")) == pytest.approx(numbers["decay_onset/min"], abs=1)
    assert {"lr/0.weight", "weight_decay/max", "clip_fraction/2.bias", "decay/min"} <= set(numbers)
    # step = xi * eta * d_t with d_t <= 1, for the first kernel's eta sqrt(1/8)
    assert 0 < numbers["step/0.weight"] <= 0.05 * math.sqrt(1 / 8)
    summary = page["summary"]  # the same summary, without a key per parameter
    assert summary == {k: v for k, v in numbers.items()
                       if k.rsplit("/", 1)[1] in ("min", "median", "max")}

    with jax.enable_x64(False):
        page.run(7)
    page.check_all_ran()
    lr, _ = capsys.readouterr().out.split()
    # one step of a constant gradient: v_hat = g^2 = 1 and b still tiny, so lr = xi * eta * d_t
    # with d_t within 1e-3 of 1
    assert float(lr) == pytest.approx(0.05 * 0.5, rel=1e-3)


def test_16_bit_parameters_and_compile(capsys) -> None:
    jax = pytest.importorskip("jax")
    from amosopt.torch import Amos

    torch.manual_seed(0)
    page = Page(GUIDES / "precision.md")
    page.run(1)  # bfloat16 parameters with compensated rounding
    assert capsys.readouterr().out.split() == ["torch.float32", "torch.bfloat16"]
    bf16_model = page["bf16_model"]
    assert all(p.dtype == torch.bfloat16 for p in bf16_model.parameters())
    assert page["loss"].item() < 0.9 * page["y"].square().mean().item()

    with jax.enable_x64(False):
        page.run(2)
    assert capsys.readouterr().out.strip() == "bfloat16"
    w = page["params"]["w"]
    assert float(jax.numpy.abs(w.astype("float32") - 1.0).max()) > 0  # it moved

    page.run(3)
    assert isinstance(page["optimizer"], Amos) and page["optimizer"].param_groups[0]["fused"]

    page.run(4)  # GradScaler with nonfinite="skip": a scale of 2**16 overflows nothing here
    assert capsys.readouterr().out.split() == ["0"]
    assert page["amp_optimizer"].param_groups[0]["nonfinite"] == "skip"
    assert all(s["step"].item() == 3 for s in page["amp_optimizer"].state.values())

    page.run(5)  # a compiled step with a tensor lr, one graph
    model = page["model"]
    before = [p.detach().clone() for p in model.parameters()]
    page.run(6)
    page.check_all_ran()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_site_builds_strict_and_offline(tmp_path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    # a proxy that refuses every connection: a theme or plugin that fetched would fail the build
    no_network = {key: "http://127.0.0.1:9" for key in
                  ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")}
    env = {**os.environ, **no_network, "NO_PROXY": "", "no_proxy": "",
           "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(site)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # the API reference comes from the docstrings of both backends
    torch_api = (site / "api" / "torch" / "index.html").read_text()
    optax_api = (site / "api" / "optax" / "index.html").read_text()
    assert 'id="amosopt.torch.Amos"' in torch_api and 'id="amosopt.torch.auto_amos"' in torch_api
    assert 'id="amosopt.optax.amos"' in optax_api
    # the home page carries the README's quick starts; no web fonts or other fetched assets
    home = (site / "index.html").read_text()
    assert "auto_amos" in home and "JAX quick start" in home
    for page in site.rglob("*.html"):
        assert "fonts.googleapis" not in page.read_text(), page


def test_readme_is_short_and_links_work_off_github() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    # a package index shows the README without the repository: no relative links or images
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets and all(t.startswith(("https://", "#")) for t in targets), targets
    check_repository_links(README, targets)


def test_guides_link_to_files_that_exist() -> None:
    for page in pages():
        check_repository_links(page, re.findall(r"\]\(([^)\s]+)\)", page.read_text()))


def check_repository_links(page: Path, targets: list[str]) -> None:
    """Absolute links into the repository name files that exist (the study's results only in a
    clone: the sdist leaves them out)."""
    prefixes = ("https://github.com/amosopt/amosopt/blob/main/",
                "https://raw.githubusercontent.com/amosopt/amosopt/main/")
    has_results = (ROOT / "benchmarks" / "results").exists()
    for target in targets:
        if target.startswith(prefixes):
            path = target.split("/main/", 1)[1].split("#")[0]
            if has_results or not path.startswith("benchmarks/results"):
                assert (ROOT / path).exists(), (page, target)
