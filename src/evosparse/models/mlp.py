"""Multi-layer perceptron, the architecture of all four seed papers' MNIST experiments."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Linear layers with ReLU (and optional dropout) between them; inputs are flattened."""

    def __init__(self, input_size: int, hidden: Sequence[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        sizes = [input_size, *hidden, num_classes]
        blocks: list[nn.Module] = []
        for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            blocks.append(nn.Linear(n_in, n_out))
            if index < len(sizes) - 2:
                blocks.append(nn.ReLU())
                if dropout > 0:
                    blocks.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*blocks)
        self.architecture = sizes
        #: The output layer, which the training loop scales as a readout when it is wide
        #: (:mod:`evosparse.engine.wide_layers`).
        self.readout = f"layers.{len(blocks) - 1}"

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))
