"""Fine-tuning evidence: does Amos's warm start fine-tune as well as AdamW, and forget no more?

1. Pretrain the ``amos compare`` lm model (a byte-level transformer, ``amosopt.compare.models``)
   on the standard library's sources without ``pydoc_data/topics.py`` (the text
   ``amos compare --task lm`` uses, less the fine-tuning text) with a fixed recipe: AdamW-WSD at
   its tuned lr 3e-3 (the study's best at 1000 and 2000 steps), :data:`PRETRAIN_STEPS` steps,
   seed 0. The checkpoint is written to ``OUT/pretrained.pt`` (reproduced by the same command).
2. Fine-tune it on CPython's ``pydoc_data/topics.py`` (English prose; the last 10% of its bytes
   are validation) at the budgets :data:`BUDGETS`, seeds 0-2 (the batch order, and the LoRA
   initialisation), each method on its grid:

   * ``adamw``: AdamW, linear warm-up (5%) then linear decay to 0, weight decay 0.01 (the usual
     fine-tuning recipe), on an lr grid;
   * ``amos``: Amos with the plain automatic scales (``auto_scales(model)``), a grid of
     multiples of the ``xi`` that ``amos suggest`` gives for the fine-tuning text;
   * ``amos-warm``: Amos warm-started (``auto_scales(model, pretrained=True)``: ``eta`` from the
     weights, ``b`` from ``b0``), the same grid;
   * ``amos-warm-second_moment=row-col`` (:data:`ROW_COL`): the warm start with the
     row-and-column second moment, on the warm start's best region.

   The Amos runs take a WSD cooldown over the last 20% (a budgeted run) and momentum 0.9.
   ``full`` fine-tunes every weight; ``lora`` adds ``peft`` LoRA adapters (r 8, alpha 16) to
   every linear layer of the blocks (attention ``qkv`` and ``proj``, MLP ``fc`` and ``proj``)
   and trains only them. On a LoRA model the warm start changes nothing (the adapters start
   from scratch, with the LoRA scales, ``b0 = 0``), so ``lora`` runs ``adamw`` and ``amos``,
   and ``amos-kappa=0.4``: Amos with ``B``'s scale aimed at a relative update of 0.4
   (:data:`LORA_KAPPA`, ``auto_scales(..., lora_update=0.4)``) instead of the library's 0.1.
   ``amos-warm`` runs at ``b0 =`` :data:`MAIN_B0` and the suggested beta; the sweep
   ``amos-warm-KEY=VALUE`` changes one of them (:data:`SWEEPS`; full fine-tuning, at
   :data:`SWEEP_VALUE` x the suggested xi).
3. Report, per mode and budget, each method at its best grid value (mean over seeds): the
   fine-tuned validation loss, the loss on the pretraining text's validation split before and
   after (forgetting), and paired t-tests over seeds against AdamW; then the sweep.

Cost, measured: a 200-step run takes 42-52 s on one thread, an 800-step run about 170 s
(full fine-tuning; LoRA about 20% more), two runs at a time on this 2-core machine. The grids
(2 budgets x 3 seeds x (full: 4 + 5 + 6 + 3 values; lora: 4 + 5 + 4), plus 6 runs of
:data:`EXTENSIONS`) are 192 runs, the sweep 36: about 4 hours with ``--jobs 2``, plus the
pretraining, 2,000 steps, about 10 minutes.

    python benchmarks/finetune.py --jobs 2          # pretrain once, then every run (resumable)
    python benchmarks/finetune.py --summary         # OUT/summary.md and OUT/summary.json
    python benchmarks/finetune.py --smoke --out D   # a tiny configuration, seconds (the tests)

Each run writes ``OUT/runs/MODE-BUDGET-SEED-METHOD-VALUE.json`` when it finishes; runs already
there are skipped, so an interrupted study resumes. ``OUT`` defaults to
``benchmarks/results/finetune``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from amosopt.compare import data as data_lib  # noqa: E402
from amosopt.compare import optimizers as optimizers_lib  # noqa: E402
from amosopt.compare.config import field_default  # noqa: E402
from amosopt.compare.tasks import LMTask  # noqa: E402
from amosopt.compare.train import RunRecord, train  # noqa: E402
from amosopt.scales import LORA_RELATIVE_UPDATE  # noqa: E402
from amosopt.suggest import suggest  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "finetune"
#: the fine-tuning text, left out of the pretraining text (a relative path in the stdlib)
FINETUNE_FILE = "pydoc_data/topics.py"
PRETRAIN_STEPS = 2000
PRETRAIN_LR = 3e-3  # AdamW-WSD's tuned lr on the lm task (benchmarks/study.py)
BUDGETS = (200, 800)
SEEDS = (0, 1, 2)
LORA_RANK, LORA_ALPHA = 8, 16
LORA_TARGETS = ("qkv", "proj", "fc")
#: LoRA's B scale aimed at a relative update of the adapted weight of 0.4 instead of the
#: library's 0.1 (amosopt.scales.LORA_RELATIVE_UPDATE): AdamW's best LoRA run (lr 1e-2, 200
#: steps, seed 0) ended with rms(s B A) / rms(W) of 0.20-0.80 (median 0.36) over the adapted
#: layers, and Amos's best (4 x xi) with 0.10-0.32 (median 0.19)
LORA_KAPPA = 0.4
#: LoRA with B's scale aimed at LORA_KAPPA (``auto_scales(..., lora_update=LORA_KAPPA)``)
KAPPA = f"amos-kappa={LORA_KAPPA:g}"
#: the warm start with Adafactor's row-and-column second moment (``second_moment="row-col"``)
ROW_COL = "amos-warm-second_moment=row-col"
#: mode -> method -> grid (AdamW: learning rates; Amos: multiples of the suggested xi). The
#: first run's optima at 200 steps sat on edges (AdamW 3e-3 of full, 1e-2 of LoRA; Amos 0.25 x
#: of full, 2 x of LoRA): each grid was extended beyond that edge until its optimum was inside
#: or flat (Amos plain, full: 0.125 x and 0.0625 x; LoRA: 4 x and 8 x; the warm start: 2 x, 4 x
#: and 8 x, its best at 800 steps was 1 x on seed 0 and 2 x on seed 1, at 200 steps 4 x);
#: ``amos-kappa=0.4``'s best sat on its top edge (2 x) at both budgets, so 4 x was added.
#: :data:`ROW_COL`, the warm start with the row-and-column second moment, gained 0.008 over the
#: warm start in the sweep (0.5 x, 200 steps), so it runs on the warm start's best region too
#: (its 0.5 x point is the sweep's run)
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "full": {"adamw": (3e-4, 1e-3, 3e-3, 1e-2), "amos": (0.0625, 0.125, 0.25, 0.5, 1.0),
             "amos-warm": (0.25, 0.5, 1.0, 2.0, 4.0, 8.0), ROW_COL: (1.0, 2.0, 4.0)},
    "lora": {"adamw": (1e-3, 3e-3, 1e-2, 3e-2), "amos": (0.5, 1.0, 2.0, 4.0, 8.0),
             KAPPA: (0.5, 1.0, 2.0, 4.0)},
}
#: (mode, budget, method) -> more grid values at that budget only: at 200 steps the best xi of
#: ROW_COL and of kappa 0.4 sat on their grids' top edge (4 x), at 800 steps inside (2 x)
EXTENSIONS: dict[tuple[str, int, str], tuple[float, ...]] = {
    ("full", 200, ROW_COL): (8.0,), ("lora", 200, KAPPA): (8.0,)}
#: the warm start's b0 in the grids above (``amos-warm``), the library's default when the study
#: was planned, kept fixed here so that a later default does not rename runs
MAIN_B0 = 100.0
#: the warm start with one setting changed (full fine-tuning, at SWEEP_VALUE x the suggested
#: xi, every budget and seed): b0 0 separates the two halves of the warm start (eta from the
#: weights, b at 0), 10 / 1000 bracket the default; beta 0.99 / 0.999 against the suggested
#: 1 - xi = 0.93 (this text is 183 batches an epoch), a short memory for v; decay_ratio 1/4,
#: the same step with a weight decay 16 times weaker (Amos's rho); the row-and-column second
#: moment (each entry's step from a rank-1 estimate of its own g^2 rather than its row's), and
#: full-size slots (each entry its own v and b, as Adam's; 150% of AdamW's state), the bound
SWEEPS: tuple[tuple[str, float | str], ...] = (
    ("second_moment", "row-col"), ("slots", "full"), ("b0", 10.0), ("b0", 1000.0), ("b0", 0.0),
    ("decay_ratio", 0.25), ("beta", 0.99), ("beta", 0.999))
SWEEP_VALUE = 0.5
#: the settings swept at every budget; the others only at the first (at 200 steps decay_ratio
#: and beta moved the loss by 0.003 at most, inside the seeds' spread; full-size slots, 150% of
#: AdamW's state, are a bound rather than an option)
LONG_SWEEPS = ("b0", "second_moment")
#: the compared method of each mode, tested against AdamW
CANDIDATES = {"full": ("amos-warm", ROW_COL, "amos"),
              "lora": ("amos", KAPPA)}


@dataclass(frozen=True)
class Setup:
    """The sizes of one configuration (the full one, or the smoke test's)."""

    pretrain_steps: int = PRETRAIN_STEPS
    budgets: tuple[int, ...] = BUDGETS
    seeds: tuple[int, ...] = SEEDS
    grids: Any = None  # None: GRIDS
    extensions: Any = None  # None: EXTENSIONS
    # the model and batches of amos compare's lm task
    seq_len: int = field_default("seq_len")
    width: int = field_default("width")
    layers: int = field_default("layers")
    heads: int = field_default("heads")
    batch_size: int = field_default("batch_size")
    eval_batches: int = 8
    evals: int = 4
    b0: float = MAIN_B0  # the warm start's b0 in the grids (amos-warm)
    sweeps: tuple[tuple[str, float | str], ...] = SWEEPS  # amos-warm-KEY=VALUE, full
    long_sweeps: tuple[str, ...] = LONG_SWEEPS  # the KEYs swept beyond the first budget
    sweep_value: float = SWEEP_VALUE

    def grid(self) -> dict[str, dict[str, tuple[float, ...]]]:
        return GRIDS if self.grids is None else self.grids

    def extended(self, mode: str, budget: int, method: str) -> tuple[float, ...]:
        """The grid of a method at one budget: :meth:`grid`'s, plus its :data:`EXTENSIONS`."""
        extensions = EXTENSIONS if self.extensions is None else self.extensions
        return self.grid()[mode][method] + extensions.get((mode, budget, method), ())

    def b0_of(self, method: str) -> float:
        """The warm start's ``b0`` of a method: ``amos-warm`` runs at :attr:`b0`, and
        ``amos-warm-b0=VALUE`` (the sweep) at VALUE."""
        return changed(method).get("b0", self.b0)


def sweep_name(key: str, value: float | str) -> str:
    return f"amos-warm-{key}={value if isinstance(value, str) else format(value, 'g')}"


def changed(method: str) -> dict[str, float | str]:
    """``{KEY: VALUE}`` of a method with one setting changed, ``amos-warm-KEY=VALUE`` or
    ``amos-KEY=VALUE`` (a number, or a word such as ``row-col``), else ``{}``."""
    if "=" not in method:
        return {}
    prefix, value = method.split("=")
    key = prefix.rsplit("-", 1)[1]
    try:
        return {key: float(value)}
    except ValueError:
        return {key: value}


SMOKE = Setup(pretrain_steps=20, budgets=(4,), seeds=(0,), seq_len=32, width=32, layers=1,
              heads=2, batch_size=4, eval_batches=1, evals=1, extensions={},
              sweeps=(("b0", 0.0), ("decay_ratio", 0.5), ("slots", "full")), sweep_value=1.0,
              grids={"full": {"adamw": (1e-3,), "amos": (1.0,), "amos-warm": (1.0,)},
                     "lora": {"adamw": (3e-3,), "amos": (1.0,),
                              KAPPA: (1.0,)}})


# ------------------------------------------------------------------------------------------------
# Data and tasks (amosopt.compare's)

_DATA: dict[str, data_lib.TextData] = {}


def texts(setup: Setup) -> tuple[data_lib.TextData, data_lib.TextData]:
    """(pretraining text: the stdlib without the fine-tuning file; fine-tuning text)."""
    if not _DATA:
        import pydoc_data.topics

        _DATA["old"] = data_lib.load_stdlib_text(setup.seq_len + 1, exclude=(FINETUNE_FILE,))
        _DATA["new"] = data_lib.load_text_file(pydoc_data.topics.__file__, setup.seq_len + 1)
    return _DATA["old"], _DATA["new"]


def task(setup: Setup, text: data_lib.TextData, steps: int, seed: int) -> LMTask:
    return LMTask(text, steps=max(steps, 1), seed=seed, batch_size=setup.batch_size,
                  seq_len=setup.seq_len, width=setup.width, layers=setup.layers,
                  heads=setup.heads, eval_batches=setup.eval_batches)


def settings(setup: Setup, ft: LMTask, budget: int,
             **changes: Any) -> optimizers_lib.OptimizerSettings:
    """The compare runs' settings for the fine-tuning text (``amos suggest``'s xi, beta, clip)."""
    s = suggest(ft.train_examples, setup.batch_size, "mean")
    return replace(optimizers_lib.OptimizerSettings(budget=budget, xi=s.xi, beta=s.beta,
                                              clip_value=s.clip_value, eta=1.0,
                                              slot_shape=None), **changes)


# ------------------------------------------------------------------------------------------------
# Pretraining


def pretrain(setup: Setup, out: Path) -> Path:
    """The pretrained checkpoint (made once: AdamW-WSD at lr 3e-3, seed 0)."""
    path = out / "pretrained.pt"
    if path.exists():
        return path
    old, _ = texts(setup)
    pre = task(setup, old, setup.pretrain_steps, seed=0)
    torch.manual_seed(0)
    model = pre.make_model()
    run_settings = settings(setup, pre, setup.pretrain_steps)
    built = optimizers_lib.build("adamw-wsd", model, PRETRAIN_LR, run_settings)
    record = RunRecord("pretrain", "adamw-wsd", PRETRAIN_LR, setup.pretrain_steps, 0,
                       {"steps": setup.pretrain_steps})
    start = time.perf_counter()
    train(pre, model, built, record, evals=setup.evals)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    (out / "pretrain.json").write_text(json.dumps(
        {"recipe": f"adamw-wsd lr {PRETRAIN_LR:g}, {setup.pretrain_steps} steps, seed 0",
         "seconds": time.perf_counter() - start, "data": pre.description,
         "record": record.as_dict()}, indent=1))
    return path


# ------------------------------------------------------------------------------------------------
# One fine-tuning run


def run_key(mode: str, budget: int, seed: int, method: str, value: float) -> str:
    return f"{mode}-{budget}-{seed}-{method}-{value:g}"


def load_model(setup: Setup, checkpoint: Path, mode: str, seed: int) -> torch.nn.Module:
    """The pretrained model; with ``mode="lora"``, wrapped with LoRA adapters initialised from
    ``seed`` (``peft``; its base weights frozen)."""
    from amosopt.compare.models import ByteLM

    model = ByteLM(setup.seq_len, setup.width, setup.layers, setup.heads)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    if mode == "lora":
        import peft

        torch.manual_seed(seed)
        config = peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA,
                                 target_modules=list(LORA_TARGETS))
        model = peft.get_peft_model(model, config)
    return model


