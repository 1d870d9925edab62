"""Topology operations on a :class:`CsrLinear`, at cost O(nnz + changes) up to log factors, never O(out x in).

Positions are flat int64 indices ``row * in_features + col`` — the same numbering as the flat
positions of a dense (out, in) mask, so selections can be compared between backends. The CSR order
(row-major) is increasing flat position, so the active positions come sorted for free.

:func:`rewire` is the csr counterpart of :meth:`evosparse.topology.masks.MaskedLayer.rewire`: the same
checks (prune ⊂ active, grow ⊂ inactive before the call, no duplicates) and the same effect on the
optimizer: state of pruned connections disappears, grown connections start from zero state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from evosparse.backends.csr_layer import CsrLinear, set_parameter_data
from evosparse.backends.csr_ops import CsrStructure
from evosparse.errors import InvariantError
from evosparse.topology.positions import is_member, locate


def active_positions(layer: CsrLinear) -> Tensor:
    """Sorted flat positions (row · in_features + col, int64) of the active connections: O(nnz)."""
    return layer.positions()


def active_values(layer: CsrLinear) -> Tensor:
    """The active weights (detached), aligned with :func:`active_positions`."""
    return layer.active_values()


def contains(layer: CsrLinear, positions: Tensor) -> Tensor:
    """Whether each flat position is active (binary search in the sorted active positions)."""
    keys = active_positions(layer)
    return is_member(keys, positions.to(keys.device, torch.int64))


@torch.no_grad()
def rewire(
    layer: CsrLinear,
    prune: Tensor,
    grow: Tensor,
    grow_values: Tensor | float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
) -> int:
    """Deactivate flat positions ``prune``, activate ``grow`` with ``grow_values``; return the number changed.

    ``prune`` must be active and ``grow`` inactive before the call, both without duplicates
    (:class:`~evosparse.errors.InvariantError` otherwise, as in the masked backend). The values
    Parameter keeps its identity; its gradient and every optimizer-state tensor shaped like it (SGD
    momentum, Adam moments, ...) are carried to the new CSR order, with pruned entries dropped and
    grown entries zero. When the number of connections is unchanged, all of them are updated in place
    (same storage).
    Cost O(nnz log nnz) (two sorts of the new positions to build the CSR structure and its transpose).
    """
    merge, new_values = plan_rewiring(
        f"csr layer {layer.shape}", layer.shape, active_positions(layer), prune, grow, grow_values, layer.values.dtype
    )
    rows = torch.div(merge.new_keys, layer.in_features, rounding_mode="floor")
    # The new positions are sorted and distinct by construction, so the structure is built directly.
    structure = CsrStructure._from_sorted(rows, merge.new_keys - rows * layer.in_features, layer.shape)
    carry_values(layer.values, optimizer, lambda old, grown=0.0: replaced(old, merge.realign(old, grown)), new_values)
    layer.structure = structure
    return int(prune.numel() + grow.numel())


def plan_rewiring(
    name: str,
    shape: tuple[int, int],
    keys: Tensor,
    prune: Tensor,
    grow: Tensor,
    grow_values: Tensor | float,
    dtype: torch.dtype,
) -> tuple[Merge, Tensor]:
    """The checked :class:`Merge` of a rewiring of a layer (``name``, ``shape``) whose sorted active positions are
    ``keys``, and the grown values in the merge's order (the preconditions every sparse linear layout shares)."""
    prune = prune.to(keys.device, torch.int64).reshape(-1)
    grow = grow.to(keys.device, torch.int64).reshape(-1)
    merge = Merge.plan(name, shape[0] * shape[1], keys, prune, grow)
    new_values = torch.as_tensor(grow_values, dtype=dtype, device=keys.device).reshape(-1)
    if new_values.numel() not in (1, grow.numel()):
        raise InvariantError(f"{new_values.numel()} grow values for {grow.numel()} grown positions")
    return merge, new_values.expand(grow.numel())[merge.grow_order]


def carry_values(
    values: nn.Parameter,
    optimizer: torch.optim.Optimizer | None,
    moved: Callable[..., Tensor],
    grown: Tensor,
) -> None:
    """Carry the values Parameter (its identity kept), its gradient and every optimizer-state tensor shaped like
    it (SGD momentum, Adam moments, ...) to the new layout: ``moved(old, grown=0.0)`` rebuilds one tensor, the
    grown connections taking ``grown`` (the values) or zero (the rest)."""
    old_shape = values.shape
    set_parameter_data(values, moved(values.data, grown))
    if values.grad is not None:
        values.grad = moved(values.grad)
    if optimizer is not None:
        state = optimizer.state.get(values, {})
        for name, tensor in list(state.items()):
            if torch.is_tensor(tensor) and tensor.shape == old_shape:
                state[name] = moved(tensor)


