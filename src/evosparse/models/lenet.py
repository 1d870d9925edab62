"""LeNet-5 as in Caffe's MNIST example, the "LeNet5-Caffe-20-50-800-500" of the switcher paper (Table 1)."""

from __future__ import annotations

from torch import Tensor, nn

from evosparse.errors import UsageError

CONV_CHANNELS = (20, 50)
KERNEL = 5
HIDDEN = 500


def _side_after_conv_and_pool(side: int) -> int:
    """Side of a square map after a 5×5 valid convolution and a 2×2 max-pool of stride 2."""
    return (side - KERNEL + 1) // 2


class LeNet5(nn.Module):
    """conv 5×5 (20) → max-pool 2 → conv 5×5 (50) → max-pool 2 → fc 500 → ReLU → fc classes.

    Caffe's layout: there is no ReLU after the convolutions (max-pooling is their only
    nonlinearity). On 1×28×28 inputs the flattened size is 50·4·4 = 800 and the model has
    431,080 parameters; on 3×32×32 it is 50·5·5 = 1,250. (The switcher paper's text speaks of three
    convolutional layers, but the network it names, 20-50-800-500, is Caffe's two-convolution LeNet.)
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        side = _side_after_conv_and_pool(_side_after_conv_and_pool(image_size))
        if side < 1:
            raise UsageError(f"LeNet-5 needs images of at least 14×14 pixels, got {image_size}×{image_size}")
        flat = CONV_CHANNELS[1] * side * side
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, CONV_CHANNELS[0], KERNEL),
            nn.MaxPool2d(2),
            nn.Conv2d(CONV_CHANNELS[0], CONV_CHANNELS[1], KERNEL),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(flat, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, num_classes))
        self.architecture = [in_channels, *CONV_CHANNELS, flat, HIDDEN, num_classes]

    def forward(self, x: Tensor) -> Tensor:
        """Images (batch, channels, side, side) → logits (batch, classes)."""
        return self.classifier(self.features(x).flatten(1))
