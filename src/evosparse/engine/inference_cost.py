"""Inference cost of a trained model: multiply-adds per sample, sparse and dense-equivalent (result.json's
``inference_macs``).

What is counted, exactly: one multiply-add per weight use in the forward pass of one sample, for every
``nn.Linear``, csr ``CsrLinear`` and ``nn.Conv1d/2d/3d`` — a linear layer uses each weight once per
input row (once per time step of a sequence), a convolution once per output position, so a layer costs
``weights × positions``. Sparse layers count their active weights, every other counted layer all of
its weights, and the dense-equivalent counts all weights of every counted layer. Biases, activations,
normalisation, pooling and recurrent cells (an LSTM's own weights, which evosparse may sparsify) are
not counted; sparse weights that live in an uncounted module are named in ``uncounted``. RigL's FLOPs
are ``2 ×`` these multiply-adds; the ratio ``relative`` is the same under either convention. The
positions are measured by one forward pass of a real sample with hooks, so they follow the model's
actual shapes (padding, strides, sequence length).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

#: Module types whose weights are counted (``CsrLinear`` is recognised by its linear interface).
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _per_position_weights(module: nn.Module) -> tuple[int, int] | None:
    """(weights used per output position, output channels) of a counted module, None for any other."""
    if isinstance(module, CONVOLUTIONS):
        return module.weight.numel(), module.out_channels
    in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if isinstance(in_features, int) and isinstance(out_features, int) and not list(module.children()):
        return in_features * out_features, out_features
    return None


@torch.no_grad()
def weight_uses(model: nn.Module, sample: torch.Tensor) -> dict[nn.Module, tuple[int, int]]:
    """Every counted module of ``model`` -> (its weights, how often one forward pass of ``sample`` — a batch
    of one — uses each of them), measured with hooks in eval mode, the run's random streams untouched."""
    positions: dict[nn.Module, int] = {}

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        _, channels = _per_position_weights(module) or (0, 1)
        positions[module] = positions.get(module, 0) + output.numel() // channels

    handles = [m.register_forward_hook(record) for m in model.modules() if _per_position_weights(m) is not None]
    was_training = model.training
    model.eval()
    cuda = [sample.device.index or 0] if sample.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):  # a VAE draws noise
            model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {module: ((_per_position_weights(module) or (0, 1))[0], count) for module, count in positions.items()}


def forward_macs(uses: Mapping[nn.Module, tuple[int, int]], active: Mapping[nn.Module, int]) -> tuple[int, int]:
    """(sparse, dense) multiply-adds of one forward pass: ``active[m]`` weights for each sparse module."""
    dense = sum(weights * count for weights, count in uses.values())
    sparse = sum(active.get(module, weights) * count for module, (weights, count) in uses.items())
    return sparse, dense


def inference_macs(model: nn.Module, sample: torch.Tensor, active: Mapping[nn.Module, int]) -> dict[str, Any]:
    """Multiply-adds of one forward pass of ``sample`` (a batch of one): ``sparse`` (with ``active[m]``
    weights for each sparse module ``m``), ``dense`` and ``relative`` = sparse / dense.

    ``active`` may name modules that are not counted (an LSTM); their names are listed in ``uncounted``.
    """
    names = {module: name for name, module in model.named_modules()}
    sparse, dense = forward_macs(weight_uses(model, sample), active)
    uncounted = sorted(names.get(m, "?") for m in active if _per_position_weights(m) is None)
    return {"sparse": sparse, "dense": dense, "relative": sparse / dense if dense else None, "uncounted": uncounted}
