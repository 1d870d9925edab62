"""Growth selection by score: which inactive positions become connections.

Random growth (uniform, or weighted by source neuron) samples from the active positions alone, so that
every backend shares it: :mod:`evosparse.topology.positions` and :mod:`evosparse.topology.source_sampling`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from evosparse.errors import UsageError


def largest_first(scores: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` largest ``scores``, equal scores going to the smaller index.

    The deterministic tie rule lets backends that list the same candidates agree on the choice.
    """
    return torch.sort(scores, descending=True, stable=True).indices[:count]


def top_gradient_positions(blocks: Iterable[tuple[Tensor, Tensor]], count: int) -> Tensor:
    """The ``count`` positions with the largest |∂L/∂w| over ``blocks`` of (positions, gradients).

    RigL's growth criterion (Evci et al. 2020, section 3) when the blocks list every inactive position
    (:meth:`~evosparse.topology.layer.SparseLayer.inactive_gradient_blocks`): a running top-``count`` keeps
    memory at O(block + count) whatever the layer's size. Ties go to the smaller position; positions
    come back in no particular order, on the blocks' device.
    """
    best_positions: Tensor | None = None
    best_scores: Tensor | None = None
    seen = 0
    for positions, gradients in blocks:
        seen += positions.numel()
        scores = gradients.abs()
        if best_positions is not None and best_scores is not None:
            positions = torch.cat([best_positions, positions])
            scores = torch.cat([best_scores, scores])
        order = torch.argsort(positions)
        keep = order[largest_first(scores[order], count)]
        best_positions, best_scores = positions[keep], scores[keep]
    if count > seen:
        raise UsageError(f"cannot grow {count} connections: only {seen} positions are free")
    if best_positions is None:
        return torch.zeros(0, dtype=torch.int64)
    return best_positions


def first_per_unit(units: Tensor, limits: Tensor) -> Tensor:
    """For items listed best first, whether each is among the first ``limits[u]`` items of its unit u.

    ``units`` holds each item's unit (int64, < ``limits.numel()``); the result is a boolean tensor aligned
    with it. A per-unit top-k in O(n log n) without a loop over units.
    """
    order = torch.sort(units, stable=True).indices
    grouped = units[order]
    sizes = torch.bincount(grouped, minlength=limits.numel())
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(units.numel(), device=units.device) - starts[grouped]
    chosen = torch.zeros(units.shape, dtype=torch.bool, device=units.device)
    chosen[order] = rank < limits.to(units.device)[grouped]
    return chosen


def top_gradient_per_unit(
    blocks: Iterable[tuple[Tensor, Tensor]], unit_of: Callable[[Tensor], Tensor], need: Tensor
) -> Tensor:
    """For each output unit u, the ``need[u]`` positions of u with the largest |∂L/∂w| over ``blocks``.

    SRigL's per-neuron growth (Lasby et al. 2023): :func:`top_gradient_positions` restricted to each unit,
    with ``unit_of`` mapping positions to units. A running selection keeps memory at O(block + Σ need);
    ties go to the smaller position. Raises a one-line UsageError when a unit has too few candidates.
    """
    best_positions = torch.zeros(0, dtype=torch.int64, device=need.device)
    best_scores = torch.zeros(0, device=need.device)
    for positions, gradients in blocks:
        positions = torch.cat([best_positions.to(positions.device), positions])
        scores = torch.cat([best_scores.to(gradients.device, gradients.dtype), gradients.abs()])
        order = torch.argsort(positions)
        order = order[largest_first(scores[order], order.numel())]
        keep = order[first_per_unit(unit_of(positions[order]), need)]
        best_positions, best_scores = positions[keep], scores[keep]
    found = torch.bincount(unit_of(best_positions), minlength=need.numel()).to(need.device)
    short = (found < need).nonzero()
    if short.numel():
        unit = int(short[0])
        raise UsageError(f"cannot grow {int(need[unit])} connections of unit {unit}: only {int(found[unit])} are free")
    return best_positions
