"""Models of ``amos compare`` and their explicit Amos rule tables.

The rule tables follow the paper's practice (``paper.md`` §2): a kernel with fan-in ``n`` gets
``eta = sqrt(k/n)`` (``k = 2`` after ReLU/GELU, else 1) and one slot per output row; embeddings
``sqrt(2/d)`` with one slot per row; norm gains 1.0; biases 0.5 with a scalar slot. They are the
fallback when ``amosopt.torch.auto_scales`` is not available.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

VOCAB = 256  # bytes

# torch names (``named_parameters()``); first match (re.match) wins.
LM_ETA_RULES = [
    (r"(tok|pos)_emb\.weight$", "sqrt(2 / SHAPE[1])"),
    (r".*norm.*\.weight$", 1.0),
    (r".*\.bias$", 0.5),
    (r".*mlp\.proj\.weight$", "sqrt(2 / SHAPE[1])"),  # its input comes after GELU
    (r".*\.weight$", "sqrt(1 / SHAPE[1])"),  # input normalised (LayerNorm) or linear
]
LM_SLOT_RULES = [
    (r"(tok|pos)_emb\.weight$", "(SHAPE[0], 1)"),  # one slot per row (token / position)
    (r".*norm.*", ()),
    (r".*\.bias$", ()),
    (r".*\.weight$", "(SHAPE[0], 1)"),  # one slot per output unit, fan-in shared
]

DIGITS_ETA_RULES = [
    (r"conv1\.weight$", "sqrt(1 / prod(SHAPE[1:]))"),  # standardised pixels
    (r"conv2\.weight$", "sqrt(2 / prod(SHAPE[1:]))"),  # after ReLU
    (r"fc1\.weight$", "sqrt(2 / SHAPE[1])"),  # after ReLU
    (r"fc2\.weight$", "sqrt(1 / SHAPE[1])"),  # logits, as the authors' MNIST Dense_1
    (r".*\.bias$", 0.5),
]
DIGITS_SLOT_RULES = [
    (r"conv\d\.weight$", "(SHAPE[0], 1, 1, 1)"),  # one slot per output channel
    (r"fc1\.weight$", "(SHAPE[0], 1)"),
    (r"fc2\.weight$", ()),  # small logits layer: one scalar, as the authors' MNIST
    (r".*\.bias$", ()),
]


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"Invalid width {d_model}: must be divisible by heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: int = 4):
        super().__init__()
        self.fc = nn.Linear(d_model, ratio * d_model)
        self.proj = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ByteLM(nn.Module):
    """A small GPT-style byte-level language model (learned positions, pre-LN, GELU MLP).

    Initialisation as GPT-2: normal(0, 0.02) weights, residual projections scaled by
    ``1/sqrt(2 * n_layers)``, zero biases.
    """

    def __init__(self, seq_len: int = 128, d_model: int = 128, n_layers: int = 2,
                 n_heads: int = 4):
        super().__init__()
        self.seq_len = seq_len
        self.tok_emb = nn.Embedding(VOCAB, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.norm_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_f(x))


class DigitsCNN(nn.Module):
    """conv(16) -> ReLU -> conv(32) -> ReLU -> avg-pool 2 -> dense(64) -> ReLU -> dense(10)."""

    def __init__(self, channels: int = 16, hidden: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc1 = nn.Linear(2 * channels * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.avg_pool2d(x, 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
