"""The csr backend, and what every sparse-linear backend shares: a model's sparse ``nn.Linear`` layers become
:class:`~evosparse.backends.csr_layer.SparseLinear` modules (:class:`CsrLinear` here), seen as sparse layers.

:func:`linear_twins` turns the masked :class:`~evosparse.topology.layer.Topology` the
:class:`~evosparse.Sparsifier` has just drawn into sparse linear layers of a backend holding the same
active positions and values (and the very same bias Parameter), without touching the model;
:func:`install_linears` then swaps them into the model and puts each layer's ``values`` in the optimizer's
param groups in place of the dense weight; :func:`squash_linears` turns them back into ``nn.Linear``.

:class:`SparseLinearLayer` implements the :class:`~evosparse.topology.layer.SparseLayer` protocol over any
:class:`SparseLinear` without a dense out x in tensor, but for the rewiring and the storage check that
each layout has: :class:`CsrLayer` here, :class:`~evosparse.backends.condensed_model.CondensedLayer` for the
condensed layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from evosparse.backends import csr_topology
from evosparse.backends.csr_build import build_csr_layer
from evosparse.backends.csr_layer import CsrLinear, SparseLinear
from evosparse.backends.csr_ops import GradientTap
from evosparse.errors import UsageError
from evosparse.topology.init import check_init_scheme, sparse_kaiming_draws
from evosparse.topology.layer import ActiveGradientHook, SparseLayer, Topology, no_gradient_message
from evosparse.topology.masks import MaskedLayer, weight_read_by_parent
from evosparse.topology.positions import is_member

ModuleT = TypeVar("ModuleT", bound=SparseLinear)

#: Makes a backend's sparse layer (name, module, budget, optimizer) from a masked layer's weight and mask.
LinearFactory = Callable[[MaskedLayer, torch.optim.Optimizer | None], SparseLayer]


class SparseLinearLayer(SparseLayer, Generic[ModuleT]):
    """A :class:`SparseLinear` module as a sparse layer: everything but the rewiring and the storage check,
    which each layout implements (:class:`CsrLayer`, :class:`~evosparse.backends.condensed_model.CondensedLayer`).

    ``optimizer`` (if any) is kept aligned with the module's values on rewiring; ``name`` is the qualified
    name of the dense weight the layer replaced (``"0.weight"``), so names and positions are those of the
    masked backend. Gradients at inactive positions come from the module's
    :class:`~evosparse.backends.csr_ops.GradientTap` (an SDDMM of the recorded input and output gradient).
    """

    #: How the backend is called in messages ("csr", "condensed").
    backend: str

    def __init__(self, name: str, module: ModuleT, budget: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.name = name
        self._module = module
        self.budget = budget
        self.optimizer = optimizer

    # -- what it is -------------------------------------------------------------------------------

    @property
    def module(self) -> ModuleT:
        return self._module

    @property
    def shape(self) -> tuple[int, int]:
        return self._module.shape

    @property
    def device(self) -> torch.device:
        return self._module.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self._module.values.dtype

    @property
    def is_linear(self) -> bool:
        return True

    @property
    def active(self) -> int:
        return self._module.nnz

    # -- topology ---------------------------------------------------------------------------------

    def active_positions(self) -> Tensor:
        return self._module.positions()

    def active_values(self) -> Tensor:
        return self._module.active_values()

    def contains(self, positions: Tensor) -> Tensor:
        """Binary search in the sorted active positions."""
        keys = self._module.positions()
        return is_member(keys, positions.to(keys.device, torch.int64))

    def load_positions(self, positions: Tensor) -> None:
        """Check that the restored structure holds ``positions``: the layer carries its topology in the
        model's ``state_dict``, which must be loaded first."""
        if not torch.equal(self.active_positions().cpu(), positions.cpu().to(torch.int64)):
            raise UsageError(
                f"the saved topology of {self.name} differs from its {self.backend} layer's structure: load the "
                "model's state_dict before the sparsifier's"
            )

    @torch.no_grad()
    def initialise(self, scheme: str, generator: torch.Generator) -> None:
        """Sparse-Kaiming values taken from the same dense draw the masked backend makes (O(out · in) once)."""
        check_init_scheme(scheme)
        if scheme == "sparse_kaiming":
            draws = sparse_kaiming_draws(self, generator).reshape(-1)[self.active_positions().cpu()]
            self._module.set_active_values(draws)

    # -- gradients --------------------------------------------------------------------------------

    def install_hooks(self) -> None:
        """Nothing to install: gradients exist only where the module stores values."""

    def remove_hooks(self) -> None:
        """Nothing to remove."""

    def record_gradients(self, enabled: bool) -> None:
        if not enabled:
            self._module.tap = None
        elif self._module.tap is None:
            self._module.tap = GradientTap()

    def gradient_at(self, positions: Tensor) -> Tensor:
        tap = self._module.tap
        if tap is None or not tap.recorded:
            raise UsageError(no_gradient_message(self.name))
        positions = positions.to(self.device, torch.int64)
        in_features = self.shape[1]
        return tap.gradient_at(torch.div(positions, in_features, rounding_mode="floor"), positions % in_features)

    def forget_gradients(self) -> None:
        if self._module.tap is not None:
            self._module.tap.clear()

    def register_gradient_hook(self, hook: ActiveGradientHook) -> RemovableHandle:
        """The gradient of ``values`` at the active connections is exactly ∂L/∂w there, in their order."""
        module = self._module

        def observe(values: Tensor) -> None:
            if values.grad is not None:
                hook(module.active_gradient(values.grad.detach()))

        return module.values.register_post_accumulate_grad_hook(observe)


