"""Data for ``amos compare``, all of it on the machine already (nothing is downloaded).

* ``lm``: bytes of the running interpreter's standard library (``*.py`` sources, which include the
  documentation topics of ``pydoc_data/topics.py``), without ``test``/``tests`` directories and
  ``site-packages``; split into train and validation **by file** with a hash of the relative
  path, so the split is the same on every run and machine with the same Python.
* ``--text PATH``: any file, read as bytes; the last ``VAL_FRACTION`` is validation.
* ``--train-bytes N`` (either text): a training split of ``N`` bytes, in chunks of at most
  ``CHUNK_BYTES`` taken evenly across the full split (:func:`subsample_train`), so that a budget
  covers several epochs while the text stays representative; validation is unchanged.
* ``digits``: scikit-learn's ``load_digits`` (1797 8x8 images), a fixed 80/20 split.
"""

from __future__ import annotations

import os
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: fraction of the files (stdlib) or of the bytes (--text) held out for validation
VAL_FRACTION = 0.1
#: the unit of --train-bytes: chunks at most this long, spread evenly over the full training split
CHUNK_BYTES = 16384
#: directories left out of the stdlib corpus (tests are generated / repetitive, and
#: site-packages is not part of every installation)
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})


class DataError(ValueError):
    """Bad data given by the user (a missing, empty or too small ``--text`` file)."""


@dataclass
class TextData:
    """Byte-level train / validation text."""

    train: np.ndarray  # uint8
    val: np.ndarray  # uint8
    source: str
    description: dict


def _is_validation_file(relative_path: str) -> bool:
    # crc32 is stable across runs and Python versions (unlike hash()); ~1 file in 10.
    return zlib.crc32(relative_path.encode()) % round(1 / VAL_FRACTION) == 0


def stdlib_files(root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """``(relative path, path)`` of the stdlib's ``*.py`` files, sorted, tests excluded."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in EXCLUDED_DIRS)
        for name in sorted(names):
            if name.endswith(".py"):
                path = Path(directory) / name
                files.append((path.relative_to(root).as_posix(), path))
    return sorted(files)


def load_stdlib_text(min_bytes: int, root: str | os.PathLike | None = None,
                     exclude: tuple[str, ...] = ()) -> TextData:
    """The standard library's sources as bytes, split by file (see module docstring); the
    files at the relative paths ``exclude`` are left out (``benchmarks/finetune.py`` keeps
    ``pydoc_data/topics.py`` for fine-tuning)."""
    train_parts: list[bytes] = []
    val_parts: list[bytes] = []
    val_files = 0
    files = [(relative, path) for relative, path in stdlib_files(root)
             if relative not in exclude]
    for relative, path in files:
        data = path.read_bytes() + b"\n\n"
        if _is_validation_file(relative):
            val_parts.append(data)
            val_files += 1
        else:
            train_parts.append(data)
    train = np.frombuffer(b"".join(train_parts), dtype=np.uint8)
    val = np.frombuffer(b"".join(val_parts), dtype=np.uint8)
    if min(len(train), len(val)) < min_bytes:
        raise DataError(
            f"the standard library at {root or sysconfig.get_paths()['stdlib']} has too little "
            f"text ({len(train)} train / {len(val)} validation bytes); use --text PATH"
        )
    description = {
        "source": "Python standard library sources (incl. pydoc_data/topics.py), tests excluded",
        "root": str(root or sysconfig.get_paths()["stdlib"]),
        "split": f"by file: crc32(relative path) % {round(1 / VAL_FRACTION)} == 0 -> validation",
        "files": len(files),
        **({"excluded": list(exclude)} if exclude else {}),
        "val_files": val_files,
        "train_bytes": int(len(train)),
        "val_bytes": int(len(val)),
    }
    return TextData(train, val, "stdlib", description)


def load_text_file(path: str | os.PathLike, min_bytes: int) -> TextData:
    """A user's text file, split by position: the last ``VAL_FRACTION`` is validation.

    Raises:
        DataError: the file is missing, unreadable, empty, or too small to give both parts at
            least ``min_bytes`` bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--text {path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"--text {path}: cannot read it ({error.strerror})") from None
    if not data:
        raise DataError(f"--text {path}: the file is empty")
    n_val = int(len(data) * VAL_FRACTION)
    if min(n_val, len(data) - n_val) < min_bytes:
        needed = int(np.ceil(min_bytes / VAL_FRACTION))
        raise DataError(
            f"--text {path}: {len(data)} bytes is too small to split (the last "
            f"{VAL_FRACTION:.0%} is validation and each part needs >= {min_bytes} bytes); "
            f"give at least {needed} bytes or a smaller --seq-len"
        )
    array = np.frombuffer(data, dtype=np.uint8)
    description = {
        "source": str(path),
        "split": f"by position: the last {VAL_FRACTION:.0%} of the bytes -> validation",
        "train_bytes": int(len(data) - n_val),
        "val_bytes": int(n_val),
    }
    return TextData(array[: len(data) - n_val], array[len(data) - n_val:], "text", description)


@dataclass
class DigitsData:
    """Standardised 8x8 digit images (N, 1, 8, 8) float32 and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    description: dict


def load_digits_data(split_seed: int = 0) -> DigitsData:
    """scikit-learn's digits, a fixed 80/20 split (``split_seed``, independent of ``--seed``).

    Pixels (0..16) are standardised with the training set's mean and std, so the first
    convolution sees unit-scale inputs.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(split_seed).permutation(len(y))
    n_val = int(round(len(y) * 0.2))
    val, train = order[:n_val], order[n_val:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    description = {
        "source": "sklearn.datasets.load_digits (8x8, 10 classes)",
        "split": f"fixed random 80/20 split (numpy seed {split_seed})",
        "train_examples": int(len(train)),
        "val_examples": int(len(val)),
    }
    return DigitsData(x[train], y[train], x[val], y[val], description)


def subsample_train(text: TextData, n_bytes: int) -> TextData:
    """``text`` with a training split of exactly ``n_bytes``: ``k = ceil(n_bytes /
    CHUNK_BYTES)`` contiguous pieces of (nearly) equal length, piece ``i`` starting at
    ``round(i * (len - piece) / (k - 1))``, so that they cover the whole split evenly (every
    part of the corpus represented in proportion); validation is kept whole.

    Raises:
        DataError: ``n_bytes`` is not positive, or not smaller than the training split.
    """
    size = len(text.train)
    if n_bytes <= 0 or n_bytes >= size:
        raise DataError(f"--train-bytes {n_bytes}: expected a positive number of bytes below "
                        f"the training split's {size}")
    k = -(-n_bytes // CHUNK_BYTES)
    lengths = [n_bytes // k + (i < n_bytes % k) for i in range(k)]
    starts = ([0] if k == 1 else
              [round(i * (size - lengths[i]) / (k - 1)) for i in range(k)])
    train = np.concatenate([text.train[s:s + n] for s, n in zip(starts, lengths)])
    description = dict(text.description, train_bytes=int(len(train)),
                       train_subsample=f"{k} chunks of about {n_bytes // k} bytes evenly "
                                       f"across the {size}-byte training split")
    return TextData(train, text.val, text.source, description)
