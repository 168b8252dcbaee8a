"""amosopt.suggest and ``amos suggest``, against closed-form values and the authors' recipes."""

import json
import math

import numpy as np
import pytest

from amosopt.cli import main
from amosopt.suggest import decay_onset, round_significant, suggest
from tests.oracles import NumpyAmos


def test_mnist_recipe():
    # jestimator README: xi = 1/sqrt(60000/32), beta = 0.98, clip sqrt(32) for a summed loss
    s = suggest(60000, 32, loss="sum")
    assert s.xi == pytest.approx(0.0231, abs=5e-5)
    assert s.xi == pytest.approx(1 / math.sqrt(1875), rel=1e-12)
    assert s.n_batches == 1875
    assert s.beta == 0.98
    assert s.clip_value == pytest.approx(math.sqrt(32), rel=1e-12)


def test_bert_order_of_magnitude():
    # BERT-base: ~3.5e9 tokens / (256 x 512) ~ 3e4 batches -> xi ~ 0.006 (they used 0.005)
    s = suggest(30000 * 256, 256)
    assert s.xi == pytest.approx(0.00577, abs=5e-5)
    assert 0.99 <= s.beta <= 0.999
    assert s.clip_value == 1.0


def test_t5x_clip_is_sqrt_of_summed_labels():
    # T5X sums the loss over batch x target tokens: clip = sqrt(2048 * 228) ~ 684 (paper.md §2)
    s = suggest(10**9, 2048, loss="sum", labels_per_example=228)
    assert s.clip_value == pytest.approx(math.sqrt(2048 * 228), rel=1e-12)
    assert round(s.clip_value) == 683


@pytest.mark.parametrize("examples, batch, beta", [
    (100, 100, 0.9),          # xi = 1 -> 1 - beta clamped to 0.1
    (10**10, 1, 0.999),       # xi = 1e-5 -> clamped to 0.001
    (40000, 100, 0.95),       # xi = 0.05 exactly
    (1437, 32, 0.9),          # digits: xi = 0.149 -> 0.1
])
def test_beta_rule(examples, batch, beta):
    assert suggest(examples, batch).beta == beta


def test_mean_loss_ignores_labels_per_example():
    assert suggest(1000, 10, "mean", labels_per_example=128).clip_value == 1.0


def test_round_significant():
    assert round_significant(0.0231) == 0.02
    assert round_significant(0.0577) == 0.06
    assert round_significant(0.149) == 0.1
    assert round_significant(0.0) == 0.0


