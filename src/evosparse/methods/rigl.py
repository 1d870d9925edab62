"""RigL: Rigging the Lottery (Evci et al., ICML 2020)."""

from __future__ import annotations

import itertools
import math

import torch

from evosparse.criteria.growth import largest_first, top_gradient_positions
from evosparse.criteria.magnitude import weakest_of
from evosparse.criteria.schedules import cosine_update_fraction
from evosparse.errors import InvariantError
from evosparse.methods.base import GradientRecording, Method, Param, register, step_schedule
from evosparse.methods.context import MethodContext
from evosparse.topology.layer import SparseLayer

#: How many connections an update swaps and where they may regrow (the ``swap_rule`` parameter).
SWAP_RULES = ("reference", "disjoint")

#: RigL's α and schedule (ΔT, T_end), shared by the methods that swap on it.
ALPHA = Param(
    "alpha", 0.3, "α: fraction of active connections swapped at step 0, cosine-decayed", minimum=0.0, maximum=1.0
)
SWAP_RULE = Param(
    "swap_rule",
    "reference",
    "reference: ⌊f·n⌋ swaps, a dropped connection may regrow at once (the authors' code); "
    "disjoint: round(f·n) swaps, regrowth only where nothing was before the update",
    choices=SWAP_RULES,
    legacy="disjoint",  # the rule of every run made before the parameter existed
)
CANDIDATES = Param(
    "candidates",
    0,
    "growth scores at this many random inactive positions per layer (0: all of them, exact)",
    minimum=0,
)
SWAP_SCHEDULE = step_schedule(
    "ΔT: optimizer steps between topology updates",
    "T_end: fraction of training after which the topology is fixed",
)


class CosineSwaps(Method):
    """RigL's schedule: every ΔT steps until T_end, swap a fraction f of each layer's connections, f = α at
    step 0 decayed on a cosine, growth reading the dense gradient of the update step's backward pass (the
    layers record it only on steps followed by an update). Subclasses say how one update swaps."""

    evolves = True
    needs_total_steps = True

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        total_steps = context.require_total_steps(self.name, "for its cosine decay")
        self.end_step: float = self.hparams["update_until"] * total_steps

    def gradient_recording(self) -> GradientRecording:
        return "before_update"

    def update(self) -> int:
        fraction = cosine_update_fraction(self.context.step, self.hparams["alpha"], self.end_step)
        try:
            return self.swap_layers(fraction)
        finally:
            for layer in self.layers:
                layer.forget_gradients()

    def swap_layers(self, fraction: float) -> int:
        """Swap ``fraction`` of every layer's connections; return the number of positions changed."""
        raise NotImplementedError


@register
class RigL(CosineSwaps):
    """Every ΔT steps until T_end, swap a cosine-decayed fraction f of each layer's connections.

    Drop: the smallest |w| among the n active connections. Grow: as many positions with the largest
    dense gradient magnitude |∂L/∂w| of the update step's mini-batch; grown weights start at zero (and
    their optimizer state is reset). The dense gradient is that of the update step's ordinary backward
    pass, which the layers record only on steps followed by an update, so RigL costs no extra backward
    pass and no per-step copy.

    ``swap_rule`` says how many connections are swapped and where they may regrow:

    * ``reference`` (default), RigL as its authors' code makes it (google-research/rigl,
      ``SparseRigLOptimizer``: ``_get_update_op`` with ``reinit_when_same=False``): ⌊f·n⌋ connections
      are dropped, and the growth candidates are the positions inactive before the update *and* the
      ones just dropped. A dropped connection that wins its place back is left as it was: it keeps its
      weight and optimizer state (only connections inactive before the update start at zero), so an
      update changes 2·(⌊f·n⌋ − regrown) positions. A layer with no free position swaps nothing.
    * ``disjoint``: round(f·n) connections, at most as many as there are free positions, regrow only
      into positions inactive before the update, so every dropped connection is gone for at least ΔT
      steps and every update changes exactly 2·count positions (evosparse's rule before issue 18).

    Either way the budget is exact. Two details of the reference are not reproduced: it breaks ties
    in |w| with N(0, 10⁻⁵) noise (here equal magnitudes drop the smaller position first and equal
    gradients grow the smaller position first, the same on every backend; that noise can also, rarely,
    keep an inactive position over an active weight smaller than about 10⁻⁵, which cannot happen here),
    and on an update step it updates the mask *instead of* applying the optimizer step, where
    evosparse applies the step and then updates.

    With ``candidates=0`` every inactive position is scored, block of rows by block of rows
    (:meth:`~evosparse.topology.layer.SparseLayer.inactive_gradient_blocks`: exact, bounded memory; on
    the csr backend O(out·in·batch) time, as no dense gradient exists there); with ``candidates=N``
    only N inactive positions drawn uniformly (plus, under ``reference``, the dropped ones) are scored
    and the largest are grown (an approximation: RigL's growth restricted to a random candidate set,
    for very large layers, at O(N · batch) cost on csr). Every backend makes the same choices.
    """

    name = "rigl"
    summary = "drop smallest |w|, grow largest dense |gradient|, cosine-decayed fraction (Evci et al. 2020)"
    params = (ALPHA, SWAP_RULE, CANDIDATES, *SWAP_SCHEDULE)

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.regrow_dropped: bool = self.hparams["swap_rule"] == "reference"

    def swap_layers(self, fraction: float) -> int:
        return sum(self.swap(layer, fraction) for layer in self.layers)

    def swap(self, layer: SparseLayer, fraction: float) -> int:
        """RigL's update op on one layer (by ``swap_rule``): drop the weakest, grow the steepest, keep the budget."""
        budget = layer.active
        if self.regrow_dropped:
            count = math.floor(fraction * budget)
        else:
            count = min(round(fraction * budget), layer.numel - budget)
        positions, values = layer.active_positions(), layer.active_values()
        drop = positions[weakest_of(values, torch.arange(values.numel(), device=values.device), count)]
        grow = self.steepest(layer, count, drop if self.regrow_dropped else drop[:0]).to(drop.device)
        if not drop.numel() == grow.numel() == count:
            raise InvariantError(f"{layer.name}: rigl dropped {drop.numel()} and grew {grow.numel()}, not {count}")
        changed = layer.rewire(drop[~torch.isin(drop, grow)], grow[~torch.isin(grow, drop)], 0.0)
        if layer.active != budget:
            raise InvariantError(f"{layer.name}: rigl changed the budget {budget} to {layer.active}")
        return changed

    def steepest(self, layer: SparseLayer, count: int, dropped: torch.Tensor) -> torch.Tensor:
        """``count`` positions with the largest |∂L/∂w| among those inactive before the update (among the
        candidates) and ``dropped``; equal gradients go to the smaller position (with all candidates)."""
        sample_size = self.hparams["candidates"]
        if not sample_size:
            blocks = itertools.chain(layer.inactive_gradient_blocks(), [(dropped, layer.gradient_at(dropped))])
            return top_gradient_positions(blocks, count)
        layer.gradient_at(dropped[:0])  # refuse a missing gradient before drawing
        free = layer.numel - layer.active
        sampled = layer.sample_inactive(min(max(sample_size, count), free), self.generator)
        candidates = torch.cat([sampled, dropped.to(sampled.device)])
        return candidates[largest_first(layer.gradient_at(candidates).abs(), count)]
