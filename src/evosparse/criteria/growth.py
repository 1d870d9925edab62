"""Growth selection by score: which inactive positions become connections.

Random growth (uniform, or weighted by source neuron) samples from the active positions alone, so that
both backends share it: :mod:`evosparse.backends.uniform_sampling` and
:mod:`evosparse.backends.source_sampling`.
"""

from __future__ import annotations

import torch

from evosparse.errors import UsageError


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
