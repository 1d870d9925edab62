"""Magnitude pruning (Han et al., NeurIPS 2015): train dense, prune once to the target, fine-tune."""

from __future__ import annotations

import math

import torch

from evosparse.criteria.magnitude import weakest_of
from evosparse.criteria.schedules import last_update_step
from evosparse.errors import InvariantError, UsageError
from evosparse.methods.base import SCHEDULE_PARAMS, Method, Param, register
from evosparse.methods.context import MethodContext
from evosparse.topology.layer import SparseLayer


def prune_smallest_magnitude(layer: SparseLayer, keep: int) -> int:
    """Deactivate the smallest-|w| active connections of ``layer`` until ``keep`` remain.

    Returns the number of connections removed (0 when the layer already has ``keep`` or fewer). The
    layer's budget follows its active count, exactly as a checkpoint restores it.
    """
    excess = layer.active - keep
    if excess <= 0:
        return 0
    positions, values = layer.active_positions(), layer.active_values()
    weakest = weakest_of(values, torch.arange(values.numel(), device=values.device), excess)
    removed = layer.rewire(positions[weakest], positions[:0])
    layer.budget = layer.active
    if layer.active != keep:
        raise InvariantError(f"{layer.name}: {layer.active} active after pruning to {keep}")
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
    needs_total_steps = True
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

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.total_steps = context.require_total_steps(self.name, "to place its prune")
        fraction, until = self.hparams["dense_fraction"], self.hparams["update_until"]
        if fraction >= until:
            raise UsageError(f"prune: dense_fraction ({fraction}) must be below update_until ({until})")
        # Rounded first so that e.g. 0.55 × 100 (= 55.00000000000001) lands on the update at step 55.
        self.prune_step = math.ceil(round(fraction * self.total_steps, 6))

    def update(self) -> int:
        if self.context.step < self.prune_step:
            self._check_the_prune_will_come()
            return 0
        return sum(prune_smallest_magnitude(layer, keep) for layer, keep in zip(self.layers, self.context.plan.budgets))

    def after_step(self) -> None:
        """Refuse to finish a run that was never pruned (no topology update came after the prune step)."""
        budgets = self.context.plan.budgets
        if self.context.step >= self.total_steps and any(
            layer.active > keep for layer, keep in zip(self.layers, budgets)
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
        return interval * max(1, self.context.step // max(1, self.context.epoch))
