"""SET: Sparse Evolutionary Training (Mocanu et al., Nature Communications 2018)."""

from __future__ import annotations

from typing import ClassVar

from evosparse.backends.set_on_view import set_update
from evosparse.methods.base import SCHEDULE_PARAMS, Method, Param, grow_params, register


@register
class SET(Method):
    """Each update removes the fraction ζ of weakest weights per layer and regrows as many at random.

    Removal follows the original: ζ of the positive weights closest to zero and ζ of the negative
    weights closest to zero. Regrowth picks uniformly among positions inactive before the update.
    The update is written once against the backend-neutral layer views
    (:func:`evosparse.backends.set_on_view.set_update`), so the masked and csr backends draw the
    same topology from the same generator state.
    """

    name = "set"
    summary = "prune smallest |w| per sign, regrow uniformly at random (Mocanu et al. 2018)"
    evolves = True
    supports_csr: ClassVar[bool] = True
    params = (
        Param("zeta", 0.3, "fraction of each layer's active weights replaced per update", minimum=0.0, maximum=1.0),
        *grow_params("zero", "zero measured best; SET used small Gaussian"),
        *SCHEDULE_PARAMS,
    )

    def update(self) -> int:
        return sum(
            set_update(view, self.hparams["zeta"], self.generator, self.hparams["grow_init"], self.hparams["grow_std"])
            for view in self.sparsifier.views
        )
