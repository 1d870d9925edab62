"""ResNet-18 in its CIFAR form (He et al. 2016), the conv net of the switcher and Path-Weight papers."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)


def _conv3x3(n_in: int, n_out: int, stride: int = 1) -> nn.Conv2d:
    """A size-preserving (at stride 1) 3×3 convolution without bias, since batch norm follows it."""
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers with a residual connection; a 1×1 conv–BN shortcut when the shape changes."""

    def __init__(self, n_in: int, n_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(n_in, n_out, stride)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = _conv3x3(n_out, n_out)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or n_in != n_out:
            self.shortcut = nn.Sequential(nn.Conv2d(n_in, n_out, 1, stride=stride, bias=False), nn.BatchNorm2d(n_out))

    def forward(self, x: Tensor) -> Tensor:
        """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), at the block's output width and resolution."""
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _stage(n_in: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` BasicBlocks of ``width`` channels; the first one changes width and (by ``stride``) resolution."""
    return nn.Sequential(BasicBlock(n_in, width, stride), *(BasicBlock(width, width, 1) for _ in range(blocks - 1)))


class ResNet18(nn.Module):
    """3×3 stem conv (no max-pool) → four stages of two BasicBlocks (64-128-256-512) → global average pool → linear.

    The ImageNet stem (7×7 stride 2 and a max-pool) would shrink a 32×32 image to 8×8 before the
    first stage; the CIFAR form keeps full resolution there. Convolutions start from Kaiming-normal
    weights (He et al. 2015, fan-out, for ReLU), the initialisation the switcher paper reports.
    """

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(in_channels, STAGE_WIDTHS[0]), nn.BatchNorm2d(STAGE_WIDTHS[0]), nn.ReLU())
        inputs = (STAGE_WIDTHS[0], *STAGE_WIDTHS[:-1])
        self.stages = nn.Sequential(
            *(
                _stage(n_in, width, blocks, stride=1 if index == 0 else 2)
                for index, (n_in, width, blocks) in enumerate(zip(inputs, STAGE_WIDTHS, BLOCKS_PER_STAGE))
            )
        )
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        self.architecture = [in_channels, *STAGE_WIDTHS, num_classes]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Images (batch, channels, height, width) → logits (batch, classes)."""
        features = self.stages(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(features, 1).flatten(1))


def resnet18_cifar(num_classes: int, in_channels: int = 3) -> ResNet18:
    """ResNet-18 for small (CIFAR-sized) images: about 11.17 million parameters with 10 classes."""
    return ResNet18(num_classes, in_channels)
