"""Initialisation that accounts for sparsity: scale weights by the *active* fan-in.

PyTorch's default initialisation assumes every input is connected; multiplied by a 95% mask it leaves a
deep sparse MLP near chance for several epochs (ARCHITECTURE.md section 8). He et al. (2015) give
std = gain/sqrt(fan_in); we use the mean number of active inputs per output unit as fan_in.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from evosparse.errors import UsageError

if TYPE_CHECKING:
    from evosparse.topology.layer import SparseLayer

#: ``sparse_kaiming``: a random topology with fresh values for training from scratch; ``keep``: a random
#: topology over the model's own values; ``keep_largest``: the model's own values and, as each layer's
#: topology, its largest magnitudes (one-shot magnitude pruning), the start for a pretrained model.
INIT_SCHEMES = ("sparse_kaiming", "keep", "keep_largest")
GROW_INITS = ("zero", "kaiming", "normal")


def active_fan_in(layer: SparseLayer) -> float:
    """Mean number of active inputs per output unit (at least 1)."""
    return max(1.0, layer.active / layer.fan_out_axis_size)


def sparse_kaiming_std(layer: SparseLayer, gain: float = math.sqrt(2.0)) -> float:
    """He-normal standard deviation computed from the active fan-in."""
    return gain / math.sqrt(active_fan_in(layer))


def check_init_scheme(scheme: object) -> None:
    """Refuse an unknown initialisation scheme in one line."""
    if scheme not in INIT_SCHEMES:
        raise UsageError(f"unknown init {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")


def sparse_kaiming_draws(layer: SparseLayer, generator: torch.Generator) -> torch.Tensor:
    """He-normal values for every position of ``layer`` (dense, on the CPU), scaled by its active fan-in.

    Drawn for all positions so that every backend, given one generator state, gives each active
    connection the same value.
    """
    return torch.randn(layer.shape, generator=generator) * sparse_kaiming_std(layer)


def grown_weight_values(
    layer: SparseLayer, count: int, scheme: str, generator: torch.Generator, std: float
) -> torch.Tensor:
    """Initial values for ``count`` newly grown connections of ``layer``.

    ``zero`` (RigL: the gradient decides), ``kaiming`` (same distribution as the sparse init), or
    ``normal`` with the given ``std`` (SET's original code draws small Gaussian values).
    """
    if scheme == "zero":
        return torch.zeros(count)
    if scheme == "kaiming":
        return torch.randn(count, generator=generator) * sparse_kaiming_std(layer)
    if scheme == "normal":
        return torch.randn(count, generator=generator) * std
    raise UsageError(f"unknown grow_init {scheme!r}; choose one of {', '.join(GROW_INITS)}")