@dataclass(frozen=True)
class Merge:
    """Where each connection goes when a sorted list of positions loses ``prune`` and gains ``grow``.

    ``keep`` marks the old entries that stay; they land at ``kept_slots`` of the new list, the grown
    positions (sorted, ``grow_order`` maps them back to the caller's order) at ``grown_slots``.
    """

    keep: Tensor
    kept_slots: Tensor
    grown_slots: Tensor
    grow_order: Tensor
    new_keys: Tensor

    @classmethod
    def plan(cls, name: str, numel: int, keys: Tensor, prune: Tensor, grow: Tensor) -> Merge:
        """Check the rewiring's preconditions (InvariantError, naming the layer ``name``) on a weight of
        ``numel`` positions whose active ones are ``keys``, and plan the merge: O(nnz + changes · log nnz)."""
        prune_slots, found = locate(keys, torch.sort(prune).values)
        if not bool(found.all()):
            raise InvariantError(f"{name}: pruning an inactive connection")
        keep = torch.ones(keys.numel(), dtype=torch.bool, device=keys.device)
        keep[prune_slots] = False
        grow_sorted, grow_order = torch.sort(grow)
        if int(keep.sum()) != keys.numel() - prune.numel() or bool((grow_sorted[1:] == grow_sorted[:-1]).any()):
            raise InvariantError(f"{name}: duplicate positions in a rewiring")
        if grow.numel() and (int(grow_sorted[0]) < 0 or int(grow_sorted[-1]) >= numel):
            raise InvariantError(f"{name}: growing a position outside the weight")
        if grow.numel() and bool(is_member(keys, grow_sorted).any()):
            raise InvariantError(f"{name}: growing an active connection")
        kept_keys = keys[keep]
        grown_slots = torch.searchsorted(kept_keys, grow_sorted) + torch.arange(grow.numel(), device=keys.device)
        is_grown = torch.zeros(kept_keys.numel() + grow.numel(), dtype=torch.bool, device=keys.device)
        is_grown[grown_slots] = True
        kept_slots = (~is_grown).nonzero().squeeze(1)
        new_keys = torch.empty(is_grown.numel(), dtype=torch.int64, device=keys.device)
        new_keys[kept_slots] = kept_keys
        new_keys[grown_slots] = grow_sorted
        return cls(keep, kept_slots, grown_slots, grow_order, new_keys)

    def realign(self, old: Tensor, grown: Tensor | float = 0.0) -> Tensor:
        """``old`` (one entry per old connection) in the new order: kept entries moved, ``grown`` at the new ones."""
        new = old.new_empty(self.new_keys.numel())
        new[self.kept_slots] = old[self.keep]
        new[self.grown_slots] = torch.as_tensor(grown, dtype=old.dtype, device=old.device).expand(
            self.grown_slots.numel()
        )
        return new


def check(layer: CsrLinear) -> None:
    """Raise InvariantError unless the values are aligned with the structure, whose positions strictly
    increase inside the weight."""
    structure = layer.structure
    keys = active_positions(layer)
    if layer.values.shape != (structure.nnz,):
        raise InvariantError(f"csr layer {layer.shape}: values are not aligned with the CSR structure")
    if structure.crow_indices.numel() != structure.shape[0] + 1 or int(structure.crow_indices[-1]) != structure.nnz:
        raise InvariantError(f"csr layer {layer.shape}: row offsets do not end at nnz")
    if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
        raise InvariantError(f"csr layer {layer.shape}: positions are not strictly increasing")
    if keys.numel() and (int(keys[0]) < 0 or int(keys[-1]) >= structure.shape[0] * structure.shape[1]):
        raise InvariantError(f"csr layer {layer.shape}: a position lies outside the weight")


def dense_mask_for_tests(layer: CsrLinear) -> Tensor:
    """The (out, in) boolean mask of the active positions — O(out · in), for tests only."""
    mask = torch.zeros(layer.shape, dtype=torch.bool, device=layer.structure.device)
    mask[layer.structure.row_indices, layer.structure.col_indices] = True
    return mask


def replaced(old: Tensor, new: Tensor) -> Tensor:
    """``old`` overwritten with ``new`` when the shapes agree (keeping its storage), else ``new`` itself."""
    if old.shape == new.shape:
        return old.copy_(new)
    return new
