"""RigL: Rigging the Lottery (Evci et al., ICML 2020)."""

from __future__ import annotations

import torch

from evosparse.criteria.growth import largest_first, top_gradient_positions
from evosparse.criteria.magnitude import weakest_of
from evosparse.criteria.schedules import cosine_update_fraction
from evosparse.errors import InvariantError
from evosparse.methods.base import GradientRecording, Method, Param, register, step_schedule
from evosparse.methods.context import MethodContext
from evosparse.topology.layer import SparseLayer


@register
class RigL(Method):
    """Every ΔT steps until T_end, swap a cosine-decayed fraction of each layer's connections.

    Drop: the smallest |w| among the active connections. Grow: as many positions, among those inactive
    before the update, with the largest dense gradient magnitude |∂L/∂w| of the update step's
    mini-batch; grown weights start at zero (and their optimizer state is reset). The dense gradient
    is that of the update step's ordinary backward pass, which the layers record only on steps followed
    by an update, so RigL costs no extra backward pass and no per-step copy.

    With ``candidates=0`` every inactive position is scored, block of rows by block of rows
    (:meth:`~evosparse.topology.layer.SparseLayer.inactive_gradient_blocks`: exact, bounded memory; on
    the csr backend O(out·in·batch) time, as no dense gradient exists there); with ``candidates=N``
    only N inactive positions drawn uniformly are scored and the largest are grown (an approximation:
    RigL's growth restricted to a random candidate set, for very large layers, at O(N · batch) cost
    on csr). Every backend makes the same choices.
    """

    name = "rigl"
    summary = "drop smallest |w|, grow largest dense |gradient|, cosine-decayed fraction (Evci et al. 2020)"
    evolves = True
    needs_total_steps = True
    params = (
        Param(
            "alpha",
            0.3,
            "α: fraction of active connections swapped at step 0, cosine-decayed",
            minimum=0.0,
            maximum=1.0,
        ),
        Param(
            "candidates",
            0,
            "growth scores at this many random inactive positions per layer (0: all of them, exact)",
            minimum=0,
        ),
        *step_schedule(
            "ΔT: optimizer steps between topology updates",
            "T_end: fraction of training after which the topology is fixed",
        ),
    )

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        total_steps = context.require_total_steps(self.name, "for its cosine decay")
        self.end_step: float = self.hparams["update_until"] * total_steps

    def gradient_recording(self) -> GradientRecording:
        return "before_update"

    def update(self) -> int:
        fraction = cosine_update_fraction(self.context.step, self.hparams["alpha"], self.end_step)
        try:
            return sum(self.swap(layer, fraction) for layer in self.layers)
        finally:
            for layer in self.layers:
                layer.forget_gradients()

    def swap(self, layer: SparseLayer, fraction: float) -> int:
        """RigL's update op on one layer: drop the weakest, grow the steepest, check the exchange is exact."""
        budget = layer.active
        count = min(round(fraction * layer.active), layer.numel - layer.active)
        positions, values = layer.active_positions(), layer.active_values()
        drop = positions[weakest_of(values, torch.arange(values.numel(), device=values.device), count)]
        grow = self.steepest_inactive(layer, count).to(drop.device)
        changed = layer.rewire(drop, grow, 0.0)
        if not drop.numel() == grow.numel() == count:
            raise InvariantError(f"{layer.name}: rigl dropped {drop.numel()} and grew {grow.numel()}, not {count}")
        if bool(torch.isin(drop, grow).any()):
            raise InvariantError(f"{layer.name}: rigl dropped and grew the same position")
        if layer.active != budget:
            raise InvariantError(f"{layer.name}: rigl changed the budget {budget} to {layer.active}")
        return changed

    def steepest_inactive(self, layer: SparseLayer, count: int) -> torch.Tensor:
        """``count`` positions inactive before the update with the largest |∂L/∂w| (among the candidates)."""
        sample_size = self.hparams["candidates"]
        if not sample_size:
            return top_gradient_positions(layer.inactive_gradient_blocks(), count)
        layer.gradient_at(layer.active_positions()[:0])  # refuse a missing gradient before drawing
        candidates = layer.sample_inactive(min(max(sample_size, count), layer.numel - layer.active), self.generator)
        return candidates[largest_first(layer.gradient_at(candidates).abs(), count)]
