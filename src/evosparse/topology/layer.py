"""The sparse-layer protocol: everything a method may know of, and do to, one sparse weight.

Both backends implement :class:`SparseLayer` — :class:`~evosparse.topology.masks.MaskedLayer` (a dense
weight times a boolean mask) and :class:`~evosparse.backends.csr_model.CsrLayer` (values + CSR indices) —
and a method is written once against it: it never learns which backend or device it runs on.

Conventions every implementation keeps:

* **Positions** are flat int64 indices into the weight in row-major order (``row · in + col`` for a
  linear layer), the same numbering on every backend, so two backends given the same topology and the
  same generator state choose the same connections.
* **Devices.** Every tensor a layer hands out lives on :attr:`SparseLayer.device`; every tensor it
  accepts may live anywhere and is moved there. Random draws take a CPU ``torch.Generator`` and are made
  on the CPU (then moved), so one seed gives one topology on CPU and CUDA alike.
* **Change** goes through :meth:`SparseLayer.rewire` only: prune ⊂ active, grow ⊂ inactive *before* the
  call (nothing pruned now is regrown now), no duplicates, optimizer state reset at every changed
  position. A violated precondition raises :class:`~evosparse.errors.InvariantError`.
* **Gradients.** A layer records ∂L/∂w of a backward pass when told to (:meth:`record_gradients`, armed by
  the Sparsifier before the steps a method needs) in whatever form its backend computes cheaply, and
  answers :meth:`gradient_at` any positions and :meth:`inactive_gradient_blocks` for all inactive ones;
  :meth:`register_gradient_hook` streams the gradient at the active connections after every backward.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from evosparse.errors import InvariantError, UsageError
from evosparse.topology.positions import complement, sample_absent, sample_absent_per_row
from evosparse.topology.source_sampling import free_per_source, source_weighted_sample

#: Called after every backward pass with ∂L/∂w at the active connections (aligned with ``active_positions``).
ActiveGradientHook = Callable[[Tensor], None]

#: Inactive positions scored per block by :meth:`SparseLayer.inactive_gradient_blocks` (about 8 MB).
BLOCK_POSITIONS = 1 << 20


def no_gradient_message(name: str) -> str:
    """What a layer says when a method asks for a gradient that no backward pass recorded."""
    return (
        f"no gradient of {name} was recorded for this topology update: gradient-driven updates must follow "
        "a backward pass and Sparsifier.step()"
    )


class SparseLayer(ABC):
    """One sparse weight of a model, whatever stores it (see the module docstring for the conventions).

    ``name`` is the qualified name of the weight it sparsifies (``"0.weight"``); ``budget`` the number of
    active connections a fixed-budget method must keep, updated by the methods that change it.
    """

    name: str
    budget: int
    #: The axis of the weight that indexes output units: 0 for PyTorch's layers ((out, in, ...)), 1 for a
    #: weight stored (in, out) such as ``transformers.pytorch_utils.Conv1D``'s. Random row covers, the
    #: sparse-Kaiming fan-in and per-unit logic read it; positions stay flat over the stored weight.
    output_axis: int = 0

    # -- what it is -------------------------------------------------------------------------------

    @property
    @abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Logical shape of the weight: (out, in) for a linear layer, (out, in, *kernel) for a convolution."""

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The module computing with this weight (hooks that read its input go here)."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the weight and everything the layer hands out live."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """Floating type of the weight's values."""

    @property
    @abstractmethod
    def is_linear(self) -> bool:
        """Whether this is the weight of a fully connected layer (input features x output features)."""

    @property
    @abstractmethod
    def active(self) -> int:
        """Number of active connections."""

    @property
    def numel(self) -> int:
        """Number of positions, active or not."""
        return math.prod(self.shape)

    @property
    def parameter_name(self) -> str:
        """Qualified name of the model parameter holding this weight: :attr:`name`, unless the weight is one
        matrix of a packed parameter (``"attn.in_proj_weight[key]"`` is part of ``"attn.in_proj_weight"``)."""
        return self.name

    @property
    def parameter_offset(self) -> int:
        """Flat position, in the parameter of :attr:`parameter_name`, of this weight's first entry."""
        return 0

    @property
    def fan_out_axis_size(self) -> int:
        """Number of output units (rows of a linear weight, output channels of a convolution)."""
        return self.shape[self.output_axis]

    @property
    def fan_in(self) -> int:
        """Number of positions per output unit: inputs of a linear unit, in_channels·kh·kw of a conv channel."""
        return self.numel // self.fan_out_axis_size

    def unit_of(self, positions: Tensor) -> Tensor:
        """The output unit (index along :attr:`output_axis`) of each flat position."""
        stride = math.prod(self.shape[self.output_axis + 1 :])
        return positions // stride % self.fan_out_axis_size

    # -- topology ---------------------------------------------------------------------------------

    @abstractmethod
    def active_positions(self) -> Tensor:
        """Sorted flat int64 positions of the active connections."""

    @abstractmethod
    def active_values(self) -> Tensor:
        """The active weights (detached), aligned with :meth:`active_positions`."""

    @abstractmethod
    def contains(self, positions: Tensor) -> Tensor:
        """Whether each flat position is active."""

    @abstractmethod
    def rewire(self, prune: Tensor, grow: Tensor, grow_values: Tensor | float = 0.0) -> int:
        """Deactivate ``prune``, activate ``grow`` with ``grow_values``; return the number of positions changed.

        Pruned weights and the optimizer state of every changed position are reset (see the module
        docstring for the preconditions).
        """

    def sample_inactive(self, count: int, generator: torch.Generator, exclude: Tensor | None = None) -> Tensor:
        """``count`` distinct inactive positions, uniform without replacement, none in ``exclude``.

        Drawn from the active positions alone (:func:`~evosparse.topology.positions.sample_absent`), so
        every backend draws the same positions from the same generator state.
        """
        present = self.active_positions().cpu()
        excluded = None if exclude is None else exclude.cpu()
        return sample_absent(present, self.numel, count, generator, excluded).to(self.device)

    def sample_inactive_per_unit(self, counts: Tensor, generator: torch.Generator) -> Tensor:
        """``counts[u]`` distinct inactive positions of each output unit u, uniform without replacement within
        the unit; sorted.

        Drawn on the CPU from the active positions alone
        (:func:`~evosparse.topology.positions.sample_absent_per_row` over the units' inputs), so every backend
        draws the same positions from the same generator state; O(drawing units · fan-in) time, O(block)
        memory. Raises a one-line UsageError when a unit has fewer inactive inputs than it should draw.
        """
        units, inputs = self.unit_input(self.active_positions().cpu())
        drawn = sample_absent_per_row(
            units * self.fan_in + inputs, self.fan_in, counts.cpu().to(torch.int64), generator, BLOCK_POSITIONS
        )
        units = torch.div(drawn, self.fan_in, rounding_mode="floor")
        return torch.sort(self.position_of(units, drawn - units * self.fan_in)).values.to(self.device)

    def unit_input(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(output unit, index among the unit's :attr:`fan_in` inputs) of each flat position.

        The inputs of a unit are numbered in increasing position order, so a weight stored (in, out)
        (``output_axis`` 1) numbers them like one stored (out, in)."""
        stride = math.prod(self.shape[self.output_axis + 1 :])
        outer = torch.div(positions, stride * self.fan_out_axis_size, rounding_mode="floor")
        return self.unit_of(positions), outer * stride + positions % stride

    def position_of(self, units: Tensor, inputs: Tensor) -> Tensor:
        """The flat position of input ``inputs`` of output unit ``units`` (the inverse of :meth:`unit_input`)."""
        stride = math.prod(self.shape[self.output_axis + 1 :])
        outer = torch.div(inputs, stride, rounding_mode="floor")
        return (outer * self.fan_out_axis_size + units) * stride + inputs % stride

    def sample_inactive_by_source(self, count: int, source_weights: Tensor, generator: torch.Generator) -> Tensor:
        """``count`` distinct inactive positions whose source (input unit or channel) is drawn ∝ ``source_weights``.

        See :func:`~evosparse.topology.source_sampling.source_weighted_sample`.
        """
        present = self.active_positions().cpu()
        return source_weighted_sample(present, self.shape, count, source_weights, generator).to(self.device)

    def free_per_source(self) -> Tensor:
        """Number of inactive positions of each source (int64, on :attr:`device`)."""
        return free_per_source(self.active_positions().cpu(), self.shape).to(self.device)

    @abstractmethod
    def load_positions(self, positions: Tensor) -> None:
        """Make ``positions`` the active ones as a checkpoint restores them: weights and optimizer state
        untouched (:meth:`apply_mask` zeroes the weights of inactive positions once the load succeeded)."""

    def adopt_positions(self, positions: Tensor) -> int:
        """Make ``positions`` the active ones by rewiring (new connections start at 0, optimizer state reset
        where connections change) and take their number as the budget; returns the number changed."""
        positions = positions.to(self.device, torch.int64)
        active = self.active_positions()
        prune = active[~torch.isin(active, positions)]
        grow = positions[~self.contains(positions)]
        changed = self.rewire(prune, grow, 0.0)
        self.budget = int(positions.numel())
        return changed

    @abstractmethod
    def apply_mask(self) -> None:
        """Zero the weights of inactive positions wherever the backend stores them (after each optimizer step)."""

    @abstractmethod
    def initialise(self, scheme: str, generator: torch.Generator) -> None:
        """Re-draw the active weights with ``scheme`` (see :data:`~evosparse.topology.init.INIT_SCHEMES`)."""

    # -- gradients --------------------------------------------------------------------------------

    @abstractmethod
    def install_hooks(self) -> None:
        """Install what the backend needs while training (the masked backend masks gradients); idempotent."""

    @abstractmethod
    def remove_hooks(self) -> None:
        """Undo :meth:`install_hooks`."""

    @abstractmethod
    def record_gradients(self, enabled: bool) -> None:
        """Record (or stop recording and forget) the gradient of the coming backward passes."""

    @abstractmethod
    def gradient_at(self, positions: Tensor) -> Tensor:
        """∂L/∂w at flat ``positions`` (active or not) from the last recorded backward pass.

        With gradient accumulation (several backward passes per optimizer step) both backends give the
        last pass's gradient at inactive positions; at active ones the masked backend gives the
        accumulated gradient and the csr backend the last pass's. Raises a one-line
        :class:`~evosparse.errors.UsageError` when nothing was recorded.
        """

    @abstractmethod
    def forget_gradients(self) -> None:
        """Drop the recorded gradient (it belongs to the topology of before an update)."""

    @abstractmethod
    def register_gradient_hook(self, hook: ActiveGradientHook) -> RemovableHandle:
        """Call ``hook`` after every backward pass with ∂L/∂w at the active connections."""

    def inactive_gradient_blocks(self, block_positions: int = BLOCK_POSITIONS) -> Iterator[tuple[Tensor, Tensor]]:
        """(positions, ∂L/∂w there) for every inactive position, from the last recorded backward pass.

        Blocks hold whole rows, about ``block_positions`` positions each, and come in increasing position
        order (so do the positions inside a block): O(block) memory whatever the layer's size, and on a
        backend that forms no dense gradient O(out · in · batch) time in all.
        """
        active = self.active_positions()
        self.gradient_at(active[:0])  # refuse an empty record before any work
        row_size = self.numel // self.shape[0]
        block_size = max(1, block_positions // row_size) * row_size
        bounds = torch.arange(0, self.numel + block_size, block_size, device=active.device).clamp_max(self.numel)
        slots = torch.searchsorted(active, bounds).tolist()
        for block, (start, stop) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
            in_block = active[slots[block] : slots[block + 1]] - start
            free = complement(in_block, stop - start) + start
            if free.numel():
                yield free, self.gradient_at(free)

    # -- invariants -------------------------------------------------------------------------------

    @abstractmethod
    def check_storage(self) -> None:
        """Raise :class:`InvariantError` unless the backend's storage is consistent (inactive weights zero, ...)."""

    def check(self, *, fixed_budget: bool = True) -> None:
        """Raise :class:`InvariantError` on inconsistent storage or, for fixed-budget methods, a drifted budget."""
        self.check_storage()
        if fixed_budget and self.active != self.budget:
            raise InvariantError(f"{self.name}: {self.active} active connections, budget {self.budget}")


class Topology:
    """The sparse layers of one model, in the order the model defines them, on whichever backend.

    Counts, invariant checks and persistence over all layers; every change goes through a layer's
    :meth:`SparseLayer.rewire`.
    """

    def __init__(self, layers: Sequence[SparseLayer]) -> None:
        self.layers: list[SparseLayer] = list(layers)

    @property
    def total(self) -> int:
        """Number of sparsifiable positions, active or not."""
        return sum(layer.numel for layer in self.layers)

    @property
    def active(self) -> int:
        return sum(layer.active for layer in self.layers)

    def density(self) -> float:
        return self.active / self.total

    def apply_masks(self) -> None:
        """Zero every inactive weight (cheap; called after each optimizer step)."""
        for layer in self.layers:
            layer.apply_mask()

    def check(self, *, fixed_budget: bool = True) -> None:
        for layer in self.layers:
            layer.check(fixed_budget=fixed_budget)

    def state_dict(self) -> dict[str, dict[str, object]]:
        """Per layer name: its shape and active positions (int64, CPU) — the same form on every backend."""
        return {
            layer.name: {"shape": list(layer.shape), "positions": layer.active_positions().cpu()}
            for layer in self.layers
        }

    def load_state_dict(self, saved: Mapping[str, object]) -> None:
        """Restore the active positions saved by :meth:`state_dict`; refuse any mismatch in one line.

        Weights are not touched: call :meth:`apply_masks` once everything that goes with the topology
        has loaded."""
        check_saved_topology(saved, self.layers)
        for layer in self.layers:
            entry = saved[layer.name]
            assert isinstance(entry, Mapping)
            positions = entry["positions"]
            assert isinstance(positions, Tensor)
            layer.load_positions(positions)
            layer.budget = int(positions.numel())


def positions_by_parameter(layers: Sequence[SparseLayer]) -> dict[str, Tensor]:
    """The active flat positions of each sparse *parameter* of a model, by qualified name: the layers that
    are blocks of one packed parameter merged into positions of the whole parameter (what an export of
    the model's ``state_dict`` needs)."""
    merged: dict[str, list[Tensor]] = {}
    for layer in layers:
        merged.setdefault(layer.parameter_name, []).append(layer.active_positions() + layer.parameter_offset)
    return {name: torch.cat(parts).sort().values for name, parts in merged.items()}


def check_saved_topology(saved: Mapping[str, object], layers: Sequence[SparseLayer]) -> None:
    """Raise a one-line UsageError unless ``saved`` holds valid positions for exactly ``layers``."""
    if not isinstance(saved, Mapping):
        raise UsageError("saved topology is not a mapping of layer names")
    names = [layer.name for layer in layers]
    if sorted(saved) != sorted(names):
        missing = sorted(set(names) - set(saved)) or sorted(set(saved) - set(names))
        raise UsageError(f"saved topology does not match the model's sparse layers (first mismatch: {missing[0]})")
    for layer in layers:
        entry = saved[layer.name]
        positions = entry.get("positions") if isinstance(entry, Mapping) else None
        shape = entry.get("shape") if isinstance(entry, Mapping) else None
        if not isinstance(positions, Tensor) or positions.dtype != torch.int64 or positions.dim() != 1:
            raise UsageError(f"saved topology of {layer.name} holds no int64 positions")
        if shape is None or tuple(shape) != tuple(layer.shape):
            raise UsageError(f"saved topology of {layer.name} has shape {shape}, expected {list(layer.shape)}")
        if positions.numel() and (
            int(positions.min()) < 0
            or int(positions.max()) >= layer.numel
            or bool((positions[1:] <= positions[:-1]).any())
        ):
            raise UsageError(f"saved positions of {layer.name} are not sorted, distinct and inside the weight")
