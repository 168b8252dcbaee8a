"""amosopt.compare.data and tasks: deterministic splits and seeded batch orders."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from amosopt.compare import data as data_lib  # noqa: E402
from amosopt.compare.tasks import DigitsTask, LMTask  # noqa: E402


def test_stdlib_split_is_by_file_and_deterministic():
    files = data_lib.stdlib_files()
    assert files and not any("/test/" in f"/{rel}" or "site-packages" in rel for rel, _ in files)
    assert any(rel == "pydoc_data/topics.py" for rel, _ in files)
    val = [rel for rel, _ in files if data_lib._is_validation_file(rel)]
    assert 0.03 < len(val) / len(files) < 0.2
    a, b = data_lib.load_stdlib_text(129), data_lib.load_stdlib_text(129)
    assert (a.train == b.train).all() and (a.val == b.val).all()
    assert a.description["val_files"] == len(val)


def test_stdlib_text_leaves_out_excluded_files(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    for i in range(30):  # enough files for both splits (about 1 in 10 is validation)
        (root / f"m{i}.py").write_bytes(bytes([65 + i]) * 100)
    full = data_lib.load_stdlib_text(1, root)
    less = data_lib.load_stdlib_text(1, root, exclude=("m3.py",))
    assert b"D" in full.train.tobytes() + full.val.tobytes()  # m3.py is 100 x "D"
    assert b"D" not in less.train.tobytes() + less.val.tobytes()
    assert len(full.train) + len(full.val) - len(less.train) - len(less.val) == 102  # + "\n\n"
    assert less.description["excluded"] == ["m3.py"] and "excluded" not in full.description


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


@pytest.mark.parametrize("n_bytes", [1000, 16384, 50000, 65537])
def test_subsample_train_takes_even_chunks(n_bytes):
    train = np.arange(200_000, dtype=np.int64) % 251  # position is readable from the value
    text = data_lib.TextData(train.astype(np.uint8), np.zeros(300, np.uint8), "t", {})
    small = data_lib.subsample_train(text, n_bytes)
    assert len(small.train) == n_bytes and small.val is text.val
    # the cut points: where consecutive bytes are not consecutive in the original
    steps = np.diff(small.train.astype(np.int64)) % 251
    cuts = np.flatnonzero(steps != 1) + 1
    pieces = np.split(small.train, cuts)
    k = -(-n_bytes // data_lib.CHUNK_BYTES)
    assert len(pieces) == k and max(map(len, pieces)) - min(map(len, pieces)) <= 1
    assert all(len(p) <= data_lib.CHUNK_BYTES for p in pieces)
    assert pieces[0][0] == 0  # the first piece starts the split, the last ends it
    if k > 1:
        assert bytes(pieces[-1]) == bytes(text.train[-len(pieces[-1]):])


@pytest.mark.parametrize("n_bytes", [0, -5, 200_000, 300_000])
def test_subsample_train_refuses_sizes_outside_the_split(n_bytes):
    text = data_lib.TextData(np.zeros(200_000, np.uint8), np.zeros(300, np.uint8), "t", {})
    with pytest.raises(data_lib.DataError, match="--train-bytes"):
        data_lib.subsample_train(text, n_bytes)


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
