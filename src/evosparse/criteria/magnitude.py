"""Magnitude-based prune selection."""

from __future__ import annotations

import torch


def set_prune_selection(weight: torch.Tensor, mask: torch.Tensor, zeta: float) -> torch.Tensor:
    """SET's removal set: the fraction ζ of positive weights closest to zero, and likewise of negatives.

    Mocanu et al. 2018 (SET, "weight evolution"): the smallest positive and the largest negative weights
    are removed, ζ of each side, so both signs keep their share of connections. Exact zeros count as
    positive.
    """
    flat_w = weight.detach().view(-1)
    active = mask.view(-1).nonzero().squeeze(1)
    values = flat_w[active]
    chosen = []
    for side in (values >= 0, values < 0):
        candidates = active[side]
        count = int(round(zeta * candidates.numel()))
        if count:
            order = torch.argsort(flat_w[candidates].abs(), stable=True)
            chosen.append(candidates[order[:count]])
    return torch.cat(chosen) if chosen else active[:0]


def weakest_of(weight: torch.Tensor, candidates: torch.Tensor, limit: int) -> torch.Tensor:
    """At most ``limit`` of the flat ``candidates``, keeping those with the smallest |w|.

    A layer can only swap as many connections as it has free positions (a dense layer none), so a
    prune set larger than that is cut down to its weakest members.
    """
    if candidates.numel() <= limit:
        return candidates
    order = torch.argsort(weight.detach().view(-1)[candidates].abs(), stable=True)
    return candidates[order[:limit]]
