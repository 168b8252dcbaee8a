"""``torch.compile`` of ``Amos.step`` and of a training step that calls it: the eager numbers,
at most one recompile while an LR scheduler changes ``lr`` at every step, the same few graphs at
every step from the second on, and the finiteness check still raising before anything changes.

Recompiles are counted from dynamo's record of guard failures (one per recompile). Most tests
use the ``aot_eager`` backend (functionalisation, where torch 2.13 loses in-place updates of 0-d
float64 graph inputs, without Inductor's C++ compile); one runs Inductor, the default backend.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from amosopt.torch import Amos
from tests.test_torch.conftest import snapshot

#: factored rows, full-size slots (flat and loop ways), scalar slots, and a 0-d parameter
SLOTS = {r"l1\.weight": "(SHAPE[0], 1)", r"l2\.weight": "SHAPE", r".*": "()"}
STEPS = 20


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2 = torch.nn.Linear(5, 7), torch.nn.Linear(7, 3)
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(x))) * self.scale


def make(dtype: torch.dtype, tensor_lr: bool = True, **options) -> tuple:
    model = Model().to(dtype)
    lr = torch.tensor(0.05) if tensor_lr else 0.05
    opt = Amos(model.named_parameters(), lr=lr, eta=0.5, slot_shape=SLOTS, **options)
    # lr changes at every step: a new constant each step unless lr is a tensor
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + 0.1 * t))
    return model, opt, sched


def data(t: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(t)
    return (torch.randn(16, 5, generator=gen, dtype=torch.float64).to(dtype),
            torch.randn(16, 3, generator=gen, dtype=torch.float64).to(dtype))


def backward(model: torch.nn.Module, opt: Amos, t: int, dtype: torch.dtype) -> None:
    x, y = data(t, dtype)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()


def run(dtype: torch.dtype, backend: str, *, whole: bool, steps: int = STEPS,
        tensor_lr: bool = True, steady: bool = True, fullgraph: bool = False, **options
        ) -> tuple[list[int], tuple, tuple]:
    """``steps`` steps compiled and eagerly, side by side: (recompiles so far after each step,
    compiled snapshot, eager snapshot). ``whole``: compile the training step (forward,
    backward, ``opt.step()``); else ``torch.compile(opt.step)`` alone. Also asserts that the
    compiled path ran and, if ``steady``, compiled nothing new after the second step (graphs
    are counted independently of the guard failures)."""
    counter = CompileCounterWithBackend(backend)
    model, opt, sched = make(dtype, tensor_lr, **options)
    eager_model, eager_opt, eager_sched = make(dtype, tensor_lr, **options)

    def training_step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    compiled_step = torch.compile(opt.step, backend=counter, fullgraph=fullgraph)
    compiled_training_step = torch.compile(training_step, backend=counter)
    counts, graphs = [], []
    for t in range(steps):
        if whole:
            compiled_training_step(*data(t, dtype))
        else:
            backward(model, opt, t, dtype)
            compiled_step()
        sched.step()
        counts.append(recompiles())
        graphs.append(counter.frame_count)
        backward(eager_model, eager_opt, t, dtype)
        eager_opt.step()
        eager_sched.step()
    assert graphs[0] > 0 and (not steady or graphs[-1] == graphs[min(1, steps - 1)]), graphs
    return counts, snapshot(opt), snapshot(eager_opt)


def assert_close(compiled: tuple, eager: tuple, rtol: float) -> None:
    (params, state), (eager_params, eager_state) = compiled, eager
    for a, b in zip(params, eager_params, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=0.0)
    assert state.keys() == eager_state.keys()
    for i in state:
        for key, value in state[i].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, eager_state[i][key], rtol=rtol, atol=0.0)
            else:
                assert value == eager_state[i][key], key


def recompiles() -> int:
    return sum(len(reasons) for reasons in torch._dynamo.utils.guard_failures.values())


def torch_dynamo_reset() -> None:
    torch._dynamo.reset()  # every test counts its own compiles
    torch._dynamo.utils.guard_failures.clear()
    torch._dynamo.utils.counters.clear()


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch_dynamo_reset()
    yield
    torch_dynamo_reset()


@pytest.mark.parametrize("whole", [False, True], ids=["step", "training-step"])
@pytest.mark.parametrize("options", [
    {},
    {"foreach": False},
    {"momentum": 0.9, "clip_value": 0.5},
    {"momentum": 0.9, "clip_value": 0.5, "foreach": False, "maximize": True},
    {"second_moment": "row-col", "momentum": 0.9, "clip_value": 0.5},
    {"second_moment": "row-col", "foreach": False},
], ids=["default", "loop", "momentum-clip", "loop-momentum-clip-maximize", "row-col",
        "loop-row-col"])
def test_equals_eager_with_at_most_one_recompile(whole: bool, options: dict) -> None:
    counts, compiled, eager = run(torch.float64, "aot_eager", whole=whole, **options)
    assert_close(compiled, eager, rtol=1e-12)
    # step 1 compiles; step 2 recompiles phase 2 once (the state exists now); then nothing
    assert counts[0] == 0 and counts[-1] <= 1, counts


def test_float_lr_gives_the_eager_numbers() -> None:
    """A Python float ``lr`` that a scheduler changes is guarded on, so dynamo recompiles at
    each new value (as for torch's own optimizers: docs/guides/precision.md says to pass a
    tensor ``lr``), but the numbers stay right."""
    _, compiled, eager = run(torch.float64, "aot_eager", whole=False, tensor_lr=False, steps=4,
                             steady=False)
    assert_close(compiled, eager, rtol=1e-12)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_low_precision_matches_eager(dtype: torch.dtype, rtol: float) -> None:
    counts, compiled, eager = run(dtype, "aot_eager", whole=False, steps=5)
    assert_close(compiled, eager, rtol=rtol)
    assert counts[-1] <= 1, counts


def graphs_per_step(fullgraph: bool, steps: int = 3, **options: object) -> list[int]:
    """How many compiled graphs each of ``steps`` calls of a compiled ``opt.step()`` runs (a
    backend that counts its graphs' calls), with an LR scheduler stepping in between."""
    model, opt, sched = make(torch.float64, **options)
    calls = []

    def backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        def run_graph(*args):
            calls.append(1)
            return graph.forward(*args)
        return run_graph

    compiled_step = torch.compile(opt.step, backend=backend, fullgraph=fullgraph)
    counts = []
    for t in range(steps):
        backward(model, opt, t, torch.float64)
        calls.clear()
        compiled_step()
        sched.step()
        counts.append(len(calls))
    return counts


def test_graphs_per_step() -> None:
    """From the second step on, a compiled ``opt.step()`` runs three graphs: phase 1, the
    finiteness check's reduction, phase 2 (the numbers of docs/guides/precision.md)."""
    assert graphs_per_step(fullgraph=False)[-1] == 3


def test_non_finite_gradient_raises_before_any_change() -> None:
    model, opt, _ = make(torch.float64)
    compiled_step = torch.compile(opt.step, backend="aot_eager")
    for t in range(2):
        backward(model, opt, t, torch.float64)
        compiled_step()
    before = copy.deepcopy(snapshot(opt))
    backward(model, opt, 2, torch.float64)
    model.l2.weight.grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"'l2\.weight'"):
        compiled_step()
    after = snapshot(opt)
    for a, b in zip(before[0], after[0], strict=True):
        assert torch.equal(a, b)
    for i in before[1]:
        for key, value in before[1][i].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, after[1][i][key]), key


