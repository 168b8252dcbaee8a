r"""amos inspect: print the automatic eta / slot-shape table of a PyTorch model, and how much
optimizer state Amos keeps against AdamW.

TARGET is an importable factory, ``package.module:callable`` (e.g. ``torchvision.models:resnet18``
or ``mypkg.models:build``; modules in the current directory are found), called with the keyword
arguments of ``--kwargs`` (a JSON object); it must return a ``torch.nn.Module``. A Hugging Face
model needs no factory: ``--hf-config`` takes its config (a ``config.json``, a folder with one, or
the JSON itself, with its ``model_type``) and ``--hf-class`` the transformers class to build from
it (default ``AutoModel``); the weights are random, nothing is downloaded. With
``--example-input-shape`` the model runs one forward pass on zeros of that shape, so that kernels
fed by an activation are found from the data flow; without it a heuristic decides (see
``amosopt.torch.scales``).

With ``--pretrained`` (fine-tuning) each tensor's ``eta`` is read from its weights, as
``auto_amos(model, lr, pretrained=True)`` reads it, and shown beside the automatic ``eta`` with
their ratio and the ``b0`` its ``b`` starts at, so that the tensors where they differ stand out.
The weights are the model's as built: a TARGET factory that loads them, ``--weights PATH`` (a
saved ``model.state_dict()``, a ``.safetensors`` file, or a dict with it under ``'model'`` or
``'state_dict'``), or, with ``--hf-config`` a folder that holds them, ``from_pretrained``.

Examples::

    amos inspect torch.nn:TransformerEncoderLayer --kwargs '{"d_model": 64, "nhead": 4}' \
        --example-input-shape 8,2,64
    amos inspect --hf-config '{"model_type": "gpt2", "n_layer": 2}' \
        --hf-class AutoModelForCausalLM --example-input-shape 1,16 --example-input-dtype int64
    amos inspect amosopt.compare.models:ByteLM --pretrained \
        --weights benchmarks/results/finetune/pretrained.pt

``python -m amosopt inspect ...`` is the same command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_DTYPES = ("float32", "int64")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("target", metavar="TARGET", nargs="?",
                        help="model factory as package.module:callable (or --hf-config)")
    parser.add_argument("--hf-config", metavar="PATH_OR_JSON",
                        help="a Hugging Face model config instead of TARGET: config.json, a "
                             "folder with one, or the JSON object (with \"model_type\")")
    parser.add_argument("--hf-class", default="AutoModel", metavar="CLASS",
                        help="with --hf-config: the transformers class to build, e.g. "
                             "AutoModelForCausalLM or GPT2LMHeadModel (default AutoModel)")
    parser.add_argument("--kwargs", default="{}", metavar="JSON",
                        help="keyword arguments of the factory, as a JSON object (with "
                             "--hf-config: config fields that override the config's)")
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
    parser.add_argument("--pretrained", action="store_true",
                        help="fine-tuning: each tensor's eta from its weights (the warm start "
                             "of auto_amos(..., pretrained=True)) beside the automatic eta")
    parser.add_argument("--weights", metavar="PATH",
                        help="load these weights into the model first: a saved "
                             "model.state_dict() (torch.save; also under 'model' or "
                             "'state_dict') or a .safetensors file")
    parser.add_argument("--xi", type=float, metavar="XI",
                        help="with --checkpoint: the global rate to show the rows at (default: "
                             "the checkpoint's, or its schedule's peak when it has cooled "
                             "down to 0)")


def load_factory(target: str) -> Any:
    """Imports ``package.module:callable`` (the attribute may be dotted)."""
    from amosopt.commands import CommandError

    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(f"TARGET must look like package.module:callable, got {target!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` does: the console
        sys.path.insert(0, os.getcwd())  # script's path holds its own folder, not the current
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


def format_rows(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, with a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _name(name: Any) -> str:
    return "/".join(map(str, name)) if isinstance(name, tuple) else str(name)


def format_table(table: Any) -> str:
    """A :class:`~amosopt.scales.ScaleTable` as text: name, shape, eta, slot shape, reason."""
    rows = [("name", "shape", "eta", "slot shape", "reason")]
    for name, shape, scale in table.items_with_shapes():
        rows.append((_name(name), str(shape), f"{scale.eta:.6g}", str(scale.slot_shape),
                     scale.reason))
    return format_rows(rows)


def format_pretrained(table: Any, automatic: Any) -> str:
    """The warm start's table beside the automatic one: name, shape, eta from the weights,
    automatic eta, their ratio, b0, slot shape, and how the weights' eta was found."""
    rows = [("name", "shape", "eta (weights)", "eta (automatic)", "ratio", "b0", "slot shape",
             "how")]
    for name, shape, scale in table.items_with_shapes():
        auto = automatic[name].eta
        how = scale.reason.split(" (automatic ")[0]  # the automatic reason is its own column
        rows.append((_name(name), str(shape), f"{scale.eta:.6g}", f"{auto:.6g}",
                     f"{scale.eta / auto:.3g}", f"{scale.b0:g}", str(scale.slot_shape), how))
    return format_rows(rows)


