"""SET: Sparse Evolutionary Training (Mocanu et al., Nature Communications 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from evosparse.criteria.growth import first_per_unit
from evosparse.criteria.magnitude import set_prune_positions
from evosparse.methods.base import SCHEDULE_PARAMS, Method, Param, grow_params, register
from evosparse.topology.layer import SparseLayer


@register
class SET(Method):
    """Each update removes the fraction ζ of weakest weights per layer and regrows as many at random.

    Removal follows the original: ζ of the positive weights closest to zero and ζ of the negative
    weights closest to zero (capped at the layer's free positions). Regrowth picks uniformly among
    positions inactive before the update, so nothing pruned now is regrown now; both read the layer's
    active positions and values alone, so every backend makes the same choices.

    ``per_neuron=true`` keeps every output unit's fan-in (a structured variant, not in the paper): a unit
    with k inputs drops its ⌊ζ·k⌋ weakest |w| (at most as many as it has free inputs; equal |w| drop the
    smaller position first) and regrows as many at inputs of the same unit inactive before the update,
    uniformly (:meth:`~evosparse.topology.layer.SparseLayer.sample_inactive_per_unit`). The magnitude is
    not split by sign as in the layer-wide rule: with the few tens of inputs of a unit, rounding ζ of each
    sign separately would change the unit's count by one either way. A unit with fewer than 1/ζ inputs
    (⌊ζ·k⌋ = 0: k ≤ 3 at ζ = 0.3, as in small output layers at low density) is never rewired. Every unit
    starts with k or k + 1 inputs, on every backend. It is what ``--backend condensed`` runs SET with;
    regrowth draws one key per input of every unit that grows, so an update costs
    O(out · in) time (in blocks of bounded memory) where the layer-wide rule costs O(nnz).
    """

    name = "set"
    summary = "prune smallest |w| per sign, regrow uniformly at random (Mocanu et al. 2018)"
    evolves = True
    params = (
        Param("zeta", 0.3, "fraction of each layer's active weights replaced per update", minimum=0.0, maximum=1.0),
        Param(
            "per_neuron",
            False,
            "replace ⌊ζ·k⌋ weakest |w| of every neuron with k inputs by as many random inputs of the same neuron, "
            "keeping each fan-in (needed by --backend condensed)",
        ),
        *grow_params("zero", "zero measured best", paper="normal"),
        *SCHEDULE_PARAMS,
    )

    @classmethod
    def starts_with_constant_fan_in(cls, hparams: Mapping[str, Any]) -> bool:
        """Per neuron: every unit starts with k or k + 1 inputs, which it then keeps (on every backend)."""
        return bool(hparams["per_neuron"])

    @classmethod
    def keeps_fan_ins(cls, hparams: Mapping[str, Any]) -> bool:
        return bool(hparams["per_neuron"])

    def update(self) -> int:
        evolve = self.evolve_per_neuron if self.hparams["per_neuron"] else self.evolve
        return sum(evolve(layer) for layer in self.layers)

    def evolve(self, layer: SparseLayer) -> int:
        """One SET update of one layer; returns the number of positions changed."""
        prune = set_prune_positions(
            layer.active_positions(), layer.active_values(), layer.numel - layer.active, self.hparams["zeta"]
        )
        grow = layer.sample_inactive(prune.numel(), self.generator)
        return layer.rewire(prune, grow, self.grown_values(layer, grow.numel()))

    def evolve_per_neuron(self, layer: SparseLayer) -> int:
        """One per-neuron SET update of one layer (``per_neuron=true``); returns the number of positions changed."""
        positions, values = layer.active_positions(), layer.active_values()
        units = layer.unit_of(positions)
        counts = torch.bincount(units, minlength=layer.fan_out_axis_size)
        drops = torch.minimum(
            torch.floor(counts.double() * self.hparams["zeta"]).to(torch.int64), layer.fan_in - counts
        )
        weakest = torch.argsort(values.abs(), stable=True)
        prune = positions[weakest[first_per_unit(units[weakest], drops)]]
        grow = layer.sample_inactive_per_unit(drops, self.generator)
        return layer.rewire(prune, grow, self.grown_values(layer, grow.numel()))
