"""One interface to a sparse layer's topology, whichever backend stores it.

A method written against :class:`SparseLayerView` runs unchanged on the masked backend
(:class:`MaskedLayerView`, a thin adapter over :class:`~evosparse.topology.masks.Topology`) and on
the csr backend (:class:`CsrLayerView` over a :class:`~evosparse.backends.csr_layer.CsrLinear`).
Positions are flat indices into the weight (row-major), the same numbering on both backends.

The view also exposes ``active`` and ``fan_out_axis_size`` with the meaning they have on
:class:`~evosparse.topology.masks.SparseLayer`, so helpers that read only those (e.g.
:func:`evosparse.topology.init.grown_weight_values`) accept a view as the layer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from evosparse.backends import csr_topology
from evosparse.backends.csr_layer import CsrLinear
from evosparse.backends.csr_ops import GradientTap
from evosparse.backends.source_sampling import free_per_source, source_weighted_sample
from evosparse.backends.uniform_sampling import sample_absent
from evosparse.errors import UsageError
from evosparse.topology.masks import SparseLayer, Topology


class SparseLayerView(ABC):
    """The topology operations a method needs on one sparse layer."""

    @property
    @abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Logical shape of the weight: (out, in) for a linear layer."""

    @property
    @abstractmethod
    def active(self) -> int:
        """Number of active connections (nnz)."""

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
        """Prune active ``prune``, grow inactive ``grow`` with ``grow_values`` (optimizer state kept aligned)."""

    @property
    def numel(self) -> int:
        """Number of positions, active or not."""
        return math.prod(self.shape)

    @property
    def fan_out_axis_size(self) -> int:
        """Number of output units (rows)."""
        return self.shape[0]

    def sample_inactive(self, count: int, generator: torch.Generator, exclude: Tensor | None = None) -> Tensor:
        """``count`` distinct inactive positions, uniform without replacement, none in ``exclude``.

        Implemented once for every backend, so both draw the same positions from the same
        generator state and the same topology.
        """
        return sample_absent(self.active_positions(), self.numel, count, generator, exclude)

    def sample_inactive_by_source(self, count: int, source_weights: Tensor, generator: torch.Generator) -> Tensor:
        """``count`` distinct inactive positions whose source (input unit or channel) is drawn ∝ ``source_weights``.

        See :func:`~evosparse.backends.source_sampling.source_weighted_sample`; implemented once for
        every backend, so both draw the same positions.
        """
        return source_weighted_sample(self.active_positions(), self.shape, count, source_weights, generator)

    def free_per_source(self) -> Tensor:
        """Number of inactive positions of each source (int64, on the CPU)."""
        return free_per_source(self.active_positions(), self.shape)


class CsrLayerView(SparseLayerView):
    """View of a :class:`CsrLinear`; ``optimizer`` (if any) is kept aligned with its values on rewiring."""

    def __init__(self, layer: CsrLinear, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.layer = layer
        self.optimizer = optimizer

    @property
    def shape(self) -> tuple[int, int]:
        return self.layer.shape

    @property
    def active(self) -> int:
        return self.layer.nnz

    def active_positions(self) -> Tensor:
        return csr_topology.active_positions(self.layer)

    def active_values(self) -> Tensor:
        return csr_topology.active_values(self.layer)

    def contains(self, positions: Tensor) -> Tensor:
        return csr_topology.contains(self.layer, positions)

    def rewire(self, prune: Tensor, grow: Tensor, grow_values: Tensor | float = 0.0) -> int:
        return csr_topology.rewire(self.layer, prune, grow, grow_values, self.optimizer)

    def recorded_tap(self, missing: str) -> GradientTap:
        """The layer's gradient tap once a backward pass has filled it; else ``UsageError(missing)``."""
        tap = self.layer.tap
        if tap is None or not tap.recorded:
            raise UsageError(missing)
        return tap

    def recorded_gradient_at(self, positions: Tensor, missing: str) -> Tensor:
        """∂L/∂w of the tap's batch at flat ``positions`` (active or not), without a dense gradient."""
        in_features = self.shape[1]
        return self.recorded_tap(missing).gradient_at(positions // in_features, positions % in_features)


class MaskedLayerView(SparseLayerView):
    """View of layer ``index`` of a masked :class:`Topology` (which owns the mask and the optimizer)."""

    def __init__(self, topology: Topology, index: int) -> None:
        self.topology = topology
        self.index = index

    @property
    def _layer(self) -> SparseLayer:
        return self.topology.layers[self.index]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._layer.shape)

    @property
    def active(self) -> int:
        return self._layer.active

    def active_positions(self) -> Tensor:
        return self._layer.mask.reshape(-1).nonzero().squeeze(1)

    def active_values(self) -> Tensor:
        return self._layer.weight.detach().reshape(-1)[self.active_positions()]

    def contains(self, positions: Tensor) -> Tensor:
        flat_mask = self._layer.mask.reshape(-1)
        return flat_mask[positions.to(flat_mask.device, torch.int64)]

    def rewire(self, prune: Tensor, grow: Tensor, grow_values: Tensor | float = 0.0) -> int:
        return self.topology.rewire(self.index, prune, grow, grow_values)


def masked_views(topology: Topology) -> list[MaskedLayerView]:
    """One view per layer of a masked topology, in layer order."""
    return [MaskedLayerView(topology, index) for index in range(len(topology.layers))]
