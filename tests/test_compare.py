"""``amos compare``: argument handling, bad input, tiny end-to-end runs, interrupted runs."""

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from amosopt.cli import build_parser, main  # noqa: E402
from amosopt.compare import data as data_lib  # noqa: E402
from amosopt.compare import report, train  # noqa: E402
from amosopt.compare.runner import CompareConfig  # noqa: E402
from amosopt.compare.tasks import DigitsTask, LMTask  # noqa: E402

TINY_LM = ["--width", "16", "--layers", "1", "--heads", "2", "--seq-len", "16",
           "--batch-size", "4", "--steps", "6", "--evals", "2", "--adamw-lrs", "1e-3,1e-2",
           "--no-progress"]
TINY_DIGITS = ["--task", "digits", "--batch-size", "16", "--steps", "5", "--evals", "2",
               "--adamw-lrs", "3e-3,1e-2", "--no-progress"]


def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("amos compare: error: ")
    for fragment in fragments:
        assert fragment in err, err
    return err


# ------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written


@pytest.mark.parametrize("argv, fragments", [
    (["--task", "mnist"], ["unknown task 'mnist'", "lm, digits"]),
    (["--steps", "0"], ["--steps 0", "positive"]),
    (["--steps", "-5"], ["--steps -5"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--text", "/nonexistent/corpus.txt"], ["--text", "no such file"]),
    (["--task", "digits", "--text", "x.txt"], ["--text", "--task lm"]),
    (["--adamw-lrs", "1e-3,fast"], ["--adamw-lrs", "comma"]),
    (["--adamw-lrs", "0,1e-3"], ["--adamw-lrs", "positive"]),
    (["--adamw-warmup", "1.5"], ["--adamw-warmup"]),
    (["--amos-momentum", "1"], ["--amos-momentum"]),
    (["--width", "10", "--heads", "4"], ["--width", "divisible"]),
])
def test_bad_arguments(capsys, tmp_path, argv, fragments):
    out = tmp_path / "out"
    _one_line_error(capsys, ["compare", "--out", str(out)] + argv, *fragments)
    assert not out.exists()


def test_empty_text(capsys, tmp_path):
    text = tmp_path / "empty.txt"
    text.write_bytes(b"")
    _one_line_error(capsys, ["compare", "--text", str(text), "--out", str(tmp_path / "o")],
                    "empty")


def test_text_too_small_to_split(capsys, tmp_path):
    text = tmp_path / "small.txt"
    text.write_bytes(b"hello world\n" * 50)  # 600 bytes: 60 for validation < seq_len + 1
    err = _one_line_error(capsys, ["compare", "--text", str(text), "--out",
                                   str(tmp_path / "o")], "too small to split", "600 bytes")
    assert "1290" in err  # at least (128 + 1) / 10% bytes


def test_out_is_a_file(capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    _one_line_error(capsys, ["compare", "--out", str(target)], "not a folder")


def test_defaults_and_quick():
    args = build_parser().parse_args(["compare"])
    assert (args.task, args.seed, args.batch_size, args.amos_momentum) == ("lm", 0, 32, 0.9)
    full = CompareConfig(task="lm").resolve()
    quick = CompareConfig(task="lm", quick=True).resolve()
    assert quick.steps < full.steps and len(quick.adamw_lrs) <= len(full.adamw_lrs)
    assert Path(quick.out) == Path("amos-results/lm")
    assert Path(CompareConfig(task="lm", text="a.txt").resolve().out) == Path("amos-results/text")
    assert CompareConfig(task="digits", steps=7).resolve().steps == 7


# ------------------------------------------------------------------------------------------
# data and schedules


def test_stdlib_split_is_by_file_and_deterministic():
    files = data_lib.stdlib_files()
    assert files and not any("/test/" in f"/{rel}" or "site-packages" in rel for rel, _ in files)
    assert any(rel == "pydoc_data/topics.py" for rel, _ in files)
    val = [rel for rel, _ in files if data_lib._is_validation_file(rel)]
    assert 0.03 < len(val) / len(files) < 0.2
    a, b = data_lib.load_stdlib_text(129), data_lib.load_stdlib_text(129)
    assert (a.train == b.train).all() and (a.val == b.val).all()
    assert a.description["val_files"] == len(val)


def test_text_split_by_position(tmp_path):
    raw = bytes(range(256)) * 20
    path = tmp_path / "t.txt"
    path.write_bytes(raw)
    text = data_lib.load_text_file(path, 17)
    n_val = len(raw) // 10
    assert bytes(text.val) == raw[-n_val:] and bytes(text.train) == raw[:-n_val]


def _lm_task(seed, tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"The quick brown fox jumps over the lazy dog. " * 200)
    text = data_lib.load_text_file(path, 17)
    return LMTask(text, steps=5, seed=seed, batch_size=4, seq_len=16, width=16, layers=1,
                  heads=2, eval_batches=1)


def test_batch_order_is_seeded(tmp_path):
    a, b, c = _lm_task(0, tmp_path), _lm_task(0, tmp_path), _lm_task(1, tmp_path)
    for step in range(5):
        assert (a.batch(step)[0] == b.batch(step)[0]).all()
    assert any((a.batch(s)[0] != c.batch(s)[0]).any() for s in range(5))
    inputs, targets = a.batch(0)
    assert (inputs[:, 1:] == targets[:, :-1]).all()  # targets are the next bytes
    digits = data_lib.load_digits_data()
    d0 = DigitsTask(digits, steps=100, seed=0, batch_size=32, channels=4)
    assert len(set(d0.indices[:len(d0.y_train)].tolist())) == len(d0.y_train)  # an epoch


def test_adamw_schedule_closed_form():
    f = train.linear_warmup_decay(warmup=10, total=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5)
    assert f(109) == pytest.approx(0.01) and f(110) == 0.0
    assert train.linear_warmup(0)(0) == 1.0 and train.linear_warmup(4)(1) == 0.5
    assert train.eval_schedule(10, 5) == [0, 2, 4, 6, 8, 10]
    assert train.eval_schedule(3, 10) == [0, 1, 2, 3]


def _run(label, optimizer, lr, steps, losses, complete=True, diverged=None, state=100):
    eval_steps = list(range(0, steps + 1, steps // (len(losses) - 1)))
    return {"label": label, "optimizer": optimizer, "settings": {"lr": lr, "momentum": 0.9},
            "steps": steps, "complete": complete, "eval_steps": eval_steps,
            "val": [{"loss": v} for v in losses], "diverged_at": diverged,
            "final_val_loss": None if diverged is not None else losses[-1],
            "seconds_per_step": 0.1, "optimizer_seconds_per_step": 0.01, "state_bytes": state}


def test_summary_reach_step_and_best_adamw():
    runs = [
        _run("Amos", "amosopt.torch.Amos", 0.02, 100, [5, 3, 2.5, 2.2, 2.0], state=51),
        _run("AdamW lr=0.001", "torch.optim.AdamW", 1e-3, 100, [5, 4, 3.5, 3, 2.6]),
        _run("AdamW lr=0.003", "torch.optim.AdamW", 3e-3, 100, [5, 3.5, 3, 2.5, 2.4]),
        _run("AdamW lr=0.1", "torch.optim.AdamW", 0.1, 100, [5, 9, 9, 9, 9], diverged=30),
    ]
    s = report.summarize({"runs": runs, "amos_state_bytes_other_momentum":
                          {"momentum": 0.0, "state_bytes": 1}})
    assert s["adamw"] == "AdamW lr=0.003" and s["adamw_final_val_loss"] == 2.4
    assert s["amos_reaches_adamw_at_step"] == 75  # first eval with loss <= 2.4 (2.2)
    assert s["amos_reaches_adamw_percent"] == 75.0
    assert s["adamw_lr_at_sweep_edge"] is False
    assert s["state_bytes"] == {"adamw": 100, "amos_momentum_0.9": 51, "amos_momentum_0": 1}
    runs[0]["val"][-1]["loss"] = 2.45
    runs[0]["val"][-2]["loss"] = 2.45
    runs[0]["val"][-3]["loss"] = 2.45
    assert report.summarize({"runs": runs})["amos_reaches_adamw_at_step"] is None


# ------------------------------------------------------------------------------------------
# end to end


def _check_outputs(out: Path, task: str, complete: bool = True) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is complete
    for key in ("config", "task", "runs", "summary", "suggestion", "scales", "versions",
                "machine", "started", "finished"):
        assert key in results, key
    assert {"platform", "cpu_count", "torch_threads"} <= set(results["machine"])
    assert {"python", "torch", "amosopt"} <= set(results["versions"])
    assert results["task"]["name"] == task
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    assert ("INCOMPLETE" in text) is (not complete)
    return results


def test_end_to_end_lm(capsys, tmp_path):
    out = tmp_path / "lm"
    assert main(["compare", "--out", str(out)] + TINY_LM) == 0
    stdout = capsys.readouterr().out
    assert f"Report: {(out / 'report.md').resolve()}" in stdout
    results = _check_outputs(out, "lm")
    runs = results["runs"]
    assert [r["label"] for r in runs] == ["Amos", "AdamW lr=0.001", "AdamW lr=0.01"]
    assert all(r["complete"] and r["steps_done"] == 6 for r in runs)
    assert all(r["eval_steps"] == [0, 3, 6] for r in runs)
    # same initialisation: every run starts from the same validation loss
    first = {r["val"][0]["loss"] for r in runs}
    assert len(first) == 1 and abs(first.pop() - math.log(256)) < 0.2  # ~uniform over bytes
    # Amos's hyper-parameters come from amosopt.suggest with N = sequences / batch
    n = results["task"]["train_examples"] / 4
    assert runs[0]["settings"]["lr (xi)"] == pytest.approx(1 / math.sqrt(n))
    # AdamW state: m and v at parameter size (float32) plus a 4-byte step per tensor
    params = results["task"]["parameters"]
    n_tensors = len(results["scales"]["table"])
    memory = results["summary"]["state_bytes"]
    assert memory["adamw"] == 2 * 4 * params + 4 * n_tensors
    assert memory["amos_momentum_0.9"] >= 4 * params  # the momentum slot
    assert memory["amos_momentum_0"] < 0.25 * memory["adamw"]
    text = (out / "report.md").read_text()
    for fragment in ("## Result", "final val loss", "% of AdamW", "AdamW learning-rate sweep",
                     "momentum 0.9", "1/sqrt(N)", "wall-clock"):
        assert fragment in text, fragment


def test_end_to_end_digits(tmp_path):
    out = tmp_path / "digits"
    assert main(["compare", "--out", str(out)] + TINY_DIGITS) == 0
    results = _check_outputs(out, "digits")
    assert all("accuracy" in v for r in results["runs"] for v in r["val"])
    assert results["suggestion"]["clip_value"] == 1.0  # mean loss


def test_interrupted_run_writes_incomplete_results(capsys, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = DigitsTask.batch

    def batch(self, step):
        calls["n"] += 1
        # warm-up (3), example input for the scales (1), Amos (5), probe (1), 3 AdamW steps
        if calls["n"] > 13:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(DigitsTask, "batch", batch)
    out = tmp_path / "partial"
    assert main(["compare", "--out", str(out)] + TINY_DIGITS) == 130
    assert "INCOMPLETE" in capsys.readouterr().out
    results = _check_outputs(out, "digits", complete=False)
    amos, adamw = results["runs"][0], results["runs"][1]
    assert amos["complete"] and amos["steps_done"] == 5
    assert not adamw["complete"] and adamw["steps_done"] == 3
    assert len(results["runs"]) == 2  # the second learning rate never started


def test_scales_agree_with_the_papers_explicit_rules():
    # The automatic scales, traced on a batch, give the paper's rules for the LM (paper.md §2);
    # the explicit table is the fallback when amosopt.torch.auto_scales is missing.
    from amosopt.compare.models import ByteLM, LM_ETA_RULES, LM_SLOT_RULES
    from amosopt.rules import Rules

    import torch

    model = ByteLM(seq_len=16, d_model=16, n_layers=1, n_heads=2)
    task = type("T", (), {"eta_rules": LM_ETA_RULES, "slot_rules": LM_SLOT_RULES})()
    scales = train.amos_scales(model, task, torch.zeros(2, 16, dtype=torch.long))
    eta, slot = Rules(LM_ETA_RULES), Rules(LM_SLOT_RULES)
    for row in scales.table:
        assert row["eta"] == pytest.approx(eta(row["name"], row["shape"])), row
        assert tuple(row["slot_shape"]) == tuple(slot(row["name"], row["shape"])), row
    by_name = {row["name"]: row["eta"] for row in scales.table}
    assert by_name["blocks.0.mlp.proj.weight"] == pytest.approx(math.sqrt(2 / 64))
    assert by_name["tok_emb.weight"] == pytest.approx(math.sqrt(2 / 16))


def test_end_to_end_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"".join(b"line %d: the quick brown fox\n" % i for i in range(400)))
    out = tmp_path / "text"
    assert main(["compare", "--text", str(path), "--out", str(out)] + TINY_LM) == 0
    results = _check_outputs(out, "lm")
    data = results["task"]["data"]
    assert data["source"] == str(path) and "by position" in data["split"]
    assert data["val_bytes"] == len(path.read_bytes()) // 10


def test_batch_larger_than_training_set(capsys, tmp_path):
    _one_line_error(capsys, ["compare", "--task", "digits", "--batch-size", "100000", "--steps",
                             "2", "--out", str(tmp_path / "o"), "--no-progress"],
                    "--batch-size", "100000", "training examples")
