"""SET's topology update written once against :class:`SparseLayerView`, for both backends.

The ``set`` method (:mod:`evosparse.methods.set`) calls :func:`set_update` on each of the
Sparsifier's layer views, on either backend.

The selection reuses SET's own criteria (:func:`set_prune_selection`, :func:`weakest_of`) on the
1-D vector of active values, which lists the active weights in increasing flat position, exactly
the order the masked criteria see them in: the pruned set, ties included, is the same on both
backends.
"""

from __future__ import annotations

import torch
from torch import Tensor

from evosparse.backends.layer_view import SparseLayerView
from evosparse.criteria.magnitude import set_prune_selection, weakest_of
from evosparse.topology.init import grown_weight_values


def set_prune_positions(view: SparseLayerView, zeta: float) -> Tensor:
    """SET's removal set as flat positions: ζ of the positive and ζ of the negative active weights closest to zero.

    Mocanu et al. 2018 (SET, "weight evolution"), capped to the layer's free positions so that the
    removed connections can all be regrown elsewhere. Cost O(nnz log nnz).
    """
    positions, values = view.active_positions(), view.active_values()
    every_entry = torch.ones(values.numel(), dtype=torch.bool, device=values.device)
    chosen = set_prune_selection(values, every_entry, zeta)
    chosen = weakest_of(values, chosen, view.numel - view.active)
    return positions[chosen]


def set_update(
    view: SparseLayerView,
    zeta: float,
    generator: torch.Generator,
    grow_init: str = "zero",
    grow_std: float = 0.01,
) -> int:
    """One SET update of one layer: prune by :func:`set_prune_positions`, regrow as many uniformly at random.

    Growth draws among the positions inactive before the update (so nothing pruned now is regrown
    now) through the view's sampler, which is the same on both backends. Returns the number of
    connections changed.
    """
    prune = set_prune_positions(view, zeta)
    grow = view.sample_inactive(prune.numel(), generator)
    values = grown_weight_values(view, grow.numel(), grow_init, generator, grow_std)  # type: ignore[arg-type]
    return view.rewire(prune, grow, values)
