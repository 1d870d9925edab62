"""Gradient-driven growth on a :class:`CsrLinear` without a dense gradient: scores from its GradientTap.

RigL and AWS grow the inactive positions with the largest |∂L/∂w|. On the csr backend that gradient
is never formed densely; :func:`inactive_gradient_blocks` computes it at every inactive position,
one block of rows at a time (an SDDMM per block, :meth:`GradientTap.gradient_at`), and a caller
keeps only what it needs of each block: :func:`exact_top_inactive_gradients` a running
top-``count`` (exact, with memory bounded by the block size instead of out x in).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from evosparse.backends.csr_layer import CsrLinear
from evosparse.backends.csr_topology import active_positions
from evosparse.backends.uniform_sampling import complement
from evosparse.criteria.growth import largest_first
from evosparse.errors import UsageError

#: Positions scored per block (about 8 MB of scores and indices).
BLOCK_POSITIONS = 1 << 20


def exact_top_inactive_gradients(layer: CsrLinear, count: int, block_positions: int = BLOCK_POSITIONS) -> Tensor:
    """The ``count`` inactive flat positions of ``layer`` with the largest |∂L/∂w| recorded by ``layer.tap``.

    Every inactive position is scored (Evci et al. 2020, RigL growth criterion, section 3), in blocks
    of whole rows of about ``block_positions`` positions: O(out · in · batch) time, O(block + count)
    memory. Ties are broken towards the smaller position. Positions come back in no particular order.
    """
    free_total = layer.shape[0] * layer.shape[1] - layer.nnz
    if not 0 <= count <= free_total:
        raise UsageError(f"cannot grow {count} connections: only {free_total} positions are free")
    best_positions = active_positions(layer).new_zeros(0)
    best_scores = torch.zeros(0, dtype=layer.values.dtype, device=best_positions.device)
    for free, gradients in inactive_gradient_blocks(layer, block_positions):
        scores = torch.cat([best_scores, gradients.abs()])
        best_positions, best_scores = _top(torch.cat([best_positions, free]), scores, count)
    return best_positions


def inactive_gradient_blocks(
    layer: CsrLinear, block_positions: int = BLOCK_POSITIONS
) -> Iterator[tuple[Tensor, Tensor]]:
    """(positions, ∂L/∂w there) for every inactive position of ``layer``, from its tap, block by block.

    Blocks hold whole rows, about ``block_positions`` positions each, and come in increasing position
    order (so do the positions inside a block); each is an SDDMM of the recorded input and output
    gradient (:meth:`GradientTap.gradient_at`): O(out · in · batch) time in all, O(block) memory.
    """
    tap = layer.tap
    if tap is None or not tap.recorded:
        raise UsageError("no gradient was recorded for this csr layer: attach a GradientTap and run a backward pass")
    out_features, in_features = layer.shape
    active, crow = active_positions(layer), layer.structure.crow_indices
    rows_per_block = max(1, block_positions // in_features)
    for first_row in range(0, out_features, rows_per_block):
        end_row = min(out_features, first_row + rows_per_block)
        start, stop = first_row * in_features, end_row * in_features
        block_active = active[int(crow[first_row]) : int(crow[end_row])] - start
        free = complement(block_active, stop - start) + start
        if free.numel():
            yield free, tap.gradient_at(free // in_features, free % in_features)


def _top(positions: Tensor, scores: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` entries with the largest score, ties going to the smaller position."""
    order = torch.argsort(positions)
    keep = order[largest_first(scores[order], count)]
    return positions[keep], scores[keep]
