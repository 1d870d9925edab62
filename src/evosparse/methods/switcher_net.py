"""The switcher network of SNN–TNN (Han et al., "Explore the knowledge contained in network weights to
obtain sparse neural networks"): a small U-Net-like CNN that reads one weight matrix and outputs gates.

This module holds only the network; the training method that uses it is ``methods/switcher.py``.
(The method registry imports every module of this package; this one registers nothing.)

The weight matrix W (out, in) of a linear layer is read as a one-channel image of height ``in`` and
width ``out``: row i of the image holds the outgoing weights of input neuron i. Heights are never
pooled, so every input neuron keeps its own row through the network, which is what neuron mode needs
(one gate per input neuron); widths are halved by the encoder's max-pools and restored by the decoder.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from evosparse.errors import UsageError

MODES = ("connection", "neuron")
#: How the output convolution starts: every gate near 1 (ours) or Kaiming-normal like every other
#: weight (the paper's Algorithm), see ``SwitcherNet.reset_parameters``.
GATE_INITS = ("one", "kaiming")

#: Scale of the output convolution's initial weights relative to Kaiming-normal (see reset_parameters).
HEAD_INIT_SCALE = 0.01


def level_widths(width: int, depth: int) -> list[int]:
    """Image widths at the encoder levels: halved (rounding up) per level, at most ``depth`` levels.

    Pooling stops once the width is 1, so a matrix with few outputs simply gets a shallower encoder.
    """
    widths = [width]
    while len(widths) < depth and widths[-1] > 1:
        widths.append(math.ceil(widths[-1] / 2))
    return widths


def weight_image(weight: torch.Tensor) -> torch.Tensor:
    """Wᵀ as a (1, 1, in, out) channels-last image, divided by the RMS of W's non-zero entries.

    The scale of a layer's weights depends on its fan-in (and changes as connections are pruned);
    dividing by the RMS lets one switcher design, and one learning rate, read every layer.
    """
    weight = weight.detach()
    nonzero = torch.count_nonzero(weight).clamp_min(1)
    rms = (weight.pow(2).sum() / nonzero).sqrt().clamp_min(torch.finfo(weight.dtype).tiny)
    return (weight.t() / rms)[None, None].contiguous(memory_format=torch.channels_last)


def full_row_conv(features: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(features)`` for a kernel as wide as the (channels-last) feature map, as one matrix product.

    Both compute the same (1, C_out, H, 1) map, but PyTorch's CPU convolution backward is about 50×
    slower than the matrix product for such wide kernels (measured on 784×300: 70 ms vs 1 ms).
    """
    _, channels, height, width = features.shape
    rows = features.permute(0, 2, 3, 1).reshape(height, width * channels)
    kernel = conv.weight.permute(0, 3, 1, 2).reshape(conv.out_channels, width * channels)
    return F.linear(rows, kernel, conv.bias).t()[None, :, :, None]


