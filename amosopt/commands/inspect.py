r"""amos inspect: print the automatic eta / slot-shape table of a PyTorch model, and how much
optimizer state Amos keeps against AdamW.

TARGET is an importable factory, ``package.module:callable`` (e.g. ``torchvision.models:resnet18``
or ``mypkg.models:build``), called with the keyword arguments of ``--kwargs`` (a JSON object); it
must return a ``torch.nn.Module``. With ``--example-input-shape`` the model runs one forward pass on
zeros of that shape, so that kernels fed by an activation are found from the data flow; without it
a heuristic decides (see ``amosopt.torch.scales``).

Example::

    amos inspect torch.nn:TransformerEncoderLayer --kwargs '{"d_model": 64, "nhead": 4}' \
        --example-input-shape 8,2,64
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

_DTYPES = ("float32", "int64")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("target", metavar="TARGET",
                        help="model factory as package.module:callable")
    parser.add_argument("--kwargs", default="{}", metavar="JSON",
                        help="keyword arguments of the factory, as a JSON object")
    parser.add_argument("--example-input-shape", action="append", default=None, metavar="SHAPE",
                        help="shape of one example input, e.g. 2,16 (repeat for several "
                             "positional inputs); enables the data-flow analysis")
    parser.add_argument("--example-input-dtype", choices=_DTYPES, default="float32",
                        help="dtype of the example inputs (int64 for token ids); default float32")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="a saved Amos state_dict (torch.save; also a dict with it under "
                             "'optimizer', or a Lightning checkpoint): print what Amos is doing "
                             "for each parameter (effective rate, weight decay, decay so far, "
                             "steps until it drops another 10%%)")


def load_factory(target: str) -> Any:
    """Imports ``package.module:callable`` (the attribute may be dotted)."""
    from amosopt.commands import CommandError

    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(f"TARGET must look like package.module:callable, got {target!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise CommandError(f"cannot import {module_name!r} from TARGET {target!r}: {error}") \
            from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise CommandError(
                f"{module_name!r} has no attribute {attribute!r} (TARGET {target!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CommandError(f"TARGET {target!r} is not callable")
    return obj


def parse_kwargs(text: str) -> dict[str, Any]:
    from amosopt.commands import CommandError

    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as error:
        raise CommandError(f"--kwargs is not valid JSON ({error}): {text!r}") from None
    if not isinstance(kwargs, dict):
        raise CommandError(
            f"--kwargs must be a JSON object such as '{{\"width\": 64}}', got {text!r}")
    return kwargs


def parse_shape(text: str) -> tuple[int, ...]:
    from amosopt.commands import CommandError

    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise CommandError(
            f"--example-input-shape must be positive integers separated by commas, e.g. 2,16; "
            f"got {text!r}"
        )
    return shape


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.2f} MiB"


def format_memory(memory: Any) -> str:
    """The optimizer-state comparison, bytes and percentages of AdamW's."""
    from amosopt.scales import format_rows

    rows = [("optimizer state", "bytes", "size", "vs AdamW")]
    for label, value in (("AdamW (m, v)", memory.adamw),
                         ("Amos (v, b)", memory.amos),
                         ("Amos + momentum (v, b, m)", memory.amos_momentum),
                         ("Amos row-col + momentum (v, b, u, m)", memory.row_col_momentum)):
        rows.append((label, f"{value:,}", _mb(value), f"{memory.percent(value):.3f}%"))
    return (format_rows(rows) + f"\n(parameters: {memory.params // 4:,} float32 elements, "
            f"{memory.params:,} bytes; slots counted as float32, step counters excluded)")


def run(args: argparse.Namespace) -> int:
    from amosopt.commands import CommandError

    factory = load_factory(args.target)
    kwargs = parse_kwargs(args.kwargs)
    shapes = [parse_shape(text) for text in args.example_input_shape or []]
    try:
        import torch

        from amosopt.torch.scales import auto_scales
    except ImportError as error:
        raise CommandError(f"amos inspect needs PyTorch: pip install 'amosopt[torch]' ({error})") \
            from None
    try:
        model = factory(**kwargs)
    except Exception as error:  # the user's factory: report its failure in one line
        raise CommandError(f"{args.target}(**{kwargs}) failed: {type(error).__name__}: {error}") \
            from None
    if not isinstance(model, torch.nn.Module):
        raise CommandError(f"{args.target} returned {type(model).__name__}, not a torch.nn.Module")
    inputs = None
    if shapes:
        dtype = torch.float32 if args.example_input_dtype == "float32" else torch.int64
        inputs = tuple(torch.zeros(shape, dtype=dtype) for shape in shapes)
    try:
        table = auto_scales(model, inputs)
    except ValueError as error:
        raise CommandError(str(error).splitlines()[0]) from None
    if not len(table):
        raise CommandError(f"{args.target} has no trainable parameters")
    print(table.format())
    print()
    print(format_memory(table.memory()))
    if args.checkpoint is not None:
        print()
        print(format_checkpoint(load_checkpoint(args.checkpoint), list(table)))
    return 0


def load_checkpoint(path: str) -> dict:
    """The Amos ``state_dict`` in ``path`` (plain, under ``optimizer``, or Lightning's)."""
    import pickle

    import torch

    from amosopt.commands import CommandError

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CommandError(f"--checkpoint {path}: no such file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise CommandError(f"--checkpoint {path}: cannot be loaded with torch.load(weights_only="
                           f"True): {str(error).splitlines()[0]}") from None
    candidates = [saved] if isinstance(saved, dict) else []
    if isinstance(saved, dict):
        candidates += [saved.get("optimizer"), *(saved.get("optimizer_states") or [])]
    for candidate in candidates:
        if isinstance(candidate, dict) and {"state", "param_groups"} <= set(candidate):
            if not all("beta" in g and "d_coef" in g for g in candidate["param_groups"]):
                raise CommandError(f"--checkpoint {path}: the optimizer state there is not "
                                   "Amos's")
            return candidate
    raise CommandError(f"--checkpoint {path}: no optimizer state_dict in it (expected the dict "
                       "of optimizer.state_dict(), or one under 'optimizer')")


def format_checkpoint(state_dict: dict, names: list[str]) -> str:
    """The diagnostics table of a saved state_dict, one row per stepped parameter."""
    from amosopt.scales import format_rows
    from amosopt.torch.diagnostics import from_state_dict

    numbers = from_state_dict(state_dict, names)
    if not numbers:
        return "checkpoint: no parameter has been stepped yet"
    step = max(int(float(s["step"])) for s in state_dict["state"].values() if "step" in s)
    header = ("name", "step (xi eta d_t)", "weight decay", "d_t", "decay",
              "decay onset (steps)")
    rows = [header] + [(name, f"{n['step']:.4g}", f"{n['weight_decay']:.4g}", f"{n['d_t']:.4f}",
                        f"{100 * n['decay']:.2f}%", f"{n['decay_onset']:,.0f}")
                       for name, n in numbers.items()]
    return (f"checkpoint after {step:,} steps (xi = {state_dict['param_groups'][0]['lr']:.4g}):"
            f"\n" + format_rows(rows))
