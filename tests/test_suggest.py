"""amosopt.suggest and ``amos suggest``, against closed-form values and the authors' recipes."""

import json
import math

import pytest

from amosopt.cli import main
from amosopt.suggest import round_significant, suggest


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
