"""The csr backend: a model's sparse ``nn.Linear`` layers become :class:`CsrLinear`, seen as :class:`CsrLayer`.

:func:`csr_twins` turns the masked :class:`~evosparse.topology.layer.Topology` the
:class:`~evosparse.Sparsifier` has just drawn into :class:`CsrLinear` layers holding the same active
positions and values (and the very same bias Parameter), without touching the model;
:func:`install_csr` then swaps them into the model and puts each layer's ``values`` in the optimizer's
param groups in place of the dense weight; :func:`squash_csr` turns them back into ``nn.Linear``.

:class:`CsrLayer` implements the :class:`~evosparse.topology.layer.SparseLayer` protocol over a
:class:`CsrLinear` without any dense out x in tensor: gradients at inactive positions come from the
layer's :class:`~evosparse.backends.csr_ops.GradientTap` (an SDDMM of the recorded input and output
gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from evosparse.backends import csr_topology
from evosparse.backends.csr_build import build_csr_layer
from evosparse.backends.csr_layer import CsrLinear, set_parameter_data
from evosparse.backends.csr_ops import GradientTap
from evosparse.errors import UsageError
from evosparse.topology.init import check_init_scheme, sparse_kaiming_draws
from evosparse.topology.layer import ActiveGradientHook, SparseLayer, Topology, no_gradient_message
from evosparse.topology.masks import MaskedLayer

#: The storage backends of sparse layers.
BACKENDS = ("masked", "csr")


class CsrLayer(SparseLayer):
    """A :class:`CsrLinear` as a sparse layer; ``optimizer`` (if any) is kept aligned with its values on rewiring.

    ``name`` is the qualified name of the dense weight the layer replaced (``"0.weight"``), so names
    and positions are those of the masked backend.
    """

    def __init__(
        self, name: str, module: CsrLinear, budget: int, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        self.name = name
        self._module = module
        self.budget = budget
        self.optimizer = optimizer

    # -- what it is -------------------------------------------------------------------------------

    @property
    def module(self) -> CsrLinear:
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
        return csr_topology.active_positions(self._module)

    def active_values(self) -> Tensor:
        return csr_topology.active_values(self._module)

    def contains(self, positions: Tensor) -> Tensor:
        return csr_topology.contains(self._module, positions)

    def rewire(self, prune: Tensor, grow: Tensor, grow_values: Tensor | float = 0.0) -> int:
        return csr_topology.rewire(self._module, prune, grow, grow_values, self.optimizer)

    def load_positions(self, positions: Tensor) -> None:
        """Check that the restored structure holds ``positions``: a csr layer carries its topology in the
        model's ``state_dict``, which must be loaded first."""
        if not torch.equal(self.active_positions().cpu(), positions.cpu().to(torch.int64)):
            raise UsageError(
                f"the saved topology of {self.name} differs from its csr layer's structure: load the model's "
                "state_dict before the sparsifier's"
            )

    def apply_mask(self) -> None:
        """Nothing to do: inactive connections are not stored."""

    @torch.no_grad()
    def initialise(self, scheme: str, generator: torch.Generator) -> None:
        """Sparse-Kaiming values taken from the same dense draw the masked backend makes (O(out · in) once)."""
        check_init_scheme(scheme)
        if scheme == "sparse_kaiming":
            draws = sparse_kaiming_draws(self, generator).reshape(-1)[self.active_positions().cpu()]
            set_parameter_data(self._module.values, draws.to(self.device, self.dtype))

    # -- gradients --------------------------------------------------------------------------------

    def install_hooks(self) -> None:
        """Nothing to install: gradients exist only at active connections."""

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
        """The gradient of ``values`` is exactly ∂L/∂w at the active connections, in their order."""

        def observe(values: Tensor) -> None:
            if values.grad is not None:
                hook(values.grad.detach())

        return self._module.values.register_post_accumulate_grad_hook(observe)

    # -- invariants -------------------------------------------------------------------------------

    def check_storage(self) -> None:
        csr_topology.check(self._module)


def csr_twins(topology: Topology, optimizer: torch.optim.Optimizer | None) -> Topology:
    """A :class:`CsrLayer` for every masked layer of ``topology``: same active positions, values copied.

    Nothing is put in place yet (see :func:`install_csr`): the model and the optimizer are untouched.
    Each twin shares the dense layer's bias Parameter.
    """
    masked = [layer for layer in topology.layers if isinstance(layer, MaskedLayer)]
    if len(masked) != len(topology.layers):
        raise UsageError("csr twins are made from the masked layers the Sparsifier has just drawn")
    check_convertible([(layer.name, layer.module, layer.attr) for layer in masked])
    if optimizer is not None and any(layer.weight in optimizer.state for layer in masked):
        raise UsageError("convert to csr before the first optimizer step (the optimizer already holds state)")
    _check_trained(optimizer, [(layer.name, layer.weight) for layer in masked])
    twins: list[SparseLayer] = []
    for layer in masked:
        linear = layer.module
        assert isinstance(linear, nn.Linear)  # checked just above
        csr = CsrLinear.from_dense(linear.weight, layer.mask)
        csr.bias = linear.bias
        twins.append(CsrLayer(layer.name, csr, layer.budget, optimizer))
    return Topology(twins)