OPTIONS = [{}, {"foreach": False}, {"momentum": 0.9, "clip_value": 0.5},
           {"momentum": 0.9, "clip_value": 0.5, "foreach": False, "maximize": True}]


@pytest.mark.parametrize("whole", [False, True], ids=["step", "training-step"])
@pytest.mark.parametrize("options", OPTIONS,
                         ids=["default", "loop", "momentum-clip", "loop-momentum-clip-maximize"])
def test_skip_is_one_graph_equal_to_eager(whole: bool, options: dict) -> None:
    """``nonfinite="skip"``: ``torch.compile(opt.step, fullgraph=True)`` traces (a graph break
    would raise), with an LR scheduler and a tensor lr; a compiled training step breaks only
    where torch does for every optimizer (``zero_grad``, ``backward``), never in the step."""
    counts, compiled, eager = run(torch.float64, "aot_eager", whole=whole, fullgraph=not whole,
                                  nonfinite="skip", **options)
    assert_close(compiled, eager, rtol=1e-12)
    assert counts[0] == 0 and counts[-1] <= 1, counts
    breaks = list(torch._dynamo.utils.counters["graph_break"])
    assert all("zero_grad" in k or "backward" in k for k in breaks), breaks
    assert whole or not breaks


def test_skip_runs_one_graph_per_step() -> None:
    assert graphs_per_step(fullgraph=True, nonfinite="skip") == [1, 1, 1]


def test_skip_compiled_leaves_everything_on_a_non_finite_step() -> None:
    model, opt, _ = make(torch.float64, nonfinite="skip", momentum=0.9)
    compiled_step = torch.compile(opt.step, backend="aot_eager", fullgraph=True)
    for t in range(2):
        backward(model, opt, t, torch.float64)
        compiled_step()
    before = copy.deepcopy(snapshot(opt))
    backward(model, opt, 2, torch.float64)
    model.l1.weight.grad[0, 0] = float("inf")
    compiled_step()
    after = snapshot(opt)
    for a, b in zip(before[0], after[0], strict=True):
        assert torch.equal(a, b)
    for i in before[1]:
        for key, value in before[1][i].items():
            if key == "skipped":
                assert after[1][i][key].item() == value.item() + 1
            elif isinstance(value, torch.Tensor):
                assert torch.equal(value, after[1][i][key]), key
    assert recompiles() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_inductor_equals_eager(nonfinite: str) -> None:
    """Inductor, the default backend (a C++ compile on CPU: seconds), on the loop way with
    scalar float64 slots and a 0-d parameter, where in-place updates could be lost."""
    counts, compiled, eager = run(torch.float64, "inductor", whole=True, steps=6,
                                  foreach=False, momentum=0.9, nonfinite=nonfinite)
    assert_close(compiled, eager, rtol=1e-12)
    assert counts[-1] <= 1, counts
