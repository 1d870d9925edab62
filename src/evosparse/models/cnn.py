"""The small conv net of the Adaptive Weight Sparsity paper (Table 1: CIFAR-10, "32-64-64, 3x3 filters")."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from evosparse.errors import UsageError


class SmallCNN(nn.Module):
    """Blocks of conv 3×3 (padding 1) → ReLU → max-pool 2, one per entry of ``channels``, then a linear classifier.

    The paper gives only "32-64-64, 3x3 filters". Its Table 1 lists a model's hidden widths (64-64-64
    for its MLP), so we read the three numbers as the channel counts of three conv layers and add no
    hidden fully connected layer (``fc_hidden`` adds some if wanted). Padding 1 keeps each
    convolution size-preserving so that the 2×2 pooling alone halves the map: 32 → 16 → 8 → 4, and
    the classifier sees 64·4·4 = 1,024 features on CIFAR (64·3·3 = 576 on 28×28 inputs).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        channels: Sequence[int] = (32, 64, 64),
        fc_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if not channels or any(c < 1 for c in [*channels, *fc_hidden]):
            raise UsageError(
                f"conv channels and hidden sizes must be positive, got {list(channels)} and {list(fc_hidden)}"
            )
        side = image_size // 2 ** len(channels)
        if side < 1:
            raise UsageError(
                f"{len(channels)} pooling stages need images of at least "
                f"{2 ** len(channels)}×{2 ** len(channels)} pixels, got {image_size}×{image_size}"
            )
        blocks: list[nn.Module] = []
        for n_in, n_out in zip([in_channels, *channels[:-1]], channels):
            blocks += [nn.Conv2d(n_in, n_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        widths = [channels[-1] * side * side, *fc_hidden, num_classes]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.classifier = nn.Sequential(*layers[:-1])  # drop the ReLU after the logits
        self.architecture = [in_channels, *channels, *widths]

    def forward(self, x: Tensor) -> Tensor:
        """Images (batch, channels, side, side) → logits (batch, classes)."""
        return self.classifier(self.features(x).flatten(1))
