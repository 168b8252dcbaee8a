"""The tasks of ``amos compare``: a model, a seeded batch order and a validation loss.

Every optimizer sees the same batches in the same order: batch ``i`` depends only on ``seed``
and ``i``, drawn up front from a seeded ``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from amosopt.compare import data as data_lib
from amosopt.compare import models


@dataclass
class Task:
    """What the training loop needs; subclasses fill it in."""

    name: str
    batch_size: int
    steps: int
    seed: int
    description: dict = field(default_factory=dict)
    train_examples: int = 0  # for amosopt.suggest (the study's losses are means)

    def make_model(self) -> nn.Module:
        raise NotImplementedError

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        raise NotImplementedError


class LMTask(Task):
    """Byte-level next-token prediction; loss in nats per byte (mean cross-entropy)."""

    def __init__(self, text: data_lib.TextData, *, steps: int, seed: int, batch_size: int,
                 seq_len: int, width: int, layers: int, heads: int, eval_batches: int):
        super().__init__("lm", batch_size, steps, seed)
        self.seq_len, self.width, self.layers, self.heads = seq_len, width, layers, heads
        self.train = torch.from_numpy(text.train.astype(np.int64))
        val = torch.from_numpy(text.val.astype(np.int64))
        generator = torch.Generator().manual_seed(seed)
        # random windows of seq_len + 1 bytes (inputs and shifted targets)
        self.offsets = torch.randint(0, len(self.train) - seq_len, (steps, batch_size),
                                     generator=generator)
        # validation: fixed, evenly spaced windows (the same for every seed)
        n_windows = min(eval_batches * batch_size, (len(val) - 1) // seq_len)
        starts = torch.linspace(0, len(val) - seq_len - 1, n_windows).long()
        self.val_windows = val[starts[:, None] + torch.arange(seq_len + 1)]
        self.train_examples = len(self.train) // seq_len  # non-overlapping sequences
        self.description = dict(text.description, val_windows=int(n_windows),
                                val_tokens=int(n_windows * seq_len))

    def make_model(self) -> nn.Module:
        return models.ByteLM(self.seq_len, self.width, self.layers, self.heads)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        windows = self.train[self.offsets[step][:, None] + torch.arange(self.seq_len + 1)]
        return windows[:, :-1], windows[:, 1:]

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = model(inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        total = 0.0
        for chunk in self.val_windows.split(self.batch_size):
            total += float(self.loss(model, chunk[:, :-1], chunk[:, 1:])) * len(chunk)
        model.train()
        loss = total / len(self.val_windows)
        return {"loss": loss, "bits_per_byte": loss / float(np.log(2))}


class DigitsTask(Task):
    """10-class classification of 8x8 digits; mean cross-entropy, plus accuracy."""

    def __init__(self, digits: data_lib.DigitsData, *, steps: int, seed: int, batch_size: int,
                 channels: int):
        super().__init__("digits", batch_size, steps, seed)
        self.channels = channels
        self.x_train = torch.from_numpy(digits.x_train)
        self.y_train = torch.from_numpy(digits.y_train)
        self.x_val = torch.from_numpy(digits.x_val)
        self.y_val = torch.from_numpy(digits.y_val)
        n = len(self.y_train)
        generator = torch.Generator().manual_seed(seed)
        epochs = -(-steps * batch_size // n) + 1
        # shuffled epochs, concatenated; batch i is indices[i*B:(i+1)*B]
        self.indices = torch.cat([torch.randperm(n, generator=generator) for _ in range(epochs)])
        self.train_examples = n
        self.description = digits.description

    def make_model(self) -> nn.Module:
        return models.DigitsCNN(self.channels)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.indices[step * self.batch_size:(step + 1) * self.batch_size]
        return self.x_train[index], self.y_train[index]

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(inputs), targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        logits = model(self.x_val)
        model.train()
        return {
            "loss": float(F.cross_entropy(logits, self.y_val)),
            "accuracy": float((logits.argmax(1) == self.y_val).float().mean()),
        }
