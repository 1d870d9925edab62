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

