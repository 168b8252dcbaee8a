"""``benchmarks/finetune.py --smoke``: pretrains, fine-tunes every mode and method once, resumes
without rerunning, and summarises (the full configuration is run by hand; see its docstring)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("scipy")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "finetune.py"


def _load():
    spec = importlib.util.spec_from_file_location("finetune_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_smoke_runs_resumes_and_summarises(tmp_path, capsys) -> None:
    finetune = _load()
    finetune.main(["--smoke", "--out", str(tmp_path)])
    runs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")}
    expected = {finetune.run_key(*spec) for spec in finetune.plan(finetune.SMOKE)}
    assert set(runs) == expected and len(expected) == 9  # 6 grid runs, 3 of the sweep
    assert runs["full-4-0-amos-warm-b0=0-1"]["b0"] == 0.0
    assert runs["full-4-0-amos-warm-decay_ratio=0.5-1"]["changed"] == {"decay_ratio": 0.5}
    assert runs["full-4-0-amos-warm-1"]["b0"] == finetune.MAIN_B0
    assert (tmp_path / "pretrained.pt").exists()
    pretrain = json.loads((tmp_path / "pretrain.json").read_text())
    assert "pydoc_data/topics.py" in pretrain["data"]["excluded"]  # the new text is new
    first = pretrain["record"]["val"][0]["loss"]
    assert pretrain["record"]["val"][-1]["loss"] < first  # it learned something
    before = {r["old_val_before"] for r in runs.values()}
    # every run starts from the same checkpoint; LoRA's B = 0 leaves the function unchanged
    assert max(before) - min(before) < 1e-5
    for r in runs.values():
        assert r["ft_val"] is not None and r["ft_val"] < r["ft_val_before"]
    capsys.readouterr()

    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    finetune.main(["--smoke", "--out", str(tmp_path)])  # resumes: nothing left to run
    assert "9 runs done, 0 to run" in capsys.readouterr().out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}

    summary = (tmp_path / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| full") or
            line.startswith("| lora")]
    assert [row.split("|")[3].strip() for row in rows] == ["adamw", "amos", "amos-warm",
                                                          "adamw", "amos", "amos-kappa=0.4"]
    lora = json.loads((tmp_path / "summary.json").read_text())["groups"][1]
    assert lora["mode"] == "lora" and "vs_adamw" in lora["methods"]["amos-kappa=0.4"]
    # kappa 0.4 scales only B's eta (x 4), from the same first step: the runs differ
    assert runs["lora-4-0-amos-kappa=0.4-1"]["ft_val"] != runs["lora-4-0-amos-1"]["ft_val"]
    data = json.loads((tmp_path / "summary.json").read_text())
    warm = data["groups"][0]["methods"]["amos-warm"]
    adamw = data["groups"][0]["methods"]["adamw"]
    assert warm["vs_adamw"]["ft_val"]["mean_difference"] == pytest.approx(
        warm["ft_val"][0] - adamw["ft_val"][0])
    # the sweep: the grids' warm start and the changed one, each against AdamW on one seed
    sweep = {row["change"]: row for row in data["sweep"]}
    assert set(sweep) == {"none", "b0 0", "decay_ratio 0.5", "slots full"}
    assert sweep["none"]["b0"] == finetune.MAIN_B0 and sweep["b0 0"]["b0"] == 0.0
    assert sweep["b0 0"]["ft_val"] == [runs["full-4-0-amos-warm-b0=0-1"]["ft_val"]]
    assert sweep["b0 0"]["vs_adamw"]["ft_val"]["mean_difference"] == pytest.approx(
        sweep["b0 0"]["ft_val"][0] - adamw["ft_val"][0])
    assert "## The warm start with one setting changed" in summary


def test_plan_extends_grids_and_sweeps_only_where_asked() -> None:
    finetune = _load()
    setup = finetune.Setup()
    runs = finetune.plan(setup)
    assert len(runs) == len(set(runs))
    kappa = finetune.KAPPA
    for (mode, budget, method), values in finetune.EXTENSIONS.items():
        for value in values:
            assert value not in setup.grid()[mode][method]
            assert {(m, b, s, meth, v) for m, b, s, meth, v in runs
                    if (m, meth, v) == (mode, method, value)} == {
                (mode, budget, seed, method, value) for seed in setup.seeds}
    assert ("lora", 200, 0, kappa, 8.0) in runs and ("lora", 800, 0, kappa, 8.0) not in runs
    first, *later = setup.budgets
    swept = {(b, finetune.changed(meth).popitem()[0]) for _, b, _, meth, v in runs
             if v == setup.sweep_value and meth.startswith("amos-warm-")}
    assert {key for b, key in swept if b == first} == {key for key, _ in setup.sweeps}
    for budget in later:
        assert {key for b, key in swept if b == budget} == set(setup.long_sweeps)
