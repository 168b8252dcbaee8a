"""``amos compare``: argument errors, tiny end-to-end studies (seconds), resume-skipping,
parallel jobs equal to serial, interrupted studies."""

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from amosopt.cli import build_parser, main  # noqa: E402
from amosopt.compare import jobs as study  # noqa: E402
from amosopt.compare import CompareConfig  # noqa: E402
from amosopt.compare.plan import plan  # noqa: E402

TINY_LM = ["--width", "16", "--layers", "1", "--heads", "2", "--seq-len", "16",
           "--batch-size", "4", "--budgets", "6,8", "--evals", "2", "--adamw-lrs", "1e-3,1e-2",
           "--xi-multipliers", "1,2", "--no-progress"]
TINY_DIGITS = ["--task", "digits", "--batch-size", "16", "--steps", "5", "--evals", "2",
               "--adamw-lrs", "3e-3,1e-2", "--xi-multipliers", "1", "--no-progress"]


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
    (["--budgets", "100,x"], ["--budgets", "comma"]),
    (["--budgets", "0,100"], ["--budgets", "positive"]),
    (["--budgets", "100", "--steps", "100"], ["--budgets or --steps"]),
    (["--seeds", "0,-1"], ["--seeds", "non-negative"]),
    (["--seeds", "1", "--seed", "2"], ["--seeds or --seed"]),
    (["--optimizers", "amos,sgd"], ["--optimizers", "amos-wsd", "schedulefree"]),
    (["--optimizers", "amos,amos"], ["--optimizers", "repeated"]),
    (["--lrs", "amos=1e-3"], ["--lrs", "--xi-multipliers"]),
    (["--lrs", "adafactor"], ["--lrs", "NAME=LR"]),
    (["--lrs", "adafactor=1e-3,-1"], ["--lrs adafactor", "positive"]),
    (["--xi-multipliers", "0"], ["--xi-multipliers", "positive"]),
    (["--jobs", "0"], ["--jobs 0"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--text", "/nonexistent/corpus.txt"], ["--text", "no such file"]),
    (["--task", "digits", "--text", "x.txt"], ["--text", "--task lm"]),
    (["--task", "digits", "--train-bytes", "1e5"], ["--train-bytes", "--task lm"]),
    (["--train-bytes", "0"], ["--train-bytes 0", "positive"]),
    (["--adamw-lrs", "1e-3,fast"], ["--adamw-lrs", "comma"]),
    (["--adamw-lrs", "0,1e-3"], ["--adamw-lrs", "positive"]),
    (["--adamw-warmup", "1.5"], ["--warmup-fraction"]),
    (["--cooldown-fraction", "1.5"], ["--cooldown-fraction"]),
    (["--warmup-fraction", "0.5", "--cooldown-fraction", "0.6", "--steps", "100"],
     ["budget 100", "cooldown_steps", "--cooldown-fraction"]),
    (["--amos-warmup", "-1"], ["--amos-warmup"]),
    (["--amos-momentum", "1"], ["--amos-momentum"]),
    (["--amos-beta", "1"], ["--amos-beta"]),
    (["--amos-eta", "-0.5"], ["--amos-eta"]),
    (["--amos-eta-scale", "0"], ["--amos-eta-scale", "positive"]),
    (["--amos-decay-ratio", "-1"], ["--amos-decay-ratio", "positive"]),
    (["--adamw-weight-decay", "-0.1"], ["--adamw-weight-decay", ">= 0"]),
    (["--adamw-beta1", "1"], ["--adamw-beta1"]),
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


def test_batch_larger_than_training_set(capsys, tmp_path):
    _one_line_error(capsys, ["compare", "--task", "digits", "--batch-size", "100000", "--steps",
                             "2", "--out", str(tmp_path / "o"), "--no-progress"],
                    "--batch-size", "100000", "training examples")


# ------------------------------------------------------------------------------------------
# configuration and plan


def test_defaults_and_quick():
    args = build_parser().parse_args(["compare"])
    assert (args.task, args.batch_size, args.amos_momentum, args.jobs) == ("lm", 32, 0.9, 1)
    full = CompareConfig(task="lm").resolve()
    quick = CompareConfig(task="lm", quick=True).resolve()
    assert full.budgets == [500, 1000, 2000] and full.optimizers == ["amos", "amos-wsd", "adamw"]
    assert full.xi_multipliers == [0.5, 1.0, 2.0]
    assert max(quick.budgets) < min(full.budgets) and quick.xi_multipliers == [1.0]
    # fair tuning: every optimizer with a learning rate gets as many trials as the others,
    # Amos at least 3 ({0.5, 1, 2} x the suggested xi)
    assert {len(full.grid(n)) for n in ("adamw", "adamw-wsd", "adafactor", "schedulefree")} == {4}
    assert len(full.grid("amos")) == 3
    assert Path(quick.out) == Path("amos-results/lm")
    assert Path(CompareConfig(task="lm", text="a.txt").resolve().out) == Path("amos-results/text")
    digits = CompareConfig(task="digits").resolve()
    assert digits.budgets == [400, 1500]


def test_amos_second_moment_reaches_the_config_and_old_studies_resume():
    from amosopt.commands.compare import _config

    parser = build_parser()
    assert parser.parse_args(["compare"]).amos_second_moment == "slot"
    config = _config(parser.parse_args(["compare", "--amos-second-moment", "row-col"]))
    assert config.amos_second_moment == "row-col"
    assert config.fingerprint()["amos_second_moment"] == "row-col"
    # the default is not in the fingerprint: studies recorded before the option resume
    assert "amos_second_moment" not in CompareConfig().fingerprint()
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "--amos-second-moment", "rows"])


