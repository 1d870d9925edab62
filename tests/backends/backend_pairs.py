"""Test helpers: the same sparse linear layer on the masked backend and on the csr backend."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from evosparse.backends.csr_layer import CsrLinear
from evosparse.topology.masks import SparseLayer, Topology

F64 = torch.float64


def random_mask(out_features: int, in_features: int, density: float, generator: torch.Generator) -> torch.Tensor:
    """A boolean (out, in) mask with about ``density`` of its entries set."""
    return torch.rand(out_features, in_features, generator=generator) < density


def masked_linear(
    in_features: int, out_features: int, density: float, seed: int, dtype: torch.dtype = F64, bias: bool = True
) -> tuple[nn.Linear, torch.Tensor]:
    """An ``nn.Linear`` with random weights and bias, zero outside a random mask; returns (linear, mask)."""
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    mask = random_mask(out_features, in_features, density, generator)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=generator, dtype=dtype) * mask)
        if bias:
            linear.bias.copy_(torch.randn(out_features, generator=generator, dtype=dtype))
    return linear, mask


def masked_topology(
    modules: Sequence[nn.Linear], masks: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer | None
) -> Topology:
    """The masked backend over ``modules``: a Topology owning copies of ``masks``, gradient hooks installed."""
    layers = [
        SparseLayer(f"layer{index}", module, "weight", mask.clone(), int(mask.sum()))
        for index, (module, mask) in enumerate(zip(modules, masks))
    ]
    topology = Topology(layers, optimizer)
    topology.install_gradient_hooks()
    topology.apply_masks()
    return topology


def twin_mlp(
    sizes: Sequence[int], density: float, seed: int
) -> tuple[nn.Sequential, list[torch.Tensor], nn.Sequential]:
    """A ReLU MLP with masked ``nn.Linear`` layers, their masks, and the same network with :class:`CsrLinear` layers."""
    linears, masks = [], []
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear, mask = masked_linear(n_in, n_out, density, seed + index)
        linears.append(linear)
        masks.append(mask)
    masked = _relu_chain(linears)
    csr = _relu_chain([CsrLinear.from_linear(linear, mask) for linear, mask in zip(linears, masks)])
    return masked, masks, csr


def _relu_chain(layers: Sequence[nn.Module]) -> nn.Sequential:
    """layers[0], ReLU, layers[1], ReLU, ..., layers[-1]."""
    modules: list[nn.Module] = []
    for layer in layers:
        modules += [layer, nn.ReLU()]
    return nn.Sequential(*modules[:-1])