def build(setup: Setup, model: torch.nn.Module, method: str, value: float, ft: LMTask,
          budget: int) -> optimizers_lib.Built:
    """The compare optimizers: AdamW with linear warm-up and decay, Amos-WSD with the plain or
    the warm-started automatic scales."""
    from amosopt.torch import auto_scales

    if method == "adamw":
        return optimizers_lib.build("adamw", model, value, settings(setup, ft, budget))
    warm = method.startswith("amos-warm")
    options = changed(method)
    table = auto_scales(model, ft.batch(0)[0][:1], pretrained=warm, b0=setup.b0_of(method),
                        lora_update=options.pop("kappa", LORA_RELATIVE_UPDATE))
    slot_shape = None if options.pop("slots", None) == "full" else table.slot_shape
    return optimizers_lib.build("amos-wsd", model, value, settings(
        setup, ft, budget, eta=table.eta, slot_shape=slot_shape,
        amos_b0=table.b0 if warm else 0.0,
        **{f"amos_{key}": value for key, value in options.items() if key != "b0"}))


def fine_tune(setup: Setup, checkpoint: Path, out: Path, mode: str, budget: int, seed: int,
              method: str, value: float) -> dict:
    """One run; writes its JSON and returns it."""
    torch.set_num_threads(1)
    old, new = texts(setup)
    ft = task(setup, new, budget, seed)
    old_task = task(setup, old, 1, seed=0)  # only its validation windows are used
    model = load_model(setup, checkpoint, mode, seed)
    old_before = old_task.evaluate(model)["loss"]
    built = build(setup, model, method, value, ft, budget)
    key = run_key(mode, budget, seed, method, value)
    record = RunRecord(key, method, value, budget, seed, {"mode": mode})
    start = time.perf_counter()
    train(ft, model, built, record, evals=setup.evals)
    result = {"key": key, "mode": mode, "method": method, "value": value, "budget": budget,
              "seed": seed,
              "b0": setup.b0_of(method) if method.startswith("amos-warm") else None,
              "changed": changed(method),
              "ft_val_before": record.val[0]["loss"] if record.val else None,
              "ft_val": record.final_val_loss, "old_val_before": old_before,
              "old_val_after": old_task.evaluate(model)["loss"],
              "seconds": time.perf_counter() - start, "record": record.as_dict()}
    path = out / "runs" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def plan(setup: Setup) -> list[tuple[str, int, int, str, float]]:
    """Every run, the smaller budget and seed 0 first (a cut study has whole comparisons);
    each budget's sweep after its grids, one change at a time over the seeds (beyond the first
    budget only the keys in ``long_sweeps``)."""
    runs = []
    for budget in setup.budgets:
        runs += [(mode, budget, seed, method, value) for seed in setup.seeds
                 for mode, methods in setup.grid().items() for method in methods
                 for value in setup.extended(mode, budget, method)]
        runs += [("full", budget, seed, sweep_name(key, value), setup.sweep_value)
                 for key, value in setup.sweeps for seed in setup.seeds
                 if budget == setup.budgets[0] or key in setup.long_sweeps]
    return runs


