"""Magnitude pruning (Han et al., NeurIPS 2015): train dense, prune once to the target, fine-tune."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from evosparse.criteria.magnitude import weakest_of
from evosparse.criteria.schedules import last_update_step
from evosparse.errors import UsageError
from evosparse.methods.base import SCHEDULE_PARAMS, Method, Param, register
from evosparse.topology.masks import Topology

if TYPE_CHECKING:
    from evosparse.sparsifier import Sparsifier


def prune_smallest_magnitude(topology: Topology, index: int, keep: int) -> int:
    """Deactivate the smallest-|w| active connections of layer ``index`` until ``keep`` remain.

    Returns the number of connections removed (0 when the layer already has ``keep`` or fewer). The
    layer's budget follows its active count, exactly as a checkpoint restores it.
    """
    layer = topology.layers[index]
    excess = layer.active - keep
    if excess <= 0:
        return 0
    active = layer.mask.view(-1).nonzero().squeeze(1)
    removed = topology.rewire(index, weakest_of(layer.weight, active, excess), active[:0])
    layer.budget = layer.active
    assert layer.active == keep, f"{layer.name}: {layer.active} active after pruning to {keep}"
    return removed


@register
class Prune(Method):
    """Train dense for ``dense_fraction`` of training, prune every layer to its budget by |w|, fine-tune.

    Han et al. 2015 ("Learning both Weights and Connections") prune by a magnitude threshold and
    retrain; here each layer keeps exactly its target count (the same budget every other method gets),
    so the run is comparable. The prune happens at the first topology update (an epoch end by default)
    at or after ``dense_fraction`` of the training steps; the mask is fixed afterwards. The density
    column of the run shows 1 before that epoch and the target after it.
    """

    name = "prune"
    summary = "train dense, prune to the target by |w| once, fine-tune (Han et al. 2015)"
    evolves = True
    fixed_budget = False
    starts_dense = True
    params = (
        Param(
            "dense_fraction",
            0.5,
            "fraction of training done dense; the prune comes at the first update at or after it",
            minimum=0.0,
            maximum=1.0,
        ),
        *SCHEDULE_PARAMS,
    )

    def __init__(self, sparsifier: Sparsifier) -> None:
        super().__init__(sparsifier)
        if sparsifier.total_steps is None:
            raise UsageError("method prune needs total_steps, the length of training, to place its prune")
        fraction, until = self.hparams["dense_fraction"], self.hparams["update_until"]
        if fraction >= until:
            raise UsageError(f"prune: dense_fraction ({fraction}) must be below update_until ({until})")
        self.total_steps: int = sparsifier.total_steps
        # Rounded first so that e.g. 0.55 × 100 (= 55.00000000000001) lands on the update at step 55.
        self.prune_step = math.ceil(round(fraction * self.total_steps, 6))

    def update(self) -> int:
        if self.sparsifier.global_step < self.prune_step:
            self._check_the_prune_will_come()
            return 0
        budgets = self.sparsifier.target_budgets
        return sum(prune_smallest_magnitude(self.topology, index, keep) for index, keep in enumerate(budgets))

    def after_step(self) -> None:
        """Refuse to finish a run that was never pruned (no topology update came after the prune step)."""
        budgets = self.sparsifier.target_budgets
        if self.sparsifier.global_step >= self.total_steps and any(
            layer.active > keep for layer, keep in zip(self.topology.layers, budgets)
        ):
            raise UsageError(
                f"prune: no topology update came after dense_fraction={self.hparams['dense_fraction']} of "
                "training, so nothing was pruned; lower it, train longer or update more often"
            )

    def _check_the_prune_will_come(self) -> None:
        """Refuse a schedule whose last update precedes the prune step (the run would end dense)."""
        last = last_update_step(self._update_period(), self.hparams["update_until"] * self.total_steps)
        if last < self.prune_step:
            raise UsageError(
                f"prune: the last topology update comes at step {last} of {self.total_steps}, before "
                f"dense_fraction={self.hparams['dense_fraction']} of training; lower it or train longer"
            )

    def _update_period(self) -> int:
        """Steps between scheduled updates; an epoch-unit schedule reads the epoch length off the clock."""
        interval = self.hparams["update_interval"]
        if self.hparams["update_unit"] == "step":
            return interval
        return interval * max(1, self.sparsifier.global_step // max(1, self.sparsifier.epoch))