def format_memory(memory: Any) -> str:
    """The optimizer-state comparison, bytes and percentages of AdamW's."""
    rows = [("optimizer state", "bytes", "size", "vs AdamW")]
    for label, value in (("AdamW (m, v)", memory.adamw),
                         ("Amos (v, b)", memory.amos),
                         ("Amos + momentum (v, b, m)", memory.amos_momentum),
                         ("Amos row-col + momentum (v, b, u, m)", memory.row_col_momentum)):
        rows.append((label, f"{value:,}", _mb(value), f"{memory.percent(value):.3f}%"))
    return (format_rows(rows) + f"\n(parameters: {memory.params // 4:,} float32 elements, "
            f"{memory.params:,} bytes; slots counted as float32, step counters excluded)")


def hf_config(text: str) -> dict[str, Any]:
    """The config dict of ``--hf-config``: a JSON object, a ``config.json`` or a folder with one."""
    from amosopt.commands import CommandError

    if text.lstrip().startswith("{"):
        source = "--hf-config"
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            raise CommandError(f"--hf-config is not valid JSON ({error}): {text!r}") from None
    else:
        path = Path(text)
        source = str(path / "config.json" if path.is_dir() else path)
        try:
            config = json.loads(Path(source).read_text())
        except FileNotFoundError:
            raise CommandError(f"--hf-config {text}: no such file (expected config.json, a "
                               "folder with one, or a JSON object)") from None
        except json.JSONDecodeError as error:
            raise CommandError(f"--hf-config {source}: not valid JSON ({error})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise CommandError(f"{source}: a Hugging Face config is a JSON object with its "
                           "\"model_type\" (e.g. {\"model_type\": \"gpt2\", \"n_layer\": 2})")
    return config


_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
               "pytorch_model.bin.index.json")


def hf_weights_folder(text: str) -> str | None:
    """``--hf-config``'s folder if it holds a model's weights, else None."""
    path = Path(text)
    if text.lstrip().startswith("{") or not path.is_dir():
        return None
    return str(path) if any((path / name).exists() for name in _HF_WEIGHTS) else None


def hf_factory(config: dict[str, Any], class_name: str, weights: str | None = None) -> Any:
    """``(**overrides) -> model``: the transformers class ``class_name`` built from ``config``
    (random weights; ``Auto*`` classes through ``from_config``), or, with ``weights`` (a folder),
    loaded from it with ``from_pretrained``."""
    from amosopt.commands import CommandError

    try:
        import transformers
    except ImportError as error:
        raise CommandError(f"--hf-config needs transformers: pip install transformers ({error})") \
            from None
    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise CommandError(f"--hf-class {class_name}: transformers has no such class (e.g. "
                           "AutoModel, AutoModelForCausalLM, GPT2LMHeadModel)")

    def build(**overrides: Any) -> Any:
        if weights is not None:
            return cls.from_pretrained(weights, **overrides)
        fields = {k: v for k, v in {**config, **overrides}.items() if k != "model_type"}
        model_config = transformers.AutoConfig.for_model(config["model_type"], **fields)
        return cls.from_config(model_config) if class_name.startswith("Auto") else cls(
            model_config)

    return build


