"""Magnitude-based prune selection, on the active values of a layer (any backend)."""

from __future__ import annotations

import torch
from torch import Tensor


def set_prune_selection(values: Tensor, zeta: float) -> Tensor:
    """SET's removal set, as indices into ``values``: the fraction ζ of the positive values closest to zero,
    and likewise of the negative ones.

    Mocanu et al. 2018 (SET, "weight evolution"): the smallest positive and the largest negative weights
    are removed, ζ of each side, so both signs keep their share of connections. Exact zeros count as
    positive. Ties go to the smaller index (stable sort), so backends listing the same values in the
    same order agree.
    """
    values = values.detach()
    every = torch.arange(values.numel(), device=values.device)
    chosen = []
    for side in (values >= 0, values < 0):
        candidates = every[side]
        count = int(round(zeta * candidates.numel()))
        if count:
            order = torch.argsort(values[candidates].abs(), stable=True)
            chosen.append(candidates[order[:count]])
    return torch.cat(chosen) if chosen else every[:0]


def weakest_of(values: Tensor, candidates: Tensor, limit: int) -> Tensor:
    """At most ``limit`` of the ``candidates`` (indices into ``values``), keeping those with the smallest |value|.

    A layer can only swap as many connections as it has free positions (a dense layer none), so a
    prune set larger than that is cut down to its weakest members. The result is on ``candidates``'
    device.
    """
    if candidates.numel() <= limit:
        return candidates
    order = torch.argsort(values.detach().reshape(-1)[candidates.to(values.device)].abs(), stable=True)
    return candidates[order[:limit].to(candidates.device)]


def set_prune_positions(positions: Tensor, values: Tensor, free: int, zeta: float) -> Tensor:
    """SET's removal set as positions: :func:`set_prune_selection` over the active ``values`` (aligned with
    ``positions``), capped by :func:`weakest_of` at the ``free`` positions the layer can regrow into.

    Cost O(nnz log nnz).
    """
    chosen = weakest_of(values, set_prune_selection(values, zeta), free)
    return positions[chosen.to(positions.device)]