@pytest.mark.parametrize("kwargs, match", [
    ({"examples": 0, "batch_size": 1}, "examples"),
    ({"examples": 10, "batch_size": -1}, "batch_size"),
    ({"examples": 10, "batch_size": 2.5}, "batch_size"),
    ({"examples": 10, "batch_size": 20}, "larger than the number of examples"),
    ({"examples": 10, "batch_size": 2, "loss": "max"}, "loss"),
    ({"examples": 10, "batch_size": 2, "labels_per_example": 0}, "labels_per_example"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        suggest(**kwargs)


def test_cli_text(capsys):
    assert main(["suggest", "--examples", "60000", "--batch-size", "32", "--loss", "sum"]) == 0
    out = capsys.readouterr().out
    assert "xi (global learning rate) = 0.02309" in out
    assert "beta                      = 0.98" in out
    assert "clip_value                = 5.657" in out
    assert "1/sqrt(N)" in out


def test_cli_json(capsys):
    assert main(["suggest", "--examples", "1000", "--batch-size", "10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["xi"] == pytest.approx(0.1)
    assert data["beta"] == 0.9 and data["clip_value"] == 1.0


def test_cli_bad_input_is_one_line(capsys):
    assert main(["suggest", "--examples", "10", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--batch-size" in err


# ------------------------------------------------------------------------------------------
# decay onset and the budget (--steps)


@pytest.mark.parametrize("xi, eta, simulated", [
    # paper.md §6.3: steps until d_t < 0.5, simulated with g^2 / v_hat = 1
    (0.0231, math.sqrt(2 / 3136), 13.5e3),  # MNIST Dense_0
    (0.005, 1 / math.sqrt(768), 301.6e3),  # BERT-base dense kernel
    (0.005, 0.5, 199.1e3),  # BERT-base bias
    (0.01, 512 ** -0.25, 53.3e3),  # LSTM core
])
def test_decay_onset_matches_the_simulated_half_lives(xi, eta, simulated):
    assert decay_onset(xi, eta, drop=0.5) == pytest.approx(simulated, rel=5e-3)


@pytest.mark.parametrize("xi, eta, drop", [(0.05, 1.0, 0.1), (0.1, 0.2, 0.1), (0.03, 0.5, 0.3)])
def test_decay_onset_matches_the_discrete_recursion_with_a_constant_gradient(xi, eta, drop):
    # a constant gradient makes g^2 / v_hat = 1 exactly (bias-corrected v); the NumPy
    # transcription of Algorithm 1 gives b, and d_t = 1 / (1 + sqrt(xi eta) b_{t-1} / 4)
    amos = NumpyAmos(eta=eta, slot_shape=(), beta=0.9)
    theta, grad = np.zeros(4), np.full(4, 0.3)
    step = 0
    while True:
        step += 1
        theta = amos.step(theta, grad, xi)  # after it, amos.b is b_step
        d_next = 1 / (1 + 0.25 * math.sqrt(xi * eta) * float(amos.b))
        if d_next <= 1 - drop:
            break  # step + 1 is the first update whose step is cut by `drop`
    assert decay_onset(xi, eta, drop) == pytest.approx(step + 1, rel=0.02)


def test_decay_onset_bad_input():
    for kwargs, name in (({"xi": 0}, "xi"), ({"xi": 16}, "xi"), ({"xi": 0.1, "eta": -1}, "eta"),
                         ({"xi": 0.1, "drop": 1.0}, "drop")):
        with pytest.raises(ValueError, match=f"Invalid {name}"):
            decay_onset(**kwargs)


@pytest.mark.parametrize("steps, one_minus_beta", [(2000, 0.005), (1000, 0.005), (500, 0.01),
                                                    (100, 0.05)])
def test_a_short_budget_gets_the_short_budget_recipe(steps, one_minus_beta):
    s = suggest(80000, 32, steps=steps)  # xi = 0.02: onset ~ ln(1 + 4/9/sqrt(xi)) / xi^2
    assert s.decay_onset == pytest.approx(decay_onset(0.02))
    assert 3000 < s.decay_onset < 4000
    assert s.recipe == "short-budget" and s.steps == steps and s.warnings == ()
    assert s.xi == pytest.approx(0.02)
    # 5% warm-up, 20% cooldown, the average of g^2 over min(200, T/5) steps (1 - beta >= 5/T)
    assert (s.warmup_steps, s.cooldown_steps) == (round(0.05 * steps), round(0.2 * steps))
    assert s.beta == pytest.approx(1 - one_minus_beta)
    assert (s.decay_ratio, s.second_moment, s.momentum) == (0.25, "row-col", 0.9)
    assert s.amos_kwargs() == {"beta": s.beta, "momentum": 0.9, "clip_value": 1.0,
                               "decay_ratio": 0.25, "second_moment": "row-col"}
    assert s.schedule_kwargs() == {"total_steps": steps, "warmup_steps": s.warmup_steps,
                                   "cooldown_steps": s.cooldown_steps}
    text = s.format()
    assert f"cooldown_steps            = {s.cooldown_steps}" in text
    assert "decay_ratio               = 0.25" in text and "short-budget recipe" in text


def test_the_paper_beta_stays_when_it_averages_longer():
    s = suggest(10**9, 256, steps=5000)  # xi = 5e-4: 1 - beta = 0.001 < 0.005
    assert s.recipe == "short-budget" and s.beta == pytest.approx(0.999)


def test_a_long_budget_keeps_xi_constant():
    s = suggest(80000, 32, steps=50000)
    assert s.cooldown_steps == 0 and s.warnings == () and s.recipe == "paper"
    assert (s.warmup_steps, s.decay_ratio, s.second_moment, s.beta) == (0, 1.0, "slot", 0.98)
    assert "keep xi constant" in s.reasoning[-1]
    none = suggest(80000, 32)
    assert none.steps is None and none.warnings == () and "Warning" not in none.format()
    with pytest.raises(ValueError, match="Invalid steps: this suggestion has no budget"):
        none.schedule_kwargs()


def test_bad_steps():
    for steps in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="Invalid steps"):
            suggest(1000, 10, steps=steps)


def test_cli_steps(capsys):
    argv = ["suggest", "--examples", "80000", "--batch-size", "32", "--steps", "2000"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "after the budget of 2,000 steps, so the budget gets the short-budget recipe" in out
    assert main(argv + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cooldown_steps"] == 400 and data["steps"] == 2000 and not data["warnings"]
    assert (data["warmup_steps"], data["decay_ratio"], data["recipe"]) == (100, 0.25,
                                                                           "short-budget")
    assert main(argv[:-1] + ["0"]) == 2
    assert "invalid --steps" in capsys.readouterr().err


def test_schedules_guide_console_example(capsys):
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "schedules.md").read_text()
    block = guide[guide.index("$ amos suggest --examples 80000"):]
    block = block[:block.index("```")].splitlines()
    assert main(block[0][len("$ amos "):].split()) == 0
    out = capsys.readouterr().out.splitlines()
    shown = [line for line in block[1:] if line and line != "..."]
    for line in shown:
        prefix = line[:-len(": ...")] if line.endswith(": ...") else line
        assert any(o.startswith(prefix) for o in out), line
