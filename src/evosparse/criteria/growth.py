"""Growth selection: which inactive positions become connections."""

from __future__ import annotations

import torch

from evosparse.errors import UsageError


def uniform_growth(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` flat positions drawn uniformly without replacement among the inactive ones of ``mask``.

    Pass the mask as it was *before* this update's pruning, so nothing pruned now is regrown now.
    """
    inactive = (~mask.view(-1)).nonzero().squeeze(1).cpu()
    if count > inactive.numel():
        raise UsageError(f"cannot grow {count} connections: only {inactive.numel()} positions are free")
    return inactive[torch.randperm(inactive.numel(), generator=generator)[:count]]


def source_weighted_growth(
    mask: torch.Tensor, count: int, source_weights: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """``count`` inactive positions whose *source* (input) neuron is drawn ∝ ``source_weights``.

    The two-stage rule of Path-Weight/Sensitivity (eq. 6, 11) and LiSET: pick the source neuron i with
    probability ∝ w_i, then a target uniformly among i's inactive positions. Drawing many without
    replacement is done in one pass (Efraimidis–Spirakis keys with per-position weight
    w_i / free_i, whose first draw is exactly the two-stage rule). Positions whose source has weight 0
    are used only if the positive-weight ones run out, uniformly.

    ``mask`` is shaped like the weight, ``(out, in, ...)``: sources are the second axis (input units of a
    linear layer, input channels of a convolution). ``source_weights`` has one non-negative entry per
    source.
    """
    if source_weights.shape != (mask.shape[1],):
        raise UsageError(f"need one source weight per input unit ({mask.shape[1]}), got {tuple(source_weights.shape)}")
    weights = source_weights.detach().to("cpu", torch.float64).clamp_min(0)
    if not torch.isfinite(weights).all():
        raise UsageError("source weights must be finite")
    free = ~mask.detach().cpu()
    source_of = torch.arange(mask.shape[1]).view(1, -1, *([1] * (mask.dim() - 2))).expand(mask.shape)
    inactive = free.reshape(-1).nonzero().squeeze(1)
    if count > inactive.numel():
        raise UsageError(f"cannot grow {count} connections: only {inactive.numel()} positions are free")
    sources = source_of.reshape(-1)[inactive]
    free_per_source = free.transpose(0, 1).reshape(mask.shape[1], -1).sum(dim=1).to(torch.float64)
    position_weight = weights[sources] / free_per_source[sources].clamp_min(1)
    uniform = torch.rand(inactive.numel(), generator=generator, dtype=torch.float64)
    keys = torch.where(position_weight > 0, uniform.log() / position_weight, -torch.inf)
    keys = torch.where(position_weight > 0, keys, -1e300 + uniform)  # zero-weight sources: last, random order
    chosen = torch.topk(keys, count).indices
    return inactive[chosen]


def top_scores_growth(scores: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` inactive flat positions of ``mask`` with the largest ``scores``.

    RigL's growth (Evci et al. 2020, section 3) passes the dense gradient magnitude |∂L/∂w| as scores.
    Pass the mask as it was *before* this update's pruning, so nothing pruned now is regrown now.
    Positions come back on the scores' device, best first; ties go to the smaller position.
    """
    if scores.shape != mask.shape:
        raise UsageError(f"need one score per position {tuple(mask.shape)}, got {tuple(scores.shape)}")
    inactive = (~mask.reshape(-1)).nonzero().squeeze(1).to(scores.device)
    if count > inactive.numel():
        raise UsageError(f"cannot grow {count} connections: only {inactive.numel()} positions are free")
    return inactive[largest_first(scores.detach().reshape(-1)[inactive], count)]


def largest_first(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` largest ``scores``, equal scores going to the smaller index.

    The deterministic tie rule lets backends that list the same candidates agree on the choice.
    """
    return torch.sort(scores, descending=True, stable=True).indices[:count]
