"""A small decoder-only transformer over characters: GPT-2's pre-norm block (Radford et al. 2019) at
the scale of the character LSTM, for dynamic sparse training of attention and MLP weights.

Every projection is its own ``nn.Linear`` — query, key, value and output of each attention layer, the
two layers of each MLP and the output head — so each is a sparse layer with its own budget and its own
row in the per-layer report, and every method that works on linear layers runs on it. The LayerNorms
stay dense; so do the token and position embeddings, unless ``sparse_embeddings``
(``--sparse-embeddings``) makes them sparse layers too (their own initialisation kept). Attention is causal
(``scaled_dot_product_attention`` with ``is_causal``) over the dataset's windows, whose length
(``--context``) fixes the number of learned positions; ``heads`` (``--heads``) splits each block's width
into that many heads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from evosparse.topology.groups import ConnectionGroup, LayerPart

#: Width of one attention head when no head count is given: a block of width w has w // HEAD_WIDTH heads.
HEAD_WIDTH = 32


def default_heads(width: int) -> int:
    """The head count of a block of ``width`` channels when none is given: one head per
    :data:`HEAD_WIDTH` channels, at least 1, lowered to the nearest count that divides the width (so that
    every width builds — widths from ``--width-scale`` are arbitrary — and multiples of 32 keep w // 32)."""
    heads = max(1, width // HEAD_WIDTH)
    while width % heads:
        heads -= 1
    return heads


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate query, key, value and output projections."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible into {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.output = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, time, width = x.shape

        def split(projection: nn.Linear) -> Tensor:  # (batch, heads, time, head width)
            return projection(x).view(batch, time, self.heads, width // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(self.query),
            split(self.key),
            split(self.value),
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.output(attended.transpose(1, 2).reshape(batch, time, width))


class Block(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x)) with a 4× wide GELU hidden layer."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm, self.mlp_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, dropout)
        self.expand, self.contract = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x)))
        return x + self.dropout(self.contract(F.gelu(self.expand(self.mlp_norm(x)))))


class CharGPT(nn.Module):
    """Characters (batch, time) int64 → next-character logits (batch, time, vocabulary)."""

    #: Its sparse layers do not form a chain of fully connected layers (attention mixes positions and
    #: residual connections skip blocks), whatever their shapes: path-based methods must refuse it.
    chain_of_sparse_layers = False

    def __init__(
        self,
        vocabulary: int,
        context: int,
        width: int = 128,
        layers: int = 2,
        dropout: float = 0.0,
        heads: int | None = None,
        sparse_embeddings: bool = False,
    ) -> None:
        super().__init__()
        heads = default_heads(width) if heads is None else heads
        self.width, self.heads = width, heads
        if sparse_embeddings:  # the token and position tables join the sparse layers (see find_sparse_parameters)
            self.sparse_include = ("token.weight", "position.weight")
        self.token = nn.Embedding(vocabulary, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)
        self.dropout = nn.Dropout(dropout)
        self.architecture = [vocabulary, *([width] * layers), vocabulary]
        for module in self.modules():  # GPT-2's initialisation of the dense parts
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def density_groups(self) -> list[ConnectionGroup]:
        """Each block's connections, then each head's: its rows of the query, key and value projections and
        its columns of the output projection (the per-layer report shows the rest)."""
        groups = []
        size = self.width // self.heads
        layers = ("attention.query", "attention.key", "attention.value", "attention.output", "expand", "contract")
        for index in range(len(self.blocks)):
            prefix = f"blocks.{index}"
            groups.append(ConnectionGroup(prefix, tuple(LayerPart(f"{prefix}.{name}.weight") for name in layers)))
            for head in range(self.heads):
                start, stop = head * size, (head + 1) * size
                rows = (
                    LayerPart(f"{prefix}.attention.{name}.weight", 0, start, stop) for name in ("query", "key", "value")
                )
                columns = LayerPart(f"{prefix}.attention.output.weight", 1, start, stop)
                groups.append(ConnectionGroup(f"{prefix}.head{head}", (*rows, columns)))
        return groups

    def forward(self, codes: Tensor) -> Tensor:
        positions = torch.arange(codes.shape[1], device=codes.device)
        x = self.dropout(self.token(codes) + self.position(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