class CsrLayer(SparseLinearLayer[CsrLinear]):
    """A :class:`CsrLinear` as a sparse layer, without any dense out x in tensor."""

    backend = "csr"

    def rewire(self, prune: Tensor, grow: Tensor, grow_values: Tensor | float = 0.0) -> int:
        return csr_topology.rewire(self.module, prune, grow, grow_values, self.optimizer)

    def apply_mask(self) -> None:
        """Nothing to do: inactive connections are not stored."""

    def check_storage(self) -> None:
        csr_topology.check(self.module)


def twin_factory(
    layer_type: Callable[[str, Any, int, torch.optim.Optimizer | None], SparseLayer],
    from_dense: Callable[[Tensor, Tensor], SparseLinear],
) -> LinearFactory:
    """The :data:`LinearFactory` of a layout: a masked ``nn.Linear`` layer becomes ``layer_type`` over the module
    ``from_dense(weight, mask)`` makes (values copied; the bias Parameter shared)."""

    def twin(layer: MaskedLayer, optimizer: torch.optim.Optimizer | None) -> SparseLayer:
        linear = layer.module
        assert isinstance(linear, nn.Linear)  # checked by linear_twins
        module = from_dense(linear.weight, layer.mask)
        module.bias = linear.bias
        return layer_type(layer.name, module, layer.budget, optimizer)

    return twin


#: Masked ``nn.Linear`` layers to csr layers.
csr_layer_of = twin_factory(CsrLayer, CsrLinear.from_dense)


def linear_twins(
    topology: Topology, optimizer: torch.optim.Optimizer | None, backend: str, make: LinearFactory
) -> Topology:
    """A sparse layer of ``backend``, made by ``make``, for every masked layer of ``topology``: same active
    positions, values copied.

    Nothing is put in place yet (see :func:`install_linears`): the model and the optimizer are untouched.
    Each twin shares the dense layer's bias Parameter.
    """
    masked = [layer for layer in topology.layers if isinstance(layer, MaskedLayer)]
    if len(masked) != len(topology.layers):
        raise UsageError(f"{backend} twins are made from the masked layers the Sparsifier has just drawn")
    check_convertible([(layer.name, layer.module, layer.attr) for layer in masked], backend)
    if optimizer is not None and any(layer.weight in optimizer.state for layer in masked):
        raise UsageError(f"convert to {backend} before the first optimizer step (the optimizer already holds state)")
    _check_trained(optimizer, [(layer.name, layer.weight) for layer in masked], backend)
    return Topology([make(layer, optimizer) for layer in masked])


def build_csr_direct(
    model: nn.Module,
    found: Sequence[tuple[str, nn.Module, str]],
    budgets: Sequence[int],
    init: str,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None,
    constant_fan_in: bool = False,
) -> Topology:
    """A :class:`CsrLayer` drawn sparse directly for each (meta-device) linear layer of ``found`` (with a
    constant fan-in if asked).

    See :mod:`evosparse.backends.csr_build`. Nothing is put in place yet (see :func:`install_linears`), but
    every other parameter of ``model`` must be real (a meta parameter outside the sparse layers is
    refused in one line).
    """
    check_convertible(found, "csr")
    parameters = [(f"{name} or its bias", p) for name, linear, _ in found for p in linear.parameters()]
    _check_trained(optimizer, parameters, "csr")
    replaced = {id(param) for _, linear, _ in found for param in linear.parameters()}
    leftover = next((n for n, p in model.named_parameters() if p.is_meta and id(p) not in replaced), None)
    if leftover is not None:
        raise UsageError(f"parameter {leftover} is on the meta device; only sparse nn.Linear layers are built there")
    layers: list[SparseLayer] = []
    for (name, linear, _), count in zip(found, budgets, strict=True):
        assert isinstance(linear, nn.Linear)  # checked just above
        layers.append(
            CsrLayer(name, build_csr_layer(linear, count, init, generator, constant_fan_in), count, optimizer)
        )
    return Topology(layers)


