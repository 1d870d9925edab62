"""Growth selection: which inactive positions become connections."""

from __future__ import annotations

import torch

from evosparse.backends.source_sampling import source_weighted_sample
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
    probability ∝ w_i, then a target uniformly among i's inactive positions; many draws are made without
    replacement by successive sampling with per-position weight w_i / free_i (Efraimidis–Spirakis). Positions
    whose source has weight 0 are used only if the positive-weight ones run out, uniformly. The sampler is
    :func:`evosparse.backends.source_sampling.source_weighted_sample`, which needs only the active positions.

    ``mask`` is shaped like the weight, ``(out, in, ...)``: sources are the second axis (input units of a
    linear layer, input channels of a convolution). ``source_weights`` has one non-negative entry per
    source.
    """
    active = mask.detach().reshape(-1).nonzero().squeeze(1)
    return source_weighted_sample(active, tuple(mask.shape), count, source_weights, generator)


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
