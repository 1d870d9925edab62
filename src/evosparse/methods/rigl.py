"""RigL: Rigging the Lottery (Evci et al., ICML 2020)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from evosparse.criteria.growth import top_scores_growth
from evosparse.criteria.magnitude import weakest_of
from evosparse.criteria.schedules import cosine_update_fraction
from evosparse.errors import UsageError
from evosparse.methods.base import Method, Param, register, step_schedule

if TYPE_CHECKING:
    from evosparse.sparsifier import Sparsifier


@register
class RigL(Method):
    """Every ΔT steps until T_end, swap a cosine-decayed fraction of each layer's connections.

    Drop: the smallest |w| among the active connections. Grow: as many positions, among those inactive
    before the update, with the largest dense gradient magnitude |∂L/∂w| of the update step's
    mini-batch; grown weights start at zero (and their optimizer state is reset). The dense gradient
    comes from the gradient hook of that step's ordinary backward pass, kept only when an update
    follows, so RigL costs no extra backward pass and no per-step copy.
    """

    name = "rigl"
    summary = "drop smallest |w|, grow largest dense |gradient|, cosine-decayed fraction (Evci et al. 2020)"
    evolves = True
    params = (
        Param(
            "alpha",
            0.3,
            "α: fraction of active connections swapped at step 0, cosine-decayed",
            minimum=0.0,
            maximum=1.0,
        ),
        *step_schedule(
            "ΔT: optimizer steps between topology updates",
            "T_end: fraction of training after which the topology is fixed",
        ),
    )

    def __init__(self, sparsifier: Sparsifier) -> None:
        super().__init__(sparsifier)
        if sparsifier.total_steps is None:
            raise UsageError("method rigl needs total_steps, the length of training, for its cosine decay")
        self.end_step: float = self.hparams["update_until"] * sparsifier.total_steps
        #: |∂L/∂w| by layer index, kept for the coming update only (empty between updates).
        self.kept_gradients: dict[int, torch.Tensor] = {}

    def wants_gradients(self) -> bool:
        return True

    def observe_gradient(self, index: int, grad: torch.Tensor) -> None:
        """Keep |∂L/∂w| of layer ``index`` when the coming optimizer step is followed by an update."""
        if self.sparsifier.update_pending():
            self.kept_gradients[index] = grad.detach().abs()

    def update(self) -> int:
        fraction = cosine_update_fraction(self.sparsifier.global_step, self.hparams["alpha"], self.end_step)
        try:
            return sum(self._swap(index, fraction) for index in range(len(self.topology.layers)))
        finally:
            self.kept_gradients.clear()

    def _swap(self, index: int, fraction: float) -> int:
        """RigL's update op on one layer: drop the weakest, grow the steepest, assert the exchange is exact."""
        layer = self.topology.layers[index]
        gradient_magnitude = self.kept_gradients.get(index)
        if gradient_magnitude is None:
            raise UsageError(
                f"rigl: no gradient of {layer.name} was kept for this update (updates must follow a backward pass "
                "and Sparsifier.step)"
            )
        count = min(round(fraction * layer.active), layer.numel - layer.active)
        drop = weakest_of(layer.weight, layer.mask.view(-1).nonzero().squeeze(1), count)
        grow = top_scores_growth(gradient_magnitude, layer.mask, count)
        changed = self.topology.rewire(index, drop, grow, 0.0)
        assert drop.numel() == grow.numel() == count, f"{layer.name}: unequal drop and grow"
        assert not torch.isin(drop.to(grow.device), grow).any(), f"{layer.name}: a position dropped and grown"
        assert layer.active == layer.budget, f"{layer.name}: budget {layer.budget} drifted to {layer.active}"
        return changed
