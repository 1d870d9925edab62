"""Putting a model on the csr backend: its sparse ``nn.Linear`` layers become :class:`CsrLinear`.

:func:`convert_to_csr` takes the masked :class:`~evosparse.topology.masks.Topology` the
:class:`~evosparse.Sparsifier` has just built and initialised, swaps every sparse linear layer for
a :class:`CsrLinear` holding the same active positions and values (and the very same bias
Parameter), and puts each layer's ``values`` in the optimizer's param groups in place of the dense
weight. From then on :class:`CsrTopology` plays the role of the masked ``Topology`` (counts,
invariant checks, persistence) without any dense out x in tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from evosparse.backends import csr_topology
from evosparse.backends.csr_build import build_csr_layer
from evosparse.backends.csr_layer import CsrLinear
from evosparse.errors import UsageError
from evosparse.topology.masks import LayerCounts, SparseLayer, Topology

if TYPE_CHECKING:
    from evosparse.methods.base import Method


#: The storage backends of sparse layers.
BACKENDS = ("masked", "csr")


def check_backend(method_cls: type[Method], backend: str) -> None:
    """Refuse an unknown backend, or csr for a method that has no csr implementation, in one line."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "csr" and not method_cls.sparse:
        raise UsageError(f"method {method_cls.name} trains dense weights; --backend csr needs a sparse method")
    if backend == "csr" and not method_cls.supports_csr:
        raise UsageError(
            f"method {method_cls.name} has no csr implementation yet (it reads the dense masks and weights of "
            "the masked backend); use --backend masked"
        )


@dataclass
class CsrSparseLayer:
    """One csr sparse layer: its name (the qualified weight name it replaces), module and budget."""

    name: str
    module: CsrLinear
    budget: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.module.shape

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def active(self) -> int:
        return self.module.nnz

    @property
    def fan_out_axis_size(self) -> int:
        return self.shape[0]


class CsrTopology(LayerCounts):
    """The csr counterpart of :class:`~evosparse.topology.masks.Topology` for the Sparsifier's bookkeeping.

    The structure lives in the :class:`CsrLinear` modules (and their ``state_dict``); there are no
    masks to apply and no gradients to mask, so those calls do nothing.
    """

    def __init__(self, layers: list[CsrSparseLayer], optimizer: torch.optim.Optimizer | None) -> None:
        self.layers = layers
        self.optimizer = optimizer

    def apply_masks(self) -> None:
        """Nothing to do: inactive connections are not stored."""

    def remove_hooks(self) -> None:
        """Nothing to do: the csr backend installs no gradient hooks."""

    def check(self, *, fixed_budget: bool = True) -> None:
        """Assert each layer's CSR invariants and, for fixed-budget methods, its exact budget."""
        for layer in self.layers:
            csr_topology.check(layer.module)
            if fixed_budget:
                assert layer.active == layer.budget, f"{layer.name}: {layer.active} active != budget {layer.budget}"

    def state_dict(self) -> dict[str, int]:
        """Budgets by layer name (the structure itself is saved in the model's ``state_dict``)."""
        return {layer.name: layer.budget for layer in self.layers}

    def load_state_dict(self, budgets: Mapping[str, object]) -> None:
        """Check that the saved layers match and adopt the restored structures' counts as budgets."""
        names = sorted(layer.name for layer in self.layers)
        if sorted(budgets) != names:
            raise UsageError(f"saved csr layers {sorted(budgets)} do not match the model's {names}")
        for layer in self.layers:
            layer.budget = layer.active


def convert_to_csr(model: nn.Module, topology: Topology) -> CsrTopology:
    """Replace every layer of ``topology`` in ``model`` by a :class:`CsrLinear` with the same active weights.

    The bias Parameter is carried over as is; in ``topology.optimizer`` the dense weight is replaced
    by the new ``values`` in its param group (so learning rates, weight decay and other groups stay
    as the caller configured them). The optimizer must not hold state for the weights yet.
    """
    check_convertible([(layer.name, layer.module, layer.attr) for layer in topology.layers])
    optimizer = topology.optimizer
    if optimizer is not None and any(layer.weight in optimizer.state for layer in topology.layers):
        raise UsageError("convert to csr before the first optimizer step (the optimizer already holds state)")
    converted = [_convert_layer(model, layer, optimizer) for layer in topology.layers]
    return CsrTopology(converted, optimizer)


def build_csr_topology(
    model: nn.Module,
    found: Sequence[tuple[str, nn.Module, str]],
    budgets: Sequence[int],
    init: str,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None,
) -> CsrTopology:
    """Give each (meta-device) linear layer of ``found`` a :class:`CsrLinear` drawn sparse directly.

    See :mod:`evosparse.backends.csr_build`; weight and bias are replaced in ``model`` and in the
    optimizer's param groups. Every parameter of ``model`` must be real afterwards (a meta
    parameter outside the sparse layers is refused in one line).
    """
    layers = []
    for (name, linear, _), count in zip(found, budgets, strict=True):
        assert isinstance(linear, nn.Linear)
        csr = build_csr_layer(linear, count, init, generator)
        replace_submodule(model, _module_name(name), csr)
        if optimizer is not None:
            _replace_in_param_groups(optimizer, linear.weight, csr.values)
            if linear.bias is not None:
                assert csr.bias is not None
                _replace_in_param_groups(optimizer, linear.bias, csr.bias)
        layers.append(CsrSparseLayer(name, csr, count))
    leftover = next((name for name, param in model.named_parameters() if param.is_meta), None)
    if leftover is not None:
        raise UsageError(f"parameter {leftover} is on the meta device; only sparse nn.Linear layers are built there")
    return CsrTopology(layers, optimizer)


def check_convertible(found: Sequence[tuple[str, nn.Module, str]]) -> None:
    """Raise a one-line UsageError unless every sparse parameter is the weight of an ``nn.Linear``."""
    for name, module, attr in found:
        if not isinstance(module, nn.Linear) or attr != "weight":
            kind = type(module).__name__
            raise UsageError(f"--backend csr supports nn.Linear weights only; {name} belongs to a {kind}")


def _module_name(parameter_name: str) -> str:
    """The qualified name of the module owning ``parameter_name`` ("" for the root)."""
    return parameter_name.rpartition(".")[0]


def _convert_layer(model: nn.Module, layer: SparseLayer, optimizer: torch.optim.Optimizer | None) -> CsrSparseLayer:
    """Swap one masked linear layer for its csr twin in ``model`` and in ``optimizer``."""
    linear = layer.module
    assert isinstance(linear, nn.Linear)
    csr = CsrLinear.from_dense(linear.weight, layer.mask)
    csr.bias = linear.bias
    replace_submodule(model, _module_name(layer.name), csr)
    if optimizer is not None:
        _replace_in_param_groups(optimizer, linear.weight, csr.values)
    return CsrSparseLayer(layer.name, csr, layer.budget)


def replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule called ``name`` (dotted, inside ``nn.Sequential`` too) of ``model`` to ``new``."""
    if not name:
        raise UsageError("--backend csr cannot replace the model itself; wrap the nn.Linear in a container")
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def _replace_in_param_groups(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter) -> None:
    """Put ``new`` where ``old`` is in the optimizer's param groups (refuse if ``old`` is not there)."""
    for group in optimizer.param_groups:
        for index, param in enumerate(group["params"]):
            if param is old:
                group["params"][index] = new
                return
    raise UsageError("the optimizer does not train a weight that --backend csr converts")