def build_csr_direct(
    model: nn.Module,
    found: Sequence[tuple[str, nn.Module, str]],
    budgets: Sequence[int],
    init: str,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None,
) -> Topology:
    """A :class:`CsrLayer` drawn sparse directly for each (meta-device) linear layer of ``found``.

    See :mod:`evosparse.backends.csr_build`. Nothing is put in place yet (see :func:`install_csr`), but
    every other parameter of ``model`` must be real (a meta parameter outside the sparse layers is
    refused in one line).
    """
    check_convertible(found)
    _check_trained(optimizer, [(f"{name} or its bias", p) for name, linear, _ in found for p in linear.parameters()])
    replaced = {id(param) for _, linear, _ in found for param in linear.parameters()}
    leftover = next((n for n, p in model.named_parameters() if p.is_meta and id(p) not in replaced), None)
    if leftover is not None:
        raise UsageError(f"parameter {leftover} is on the meta device; only sparse nn.Linear layers are built there")
    layers: list[SparseLayer] = []
    for (name, linear, _), count in zip(found, budgets, strict=True):
        assert isinstance(linear, nn.Linear)  # checked just above
        layers.append(CsrLayer(name, build_csr_layer(linear, count, init, generator), count, optimizer))
    return Topology(layers)


def install_csr(
    model: nn.Module,
    found: Sequence[tuple[str, nn.Module, str]],
    topology: Topology,
    optimizer: torch.optim.Optimizer | None,
) -> None:
    """Put each csr layer of ``topology`` in place of the ``nn.Linear`` it was made for (``found``, in order).

    In ``model`` the module is replaced; in ``optimizer`` the dense weight is replaced by the new
    ``values`` in its param group (so learning rates, weight decay and other groups stay as the caller
    configured them), and so is the bias when the csr layer has a new one.
    """
    for (name, linear, _), layer in zip(found, topology.layers, strict=True):
        csr = layer.module
        if not isinstance(csr, CsrLinear) or not isinstance(linear, nn.Linear):
            raise UsageError(f"{name}: only csr layers made for an nn.Linear can be installed")
        replace_submodule(model, _module_name(name), csr)
        if optimizer is None:
            continue
        _replace_in_param_groups(optimizer, linear.weight, csr.values)
        if linear.bias is not None and csr.bias is not None and csr.bias is not linear.bias:
            _replace_in_param_groups(optimizer, linear.bias, csr.bias)


@torch.no_grad()
def squash_csr(model: nn.Module, topology: Topology, optimizer: torch.optim.Optimizer | None) -> None:
    """Replace every csr layer of ``topology`` in ``model`` by an ``nn.Linear`` holding its dense weight.

    The bias Parameter is carried over as is; in ``optimizer`` the ``values`` are replaced by the new
    dense weight (its optimizer state is dropped: it had one entry per connection).
    """
    for layer in topology.layers:
        csr = layer.module
        if not isinstance(csr, CsrLinear):
            raise UsageError(f"{layer.name} is not a csr layer")
        linear = nn.Linear(
            csr.in_features, csr.out_features, bias=False, device=csr.values.device, dtype=csr.values.dtype
        )
        linear.weight.copy_(csr.to_dense_weight())
        if csr.bias is not None:
            linear.bias = csr.bias
        replace_submodule(model, _module_name(layer.name), linear)
        if optimizer is not None:
            optimizer.state.pop(csr.values, None)
            _replace_in_param_groups(optimizer, csr.values, linear.weight)


def check_convertible(found: Sequence[tuple[str, nn.Module, str]]) -> None:
    """Raise a one-line UsageError unless every sparse parameter is the weight of an ``nn.Linear``."""
    for name, module, attr in found:
        if not isinstance(module, nn.Linear) or attr != "weight":
            kind = type(module).__name__
            raise UsageError(f"--backend csr supports nn.Linear weights only; {name} belongs to a {kind}")


#: Modules that read a child linear layer's weight instead of calling the layer: ``nn.MultiheadAttention``
#: hands ``out_proj.weight`` to a functional kernel. Such a child cannot become a :class:`CsrLinear`.
WEIGHT_READING_PARENTS: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)


def weight_read_by_parent(model: nn.Module, module_name: str) -> bool:
    """Whether the submodule ``module_name`` of ``model`` has a parent that reads its weight directly."""
    if not module_name:
        return False
    return isinstance(model.get_submodule(module_name.rpartition(".")[0]), WEIGHT_READING_PARENTS)


def check_replaceable(model: nn.Module, found: Sequence[tuple[str, nn.Module, str]]) -> None:
    """Raise a one-line UsageError for a sparse linear layer whose parent reads its weight (see
    :data:`WEIGHT_READING_PARENTS`): replaced by a csr layer, it would break its parent."""
    for name, _, _ in found:
        module_name = _module_name(name)
        if weight_read_by_parent(model, module_name):
            parent = type(model.get_submodule(module_name.rpartition(".")[0])).__name__
            raise UsageError(f"--backend csr cannot replace {name}: its {parent} reads the weight directly")


def _module_name(parameter_name: str) -> str:
    """The qualified name of the module owning ``parameter_name`` ("" for the root)."""
    return parameter_name.rpartition(".")[0]


def replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule called ``name`` (dotted, inside ``nn.Sequential`` too) of ``model`` to ``new``."""
    if not name:
        raise UsageError("--backend csr cannot replace the model itself; wrap the nn.Linear in a container")
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def _check_trained(optimizer: torch.optim.Optimizer | None, parameters: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Refuse, before anything is replaced, a parameter the csr backend swaps but the optimizer does not train."""
    if optimizer is None:
        return
    trained = {id(param) for group in optimizer.param_groups for param in group["params"]}
    missing = next((name for name, param in parameters if id(param) not in trained), None)
    if missing is not None:
        raise UsageError(f"the optimizer does not train {missing}, which --backend csr replaces; give it every weight")


def _replace_in_param_groups(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor) -> None:
    """Put ``new`` where ``old`` is in the optimizer's param groups (refuse if ``old`` is not there)."""
    for group in optimizer.param_groups:
        for index, param in enumerate(group["params"]):
            if param is old:
                group["params"][index] = new
                return
    raise UsageError("the optimizer does not train a weight that --backend csr converts")