def run_all(setup: Setup, out: Path, jobs: int) -> None:
    checkpoint = pretrain(setup, out)
    todo = [spec for spec in plan(setup)
            if not (out / "runs" / f"{run_key(*spec)}.json").exists()]
    print(f"{len(plan(setup)) - len(todo)} runs done, {len(todo)} to run", flush=True)
    if jobs <= 1:
        for spec in todo:
            _report(fine_tune(setup, checkpoint, out, *spec))
        return
    with ProcessPoolExecutor(jobs) as pool:
        for result in pool.map(_fine_tune_star, [(setup, checkpoint, out, *s) for s in todo]):
            _report(result)


def _fine_tune_star(args: tuple) -> dict:
    return fine_tune(*args)


def _report(result: dict) -> None:
    print(f"{result['key']}: fine-tuned {_fmt(result['ft_val'])}, pretraining text "
          f"{result['old_val_before']:.4f} -> {result['old_val_after']:.4f} "
          f"({result['seconds']:.0f} s)", flush=True)


# ------------------------------------------------------------------------------------------------
# Summary


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def _paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """Paired t-test (two-sided) over the seeds both have: mean of a - b, t, p."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    result = {"n": len(seeds), "mean_difference": statistics.fmean(diffs) if diffs else None,
              "t": None, "p": None}
    if len(seeds) >= 2 and any(d != diffs[0] for d in diffs):
        from scipy import stats

        test = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
        result["t"], result["p"] = float(test.statistic), float(test.pvalue)
    return result


def summarize(setup: Setup, out: Path) -> dict:
    """Per mode and budget: each method at its best value (mean fine-tuned loss over seeds),
    its losses, forgetting, and paired tests against AdamW."""
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    summary: dict[str, Any] = {"setup": asdict(setup), "groups": []}
    for mode, methods in setup.grid().items():
        for budget in setup.budgets:
            best = {}
            for method in methods:
                by_value: dict[float, list[dict]] = {}
                for r in runs:
                    if (r["mode"], r["budget"], r["method"]) == (mode, budget, method) and \
                            r["ft_val"] is not None:
                        by_value.setdefault(r["value"], []).append(r)
                if by_value:
                    value = min(by_value, key=lambda v: statistics.fmean(
                        r["ft_val"] for r in by_value[v]))
                    best[method] = {"value": value, "runs": by_value[value]}
            group = {"mode": mode, "budget": budget, "methods": {}}
            for method, entry in best.items():
                rs = entry["runs"]
                group["methods"][method] = {
                    "value": entry["value"], "seeds": [r["seed"] for r in rs],
                    "ft_val": [r["ft_val"] for r in rs],
                    "old_before": [r["old_val_before"] for r in rs],
                    "old_after": [r["old_val_after"] for r in rs],
                    "forgetting": [r["old_val_after"] - r["old_val_before"] for r in rs]}
            if "adamw" in best:
                reference = {r["seed"]: r for r in best["adamw"]["runs"]}
                for method in CANDIDATES[mode]:
                    if method not in best:
                        continue
                    mine = {r["seed"]: r for r in best[method]["runs"]}
                    group["methods"][method]["vs_adamw"] = {
                        "ft_val": _paired({s: r["ft_val"] for s, r in mine.items()},
                                          {s: r["ft_val"] for s, r in reference.items()}),
                        "old_after": _paired(
                            {s: r["old_val_after"] for s, r in mine.items()},
                            {s: r["old_val_after"] for s, r in reference.items()})}
            summary["groups"].append(group)
    summary["sweep"] = _sweep(setup, runs, summary["groups"])
    return summary


def _sweep(setup: Setup, runs: list[dict], groups: list[dict]) -> list[dict]:
    """Full fine-tuning at ``sweep_value`` x the suggested xi, per budget: the grids' warm start
    and each change of the sweep: fine-tuned loss, forgetting, and paired tests against AdamW at
    its best value."""
    rows = []
    methods = [("amos-warm", "none")] + [(sweep_name(k, v), sweep_name(k, v).removeprefix(
        "amos-warm-").replace("=", " ")) for k, v in setup.sweeps]
    for budget in setup.budgets:
        adamw = next((g["methods"].get("adamw") for g in groups
                      if (g["mode"], g["budget"]) == ("full", budget)), None)
        reference = {} if adamw is None else dict(zip(adamw["seeds"], zip(adamw["ft_val"],
                                                                        adamw["old_after"])))
        for method, change in methods:
            rs = [r for r in runs if (r["mode"], r["budget"], r["method"], r["value"]) ==
                  ("full", budget, method, setup.sweep_value) and r["ft_val"] is not None]
            if not rs:
                continue
            mine = {r["seed"]: r for r in rs}
            rows.append({
                "budget": budget, "change": change, "b0": setup.b0_of(method),
                "seeds": sorted(mine),
                "ft_val": [mine[s]["ft_val"] for s in sorted(mine)],
                "forgetting": [mine[s]["old_val_after"] - mine[s]["old_val_before"]
                               for s in sorted(mine)],
                "vs_adamw": {
                    "ft_val": _paired({s: r["ft_val"] for s, r in mine.items()},
                                      {s: v[0] for s, v in reference.items()}),
                    "old_after": _paired({s: r["old_val_after"] for s, r in mine.items()},
                                         {s: v[1] for s, v in reference.items()})}})
    return rows


def write_summary(setup: Setup, out: Path) -> str:
    summary = summarize(setup, out)
    lines = ["# Fine-tuning: Amos warm-started, Amos plain, AdamW", "",
             f"Pretrained: AdamW-WSD lr {PRETRAIN_LR:g}, {setup.pretrain_steps} steps, on the "
             f"standard library without {FINETUNE_FILE}; fine-tuned on {FINETUNE_FILE}. Each "
             "method at its best grid value (mean fine-tuned validation loss over seeds). Losses "
             "in nats per byte; forgetting = pretraining-text validation loss after minus "
             "before; paired t-tests over seeds against AdamW (difference: method - AdamW).", "",
             "| mode | budget | method | value | seeds | fine-tuned val | pretraining val "
             "before | after | forgetting | vs AdamW: fine-tuned (p) | vs AdamW: after (p) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for group in summary["groups"]:
        for method, m in group["methods"].items():
            tests = m.get("vs_adamw")
            cells = ["", ""] if tests is None else [
                f"{_fmt(t['mean_difference'])} ({_fmt(t['p'], 3)})"
                for t in (tests["ft_val"], tests["old_after"])]
            lines.append(
                f"| {group['mode']} | {group['budget']} | {method} | {m['value']:g} | "
                f"{len(m['seeds'])} | {_mean_sd(m['ft_val'])} | {_mean_sd(m['old_before'])} | "
                f"{_mean_sd(m['old_after'])} | {_mean_sd(m['forgetting'])} | "
                + " | ".join(cells) + " |")
    if summary["sweep"]:
        lines += ["", f"## The warm start with one setting changed (full fine-tuning, "
                  f"{setup.sweep_value:g} x the suggested xi; b0 {setup.b0:g} and the suggested "
                  "beta unless changed; AdamW at its best lr)", "",
                  "| budget | changed | seeds | fine-tuned val | forgetting | vs AdamW: "
                  "fine-tuned (p) | vs AdamW: after (p) |", "|---|---|---|---|---|---|---|"]
        for row in summary["sweep"]:
            tests = [f"{_fmt(t['mean_difference'])} ({_fmt(t['p'], 3)})"
                     for t in (row["vs_adamw"]["ft_val"], row["vs_adamw"]["old_after"])]
            lines.append(f"| {row['budget']} | {row['change']} | {len(row['seeds'])} | "
                         f"{_mean_sd(row['ft_val'])} | {_mean_sd(row['forgetting'])} | "
                         + " | ".join(tests) + " |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    parser.add_argument("--summary", action="store_true", help="only write the summary")
    parser.add_argument("--smoke", action="store_true", help="a tiny configuration (seconds)")
    args = parser.parse_args(argv)
    setup = SMOKE if args.smoke else Setup()
    if not args.summary:
        run_all(setup, args.out, args.jobs)
    print(write_summary(setup, args.out))


if __name__ == "__main__":
    main()