def install_linears(
    model: nn.Module,
    found: Sequence[tuple[str, nn.Module, str]],
    topology: Topology,
    optimizer: torch.optim.Optimizer | None,
) -> None:
    """Put each sparse linear layer of ``topology`` in place of the ``nn.Linear`` it was made for (``found``,
    in order).

    In ``model`` the module is replaced; in ``optimizer`` the dense weight is replaced by the new
    ``values`` in its param group (so learning rates, weight decay and other groups stay as the caller
    configured them), and so is the bias when the sparse layer has a new one.
    """
    for (name, linear, _), layer in zip(found, topology.layers, strict=True):
        sparse = layer.module
        if not isinstance(sparse, SparseLinear) or not isinstance(linear, nn.Linear):
            raise UsageError(f"{name}: only sparse linear layers made for an nn.Linear can be installed")
        replace_submodule(model, _module_name(name), sparse)
        if optimizer is None:
            continue
        _replace_in_param_groups(optimizer, linear.weight, sparse.values)
        if linear.bias is not None and sparse.bias is not None and sparse.bias is not linear.bias:
            _replace_in_param_groups(optimizer, linear.bias, sparse.bias)


@torch.no_grad()
def squash_linears(model: nn.Module, topology: Topology, optimizer: torch.optim.Optimizer | None) -> None:
    """Replace every sparse linear layer of ``topology`` in ``model`` by an ``nn.Linear`` holding its dense weight.

    The bias Parameter is carried over as is; in ``optimizer`` the ``values`` are replaced by the new
    dense weight (its optimizer state is dropped: it was laid out like the values).
    """
    for layer in topology.layers:
        sparse = layer.module
        if not isinstance(sparse, SparseLinear):
            raise UsageError(f"{layer.name} is not a sparse linear layer")
        linear = nn.Linear(
            sparse.in_features, sparse.out_features, bias=False, device=sparse.values.device, dtype=sparse.values.dtype
        )
        linear.weight.copy_(sparse.to_dense_weight())
        if sparse.bias is not None:
            linear.bias = sparse.bias
        replace_submodule(model, _module_name(layer.name), linear)
        if optimizer is not None:
            optimizer.state.pop(sparse.values, None)
            _replace_in_param_groups(optimizer, sparse.values, linear.weight)


def check_convertible(found: Sequence[tuple[str, nn.Module, str]], backend: str) -> None:
    """Raise a one-line UsageError unless every sparse parameter is the weight of an ``nn.Linear``."""
    for name, module, attr in found:
        if not isinstance(module, nn.Linear) or attr != "weight":
            kind = type(module).__name__
            raise UsageError(f"--backend {backend} supports nn.Linear weights only; {name} belongs to a {kind}")


def check_replaceable(model: nn.Module, found: Sequence[tuple[str, nn.Module, str]], backend: str) -> None:
    """Raise a one-line UsageError for a sparse linear layer whose parent reads its weight (see
    :data:`~evosparse.topology.masks.WEIGHT_READING_PARENTS`): replaced by a sparse linear module, it would
    break its parent."""
    for name, _, _ in found:
        module_name = _module_name(name)
        if weight_read_by_parent(model, module_name):
            parent = type(model.get_submodule(module_name.rpartition(".")[0])).__name__
            raise UsageError(
                f"--backend {backend} cannot replace {name}: its {parent} reads the weight directly "
                f"(exclude=[{name!r}] keeps it dense, or use --backend masked)"
            )


def _module_name(parameter_name: str) -> str:
    """The qualified name of the module owning ``parameter_name`` ("" for the root)."""
    return parameter_name.rpartition(".")[0]


def replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule called ``name`` (dotted, inside ``nn.Sequential`` too) of ``model`` to ``new``."""
    if not name:
        raise UsageError("a sparse backend cannot replace the model itself; wrap the nn.Linear in a container")
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def _check_trained(
    optimizer: torch.optim.Optimizer | None, parameters: Sequence[tuple[str, torch.Tensor]], backend: str
) -> None:
    """Refuse, before anything is replaced, a parameter the backend swaps but the optimizer does not train."""
    if optimizer is None:
        return
    trained = {id(param) for group in optimizer.param_groups for param in group["params"]}
    missing = next((name for name, param in parameters if id(param) not in trained), None)
    if missing is not None:
        raise UsageError(
            f"the optimizer does not train {missing}, which --backend {backend} replaces; give it every weight"
        )


def _replace_in_param_groups(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor) -> None:
    """Put ``new`` where ``old`` is in the optimizer's param groups (refuse if ``old`` is not there)."""
    for group in optimizer.param_groups:
        for index, param in enumerate(group["params"]):
            if param is old:
                group["params"][index] = new
                return
    raise UsageError("the optimizer does not train a weight that a sparse backend converts")
