"""Growth selection by score: which inactive positions become connections.

Random growth (uniform, or weighted by source neuron) samples from the active positions alone, so that
every backend shares it: :mod:`evosparse.topology.positions` and :mod:`evosparse.topology.source_sampling`.
"""

from __future__ import annotations

from collections.abc import Iterable

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
