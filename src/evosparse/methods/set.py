"""SET: Sparse Evolutionary Training (Mocanu et al., Nature Communications 2018)."""

from __future__ import annotations

from evosparse.criteria.growth import uniform_growth
from evosparse.criteria.magnitude import set_prune_selection, weakest_of
from evosparse.methods.base import SCHEDULE_PARAMS, Method, Param, register
from evosparse.topology.init import GROW_INITS, grown_weight_values


@register
class SET(Method):
    """Each update removes the fraction ζ of weakest weights per layer and regrows as many at random.

    Removal follows the original: ζ of the positive weights closest to zero and ζ of the negative
    weights closest to zero. Regrowth picks uniformly among positions inactive before the update.
    """

    name = "set"
    summary = "prune smallest |w| per sign, regrow uniformly at random (Mocanu et al. 2018)"
    evolves = True
    params = (
        Param("zeta", 0.3, "fraction of each layer's active weights replaced per update", minimum=0.0, maximum=1.0),
        Param("grow_init", "zero", "initial value of grown weights (zero measured best; SET used small Gaussian)",
              choices=GROW_INITS),
        Param("grow_std", 0.01, "standard deviation of grown weights when grow_init=normal", minimum=0.0),
        *SCHEDULE_PARAMS,
    )

    def update(self) -> int:
        changed = 0
        for index, layer in enumerate(self.topology.layers):
            prune = set_prune_selection(layer.weight, layer.mask, self.hparams["zeta"])
            prune = weakest_of(layer.weight, prune, layer.numel - layer.active)
            grow = uniform_growth(layer.mask, prune.numel(), self.generator)
            values = grown_weight_values(
                layer, grow.numel(), self.hparams["grow_init"], self.generator, self.hparams["grow_std"]
            )
            changed += self.topology.rewire(index, prune, grow, values)
        return changed