def test_plan_covers_every_combination_smallest_budget_first():
    config = CompareConfig(task="lm", budgets=[20, 10], seeds=[0, 1],
                           optimizers=["amos", "adamw"], xi_multipliers=[1.0, 2.0],
                           grids={"adamw": [1e-3, 3e-3, 1e-2]}).resolve()
    specs = plan(config)
    assert len(specs) == 2 * 2 * (2 + 3)
    assert len({s.key for s in specs}) == len(specs)
    assert [s.budget for s in specs] == sorted(s.budget for s in specs)
    assert specs[0].key == "amos_1_b10_s0"


# ------------------------------------------------------------------------------------------
# end to end


def _check_outputs(out: Path, task: str, complete: bool = True) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is complete
    for key in ("config", "task", "runs", "summary", "suggestion", "scales", "versions",
                "machine", "started", "finished", "planned", "probe_state_bytes"):
        assert key in results, key
    assert {"python", "torch", "amosopt"} <= set(results["versions"])
    assert results["task"]["name"] == task
    for budget in results["config"]["budgets"]:
        assert (out / f"loss_{budget}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    assert ("INCOMPLETE" in text) is (not complete)
    return results


def test_end_to_end_lm_and_resume(capsys, tmp_path):
    out = tmp_path / "lm"
    argv = ["compare", "--out", str(out), "--seeds", "0,1"] + TINY_LM
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert f"Report: {(out / 'report.md').resolve()}" in stdout
    assert "budget 6 steps" in stdout and "budget 8 steps" in stdout
    assert "Amos's own decay cuts the step by 10% after about" in stdout
    assert "after every budget here" in stdout
    results = _check_outputs(out, "lm")
    runs = results["runs"]
    # 2 budgets x 2 seeds x (amos 2 + amos-wsd 2 + adamw 2)
    assert len(runs) == 24 and all(r["complete"] for r in runs)
    assert {r["steps_done"] for r in runs if r["budget"] == 8} == {8}
    # same initialisation per seed: every run of a seed starts from the same loss
    for seed in (0, 1):
        first = {r["val"][0]["loss"] for r in runs if r["seed"] == seed}
        assert len(first) == 1 and abs(first.pop() - math.log(256)) < 0.2
    # Amos's xi comes from amosopt.suggest with N = sequences / batch
    n = results["task"]["train_examples"] / 4
    amos = next(r for r in runs if r["key"] == "amos_2_b8_s0")
    assert amos["settings"]["lr"] == pytest.approx(2 / math.sqrt(n))
    wsd = next(r for r in runs if r["key"] == "amos-wsd_1_b8_s1")
    assert wsd["lr"][-1] == 0.0 and amos["lr"][-1] == pytest.approx(2 / math.sqrt(n))
    # AdamW state: m and v at parameter size (float32) plus a 4-byte step per tensor
    params = results["task"]["parameters"]
    n_tensors = len(results["scales"]["table"])
    memory = results["probe_state_bytes"]
    assert memory["adamw"] == 2 * 4 * params + 4 * n_tensors
    assert memory["amos_momentum_0.9"] >= 4 * params  # the momentum slot
    assert memory["amos_momentum_0"] < 0.25 * memory["adamw"]
    # what each optimizer does per update, per layer kind (schedules.png)
    assert (out / "schedules.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert amos["schedules"][0] == {}  # no step yet at step 0
    kinds = set(amos["schedules"][-1])
    assert {"all", "embedding", "attention", "mlp", "norm", "bias"} <= kinds
    assert wsd["schedules"][-1]["all"]["step_max"] == 0.0  # cooled down to 0
    step = amos["schedules"][-1]["all"]
    assert 0 < step["step_min"] <= step["step_median"] <= step["step_max"]
    adamw = next(r for r in runs if r["key"] == "adamw_0.01_b8_s0")
    assert adamw["schedules"][1]["all"]["weight_decay_median"] == pytest.approx(
        adamw["lr"][1] * 0.01)
    summary = results["summary"]["budgets"]["8"]
    assert summary["reference"] == "adamw (tuned)"
    assert summary["optimizers"]["amos"]["tuned"]["n"] == 2
    assert results["summary"]["anytime"]["budget"] == 8
    text = (out / "report.md").read_text()
    for fragment in ("## Budget 6 steps", "## Budget 8 steps", "mean ± sd",
                     "reaches reference", "paired t-test", "grid edge", "frontier.png",
                     "schedules.png"):
        assert fragment in text, fragment

    # the same command again: nothing to run, the run files untouched
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert main(argv) == 0
    assert "24 of 24 runs are already done" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == mtimes
    # one run lost: only that one is redone, with the same numbers (deterministic)
    lost = out / "runs" / "adamw_0.01_b6_s1.json"
    before = json.loads(lost.read_text())
    lost.unlink()
    assert main(argv) == 0
    assert "23 of 24 runs are already done" in capsys.readouterr().out
    again = json.loads(lost.read_text())
    assert again["val"] == before["val"]
    # a third seed extends the study
    assert main(argv[:4] + ["0,1,2"] + argv[5:]) == 0
    assert "24 of 36 runs are already done" in capsys.readouterr().out
    # other settings into the same folder: refused, nothing overwritten
    _one_line_error(capsys, argv + ["--amos-momentum", "0"], "other settings",
                    "amos_momentum: 0.9 there, 0.0 now")


def test_parallel_jobs_give_the_serial_results(tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    argv = TINY_DIGITS + ["--optimizers", "amos-wsd,adamw"]
    assert main(["compare", "--out", str(serial)] + argv) == 0
    assert main(["compare", "--out", str(parallel), "--jobs", "2"] + argv) == 0
    a = {r["key"]: r for r in json.loads((serial / "results.json").read_text())["runs"]}
    b = {r["key"]: r for r in json.loads((parallel / "results.json").read_text())["runs"]}
    assert a.keys() == b.keys() and len(a) == 3
    for key in a:  # one torch thread in both: the same arithmetic
        assert a[key]["val"] == b[key]["val"], key


def test_end_to_end_digits_all_optimizers(tmp_path):
    pytest.importorskip("schedulefree")
    out = tmp_path / "digits"
    argv = ["compare", "--out", str(out), "--optimizers",
            "amos,amos-wsd,adamw,adamw-wsd,adafactor,schedulefree"] + TINY_DIGITS
    assert main(argv) == 0
    results = _check_outputs(out, "digits")
    assert {r["optimizer"] for r in results["runs"]} == {
        "amos", "amos-wsd", "adamw", "adamw-wsd", "adafactor", "schedulefree"}
    assert all("accuracy" in v for r in results["runs"] for v in r["val"])
    assert results["suggestion"]["clip_value"] == 1.0  # mean loss
    entries = results["summary"]["budgets"]["5"]["entries"]
    assert {e["optimizer"] for e in entries} == {
        "amos", "amos-wsd", "adamw", "adamw-wsd", "adafactor", "schedulefree"}


def test_interrupted_study_keeps_finished_runs_and_resumes(capsys, tmp_path, monkeypatch):
    original = study.train
    started = []

    def train(task, model, built, run, *args, **kwargs):
        started.append(run.key)
        if len(started) == 2:  # Ctrl-C in the middle of the second run
            for step in range(2):
                task.batch(step)
            raise KeyboardInterrupt
        return original(task, model, built, run, *args, **kwargs)

    monkeypatch.setattr(study, "train", train)
    out = tmp_path / "partial"
    argv = ["compare", "--out", str(out), "--optimizers", "amos,adamw"] + TINY_DIGITS
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().out
    results = _check_outputs(out, "digits", complete=False)
    assert [p.stem for p in (out / "runs").glob("*.json")] == [started[0]]
    assert [r["key"] for r in results["runs"]] == [started[0]]
    monkeypatch.setattr(study, "train", original)
    assert main(argv) == 0
    assert "1 of 3 runs are already done" in capsys.readouterr().out
    assert len(_check_outputs(out, "digits")["runs"]) == 3


def test_end_to_end_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"".join(b"line %d: the quick brown fox\n" % i for i in range(400)))
    out = tmp_path / "text"
    assert main(["compare", "--text", str(path), "--out", str(out), "--optimizers", "amos"]
                + TINY_LM) == 0
    results = _check_outputs(out, "lm")
    data = results["task"]["data"]
    assert data["source"] == str(path) and "by position" in data["split"]
    assert data["val_bytes"] == len(path.read_bytes()) // 10


def test_train_bytes_shortens_the_training_text_and_the_recipe_follows(tmp_path):
    """--train-bytes: the task's training split (and so N, xi and the recipe) shrinks, the
    validation split stays, and it joins the fingerprint only when set."""
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"".join(b"line %d: the quick brown fox\n" % i for i in range(4000)))
    out = tmp_path / "text"
    assert main(["compare", "--text", str(path), "--train-bytes", "20000", "--out", str(out),
                 "--optimizers", "amos-recipe"] + TINY_LM) == 0
    results = _check_outputs(out, "lm")
    data = results["task"]["data"]
    assert data["train_bytes"] == 20000 and "chunks" in data["train_subsample"]
    assert data["val_bytes"] == len(path.read_bytes()) // 10
    assert results["config"]["train_bytes"] == 20000
    assert CompareConfig(train_bytes=20000).fingerprint()["train_bytes"] == 20000
    assert "train_bytes" not in CompareConfig().fingerprint()


def test_study_error_is_a_value_error():
    assert issubclass(study.StudyError, ValueError)


def test_two_studies_in_one_process_keep_their_own_settings(tmp_path):
    """amos compare called twice in one process (--jobs 1): the second study's runs use its own
    settings, not those of the first study's (seed, budget) cached in the process."""
    argv = TINY_DIGITS + ["--optimizers", "amos-wsd,adamw"]
    first, second, alone = tmp_path / "first", tmp_path / "second", tmp_path / "alone"
    assert main(["compare", "--out", str(first)] + argv) == 0
    changed = ["--amos-eta-scale", "4", "--adamw-weight-decay", "0.5"]
    assert main(["compare", "--out", str(second)] + argv + changed) == 0
    runs = {path.name: {r["key"]: r for r in json.loads(
        (path / "results.json").read_text())["runs"]} for path in (first, second)}
    for key, run in runs["first"].items():
        assert run["val"] != runs["second"][key]["val"], key
    study._CACHE.clear()  # the second study from a fresh cache gives the same numbers
    assert main(["compare", "--out", str(alone)] + argv + changed) == 0
    for run in json.loads((alone / "results.json").read_text())["runs"]:
        assert run["val"] == runs["second"][run["key"]]["val"], run["key"]