def pointwise_conv(features: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1×1 convolution as a matrix product over the channels; returns (1, H, W, C_out), channels last.

    Same values as ``conv(features)``; PyTorch's CPU backward of a 1×1 convolution with one output
    channel takes a slow path (2–4× slower on a 784×300 map, measured).
    """
    return F.linear(features.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)


class SwitcherNet(nn.Module):
    """Gates for one (out, in) weight matrix: Z shaped like W (connection) or one per input neuron.

    Encoder: ``depth`` blocks of k×k convolution – ReLU – max-pool over the width (the last block has
    no pool). Decoder, from the deepest features up: the running feature map is upsampled to the width
    of the next shallower level (nearest neighbour, channels unchanged) and the encoder features of
    that level, transformed by a *row convolution* (a convolution along the width only), are added,
    followed by ReLU. In neuron mode every row convolution spans the whole width of its level, which
    maps the features to width 1, so the decoder stays at width 1 (one value per input neuron) and
    needs no upsampling. A 1×1 convolution and a ReLU give the gates: 0 prunes, <1 weakens, >1
    strengthens (Han et al., section 3.2).

    Every full-resolution operation costs about as much as a layer's forward pass on CPU, so the
    decoder has no convolutions besides the row convolutions: see ``bench/switcher_cost.py``.
    """

    def __init__(
        self,
        out_features: int,
        in_features: int,
        mode: str = "connection",
        *,
        channels: int = 4,
        depth: int = 3,
        kernel: int = 3,
        gate_init: str = "one",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise UsageError(f"switcher mode must be one of {', '.join(MODES)}, got {mode!r}")
        if gate_init not in GATE_INITS:
            raise UsageError(f"switcher gate_init must be one of {', '.join(GATE_INITS)}, got {gate_init!r}")
        if min(out_features, in_features, channels, depth) < 1 or kernel < 1 or kernel % 2 == 0:
            raise UsageError(
                "switcher sizes must be positive and its kernel odd, got "
                f"{out_features}x{in_features}, channels={channels}, depth={depth}, kernel={kernel}"
            )
        self.mode = mode
        self.gate_init = gate_init
        self.shape = (out_features, in_features)
        self.widths = level_widths(out_features, depth)
        pad = kernel // 2
        self.encoder = nn.ModuleList(
            nn.Conv2d(1 if level == 0 else channels, channels, kernel, padding=pad) for level in range(len(self.widths))
        )
        if mode == "connection":
            rows = [nn.Conv2d(channels, channels, (1, kernel), padding=(0, pad)) for _ in self.widths[:-1]]
        else:
            rows = [nn.Conv2d(channels, channels, (1, width)) for width in self.widths]
        self.rows = nn.ModuleList(rows)
        self.head = nn.Conv2d(channels, 1, 1)
        self.reset_parameters(generator)
        for parameter in self.parameters():  # channels-last convolution weights, as Module.to(memory_format=...)
            if parameter.dim() == 4:
                parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-normal weights and zero biases (the paper's init); with ``gate_init="one"`` every gate
        starts near 1.

        ``"one"`` gives the output convolution bias 1 and Kaiming weights scaled by ``HEAD_INIT_SCALE``, so
        the first forward pass is (to about 1%) the dense task network's, while the gates still differ, so
        that a budget does not keep a block of tied gates. With a plain Kaiming output layer
        (``"kaiming"``, the paper's) the first gates follow the weights they read (e.g. large where W is
        large and positive), many start at 0, W⊙Z is no longer centred, and the first losses on digits
        were 12–67, after which whole layers were switched off for good (measured).
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                draws = torch.empty(module.weight.shape, dtype=module.weight.dtype)
                nn.init.kaiming_normal_(draws, nonlinearity="relu", generator=generator)
                module.weight.copy_(draws)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.gate_init == "kaiming":
            return
        self.head.weight.mul_(HEAD_INIT_SCALE)
        assert self.head.bias is not None  # built with a bias
        nn.init.ones_(self.head.bias)

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Features of every encoder level, shallowest first."""
        features = []
        hidden = image
        for level, conv in enumerate(self.encoder):
            if level:
                hidden = F.max_pool2d(hidden, (1, 2), ceil_mode=True)
            hidden = F.relu(conv(hidden))
            features.append(hidden)
        return features

    def row_conv(self, level: int) -> nn.Conv2d:
        """The row convolution that transforms the skip connection of encoder ``level``."""
        conv = self.rows[level]
        assert isinstance(conv, nn.Conv2d)  # built as one
        return conv

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The decoder path, ending at the shallowest level's width (1 in neuron mode)."""
        if self.mode == "neuron":
            decoded = full_row_conv(features[-1], self.row_conv(-1))
            for level in reversed(range(len(features) - 1)):
                decoded = F.relu(decoded + full_row_conv(features[level], self.row_conv(level)))
            return decoded
        decoded = features[-1]
        for level in reversed(range(len(features) - 1)):
            skip = features[level]
            decoded = F.interpolate(decoded, size=skip.shape[-2:], mode="nearest")
            decoded = F.relu(decoded + self.rows[level](skip))
        return decoded

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Gates for ``weight`` (out, in): shaped (out, in) in connection mode, (in,) in neuron mode."""
        if tuple(weight.shape) != self.shape:
            raise UsageError(f"this switcher reads {self.shape} matrices, got {tuple(weight.shape)}")
        gates = F.relu(pointwise_conv(self.decode(self.encode(weight_image(weight))), self.head))[0, :, :, 0]
        return gates[:, 0] if self.mode == "neuron" else gates.t().contiguous()
