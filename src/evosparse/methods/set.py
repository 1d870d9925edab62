"""SET: Sparse Evolutionary Training (Mocanu et al., Nature Communications 2018)."""

from __future__ import annotations

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
    """

    name = "set"
    summary = "prune smallest |w| per sign, regrow uniformly at random (Mocanu et al. 2018)"
    evolves = True
    params = (
        Param("zeta", 0.3, "fraction of each layer's active weights replaced per update", minimum=0.0, maximum=1.0),
        *grow_params("zero", "zero measured best; SET used small Gaussian"),
        *SCHEDULE_PARAMS,
    )

    def update(self) -> int:
        return sum(self.evolve(layer) for layer in self.layers)

    def evolve(self, layer: SparseLayer) -> int:
        """One SET update of one layer; returns the number of positions changed."""
        prune = set_prune_positions(
            layer.active_positions(), layer.active_values(), layer.numel - layer.active, self.hparams["zeta"]
        )
        grow = layer.sample_inactive(prune.numel(), self.generator)
        return layer.rewire(prune, grow, self.grown_values(layer, grow.numel()))