def run(args: argparse.Namespace) -> int:
    from amosopt.commands import CommandError

    if (args.target is None) == (args.hf_config is None):
        raise CommandError("give TARGET (package.module:callable) or --hf-config, not both"
                           if args.target else "give TARGET (package.module:callable) or "
                           "--hf-config PATH_OR_JSON")
    if args.hf_config is not None:
        args.target = f"transformers:{args.hf_class}"
        folder = hf_weights_folder(args.hf_config) if args.pretrained else None
        factory = hf_factory(hf_config(args.hf_config), args.hf_class, folder)
    else:
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
    if args.weights is not None:
        load_weights(model, args.weights)
    inputs = None
    if shapes:
        dtype = torch.float32 if args.example_input_dtype == "float32" else torch.int64
        inputs = tuple(torch.zeros(shape, dtype=dtype) for shape in shapes)
    try:
        table = auto_scales(model, inputs)
        warm = auto_scales(model, inputs, pretrained=True) if args.pretrained else None
    except ValueError as error:
        raise CommandError(str(error).splitlines()[0]) from None
    if not len(table):
        raise CommandError(f"{args.target} has no trainable parameters")
    print(format_table(table) if warm is None else format_pretrained(warm, table))
    print()
    print(format_memory(table.memory()))
    if args.checkpoint is not None:
        print()
        print(format_checkpoint(load_checkpoint(args.checkpoint), list(table), args.xi))
    return 0


def load_weights(model: Any, path: str) -> None:
    """Loads ``--weights`` into ``model`` (strictly: every tensor must match)."""
    import pickle

    import torch

    from amosopt.commands import CommandError

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            saved: Any = load_file(path)
        else:
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CommandError(f"--weights {path}: no such file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise CommandError(f"--weights {path}: cannot be loaded: "
                           f"{str(error).splitlines()[0]}") from None
    for key in ("model", "state_dict"):
        if isinstance(saved, dict) and isinstance(saved.get(key), dict):
            saved = saved[key]
    try:
        model.load_state_dict(saved)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise CommandError(f"--weights {path}: not this model's weights: "
                           f"{str(error).splitlines()[0]}") from None


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


def shown_xi(group: dict, xi: float | None) -> tuple[float | None, str]:
    """The ``xi`` to show a saved group's rows at, and what its schedule is doing, in words.

    A checkpoint saved after its cooldown has ``lr = 0``, where every step is 0 and every onset
    infinite: the rows are shown at the schedule's peak, ``initial_lr``, which torch's LR
    schedulers keep in the param group (or at ``--xi``)."""
    lr, peak = float(group["lr"]), group.get("initial_lr")
    peak = None if peak is None else float(peak)
    if xi is not None:
        return xi, f"xi = {lr:.4g} in the checkpoint; the rows at --xi {xi:.4g}"
    if peak is None or peak <= 0 or lr >= peak:
        return (lr if lr > 0 else None), f"xi = {lr:.4g}"
    if lr == 0:
        return peak, (f"xi = 0: the schedule has cooled down to 0 from its peak {peak:.4g}, so "
                      f"nothing moves any more; the rows at the peak xi = {peak:.4g}")
    return lr, (f"xi = {lr:.4g}, {100 * lr / peak:.0f}% of its schedule's peak {peak:.4g} "
                "(in a warm-up or a cooldown)")


def format_checkpoint(state_dict: dict, names: list[str], xi: float | None = None) -> str:
    """The diagnostics table of a saved state_dict, one row per stepped parameter, at the
    ``xi`` of :func:`shown_xi`."""
    from amosopt.torch.diagnostics import from_state_dict

    step = max((int(float(s["step"])) for s in state_dict["state"].values() if "step" in s),
               default=0)
    xis, words = zip(*(shown_xi(g, xi) for g in state_dict["param_groups"]))
    title = f"checkpoint after {step:,} steps ({words[0]})"
    if any(x is None for x in xis):
        return (f"{title}\nxi = 0 in this checkpoint and no schedule's peak is recorded: pass "
                "--xi (the rate of the run) to see what Amos does per parameter")
    groups = [dict(g, lr=x) for g, x in zip(state_dict["param_groups"], xis)]
    numbers = from_state_dict({**state_dict, "param_groups": groups}, names)
    if not numbers:
        return "checkpoint: no parameter has been stepped yet"
    header = ("name", "step (xi eta d_t)", "weight decay", "d_t", "decay",
              "decay onset (steps)")
    rows = [header] + [(name, f"{n['step']:.4g}", f"{n['weight_decay']:.4g}", f"{n['d_t']:.4f}",
                        f"{100 * n['decay']:.2f}%", f"{n['decay_onset']:,.0f}")
                       for name, n in numbers.items()]
    return f"{title}:\n" + format_rows(rows)
