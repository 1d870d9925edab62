"""Test helpers: the same sparse linear layer on the masked backend and on the csr and condensed backends."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from evosparse.backends.condensed_layer import CondensedLinear
from evosparse.backends.condensed_model import CondensedLayer
from evosparse.backends.csr_layer import CsrLinear
from evosparse.backends.csr_model import CsrLayer
from evosparse.topology.layer import SparseLayer, Topology
from evosparse.topology.masks import MaskedLayer

F64 = torch.float64

#: The storage backends every protocol test runs on.
BACKEND_NAMES = ("masked", "csr", "condensed")


def random_mask(out_features: int, in_features: int, density: float, generator: torch.Generator) -> torch.Tensor:
    """A boolean (out, in) mask with about ``density`` of its entries set."""
    return torch.rand(out_features, in_features, generator=generator) < density


def masked_linear(
    in_features: int,
    out_features: int,
    density: float,
    seed: int,
    dtype: torch.dtype = F64,
    bias: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[nn.Linear, torch.Tensor]:
    """An ``nn.Linear`` with random weights and bias, zero outside a random mask; returns (linear, mask).

    The draws are made on the CPU, so every device gets the same layer.
    """
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    mask = random_mask(out_features, in_features, density, generator)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=generator, dtype=dtype) * mask)
        if bias:
            linear.bias.copy_(torch.randn(out_features, generator=generator, dtype=dtype))
    return linear.to(device), mask.to(device)


def masked_topology(
    modules: Sequence[nn.Linear], masks: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer | None
) -> Topology:
    """The masked backend over ``modules``: a Topology owning copies of ``masks``, gradient hooks installed."""
    layers = [
        MaskedLayer(f"layer{index}", module, "weight", mask.clone(), int(mask.sum()), optimizer)
        for index, (module, mask) in enumerate(zip(modules, masks))
    ]
    for layer in layers:
        layer.install_hooks()
    topology = Topology(layers)
    topology.apply_masks()
    return topology


def layer_on(
    backend: str, linear: nn.Linear, mask: torch.Tensor, optimizer_factory=None, name: str = "layer0"
) -> SparseLayer:
    """``linear`` (zero off ``mask``) as a :class:`SparseLayer` of ``backend``, with its own optimizer if asked.

    The masked layer works on ``linear`` itself; the csr and condensed layers on a copy of it.
    ``optimizer_factory(parameters)`` builds the optimizer over the layer's trainable parameters.
    """
    if backend == "masked":
        optimizer = optimizer_factory(linear.parameters()) if optimizer_factory else None
        layer: SparseLayer = MaskedLayer(name, linear, "weight", mask.clone(), int(mask.sum()), optimizer)
    elif backend == "csr":
        csr = CsrLinear.from_linear(linear, mask)
        optimizer = optimizer_factory(csr.parameters()) if optimizer_factory else None
        layer = CsrLayer(name, csr, int(mask.sum()), optimizer)
    else:
        condensed = CondensedLinear.from_dense(linear.weight, mask, linear.bias)
        optimizer = optimizer_factory(condensed.parameters()) if optimizer_factory else None
        layer = CondensedLayer(name, condensed, int(mask.sum()), optimizer)
    layer.install_hooks()
    layer.apply_mask()
    return layer


def twin_layers(
    in_features: int,
    out_features: int,
    density: float,
    seed: int,
    optimizer_factory=None,
    device="cpu",
    backend: str = "csr",
) -> tuple[MaskedLayer, CsrLayer | CondensedLayer]:
    """A masked layer and a layer of ``backend`` (csr or condensed) of the same random linear layer (each with
    its own optimizer if asked)."""
    linear, mask = masked_linear(in_features, out_features, density, seed, device=device)
    sparse = layer_on(backend, linear, mask, optimizer_factory)
    masked = layer_on("masked", linear, mask, optimizer_factory)
    assert isinstance(masked, MaskedLayer) and isinstance(sparse, CsrLayer | CondensedLayer)
    return masked, sparse


def dense_weight(layer: SparseLayer) -> torch.Tensor:
    """The layer's weight as a dense (out, in) tensor, zeros at inactive positions (tests only)."""
    flat = torch.zeros(layer.numel, dtype=layer.dtype, device=layer.device)
    flat[layer.active_positions()] = layer.active_values()
    return flat.view(layer.shape)


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


def method_on(
    name: str, layers: Sequence[SparseLayer], generator: torch.Generator, total_steps: int | None = None, **params
):
    """The registered method ``name`` driving ``layers`` directly (no Sparsifier), drawing from ``generator``;
    ``total_steps`` is the training length its clock announces."""
    from evosparse.methods import get_method, resolve_params
    from evosparse.methods.context import Clock, MethodContext
    from evosparse.topology.budget import BudgetPlan

    cls = get_method(name)
    plan = BudgetPlan(
        densities=tuple(layer.budget / layer.numel for layer in layers),
        budgets=tuple(layer.budget for layer in layers),
        initial=tuple(layer.active for layer in layers),
        density=sum(layer.budget for layer in layers) / sum(layer.numel for layer in layers),
    )
    context = MethodContext(
        layers=layers,
        hparams=resolve_params(cls, params),
        generator=generator,
        model=nn.ModuleList([layer.module for layer in layers]),
        optimizer=None,
        plan=plan,
        clock=Clock(total_steps=total_steps),
        update_pending=lambda: False,
    )
    return cls(context)
