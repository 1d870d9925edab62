"""GMP: gradual magnitude pruning on the cubic schedule of Zhu & Gupta (2017), from dense or from a sparse start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from evosparse.criteria.schedules import cubic_sparsity, last_update_step
from evosparse.errors import InvariantError, UsageError
from evosparse.methods.base import Method, Param, register, step_schedule
from evosparse.methods.context import MethodContext
from evosparse.methods.prune import prune_smallest_magnitude
from evosparse.topology.budget import BudgetRequest

#: Where a gradual pruning run starts: dense, or sparse above its target (GraNet's sparse-to-sparse setting).
INITIAL_DENSITY = Param(
    "initial_density",
    1.0,
    "global density the run starts at, above the target (1: dense, Zhu & Gupta; below: sparse from the start)",
    minimum=0.0,
    maximum=1.0,
)
PRUNE_BEGIN = Param("prune_begin", 0.0, "t0: fraction of training at which pruning begins", minimum=0.0, maximum=1.0)


class GradualPruning(Method):
    """Zhu & Gupta's schedule: every Δt steps each layer is pruned by |w| to the count of the cubic schedule,
    from its initial count at ``prune_begin`` of training to its budget at the last pruning step before
    ``update_until``. Subclasses declare ``initial_density`` and ``prune_begin`` and say what an update does."""

    evolves = True
    needs_total_steps = True
    fixed_budget = False

    @classmethod
    def budget_request(cls, hparams: Mapping[str, Any], density: float | None, epsilon: float | None) -> BudgetRequest:
        """Dense at the start (``initial_density`` 1), or sparse at ``initial_density`` (split like the target)."""
        request = super().budget_request(hparams, density, epsilon)
        if hparams["initial_density"] >= 1.0:
            return replace(request, starts_dense=True)
        return replace(request, starts_dense=False, initial_density=hparams["initial_density"])

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        start, target = self.hparams["initial_density"], context.plan.density
        if start < 1.0 and target is not None and start <= target:
            raise UsageError(f"{self.name}: initial_density={start} must be above the target density {target:.4g}")
        total = context.require_total_steps(self.name, "for its pruning schedule")
        self.prune_begin_step: float = self.hparams["prune_begin"] * total
        self.prune_end_step = last_update_step(self.hparams["update_interval"], self.hparams["update_until"] * total)
        if self.prune_end_step <= self.prune_begin_step:
            raise UsageError(
                f"{self.name}: no pruning step falls between prune_begin={self.hparams['prune_begin']} and "
                f"update_until={self.hparams['update_until']} of {total} steps every {self.hparams['update_interval']}"
            )

    def scheduled_count(self, numel: int, initial: int, budget: int, step: int) -> int:
        """Connections a layer of ``numel`` positions keeps at ``step`` on its way from ``initial`` to ``budget``."""
        s_i, s_f = 1.0 - initial / numel, 1.0 - budget / numel
        sparsity = cubic_sparsity(step, s_i, s_f, self.prune_begin_step, self.prune_end_step)
        return numel - round(sparsity * numel)

    def prune_to_schedule(self) -> int:
        """Prune every layer to the schedule's count at the current step; return how many connections went."""
        step = self.context.step
        plan = self.context.plan
        removed = 0
        for layer, initial, budget in zip(self.layers, plan.initial, plan.budgets):
            removed += prune_smallest_magnitude(layer, self.scheduled_count(layer.numel, initial, budget, step))
            if step >= self.prune_end_step and layer.active != budget:
                raise InvariantError(f"{layer.name} missed its budget {budget} at the end ({layer.active} active)")
        return removed


@register
class GMP(GradualPruning):
    """Start dense (or sparse); every Δt steps prune each layer by |w| to the sparsity of the cubic schedule.

    Each layer goes from its initial sparsity s_i (0: dense) at ``prune_begin`` of training to its own
    target budget (s_f = 1 − budget/size, from the chosen distribution) at the last pruning step before
    ``update_until`` of training, where it holds exactly its budget; nothing is ever regrown.

    ``initial_density`` below 1 starts from a random sparse topology at that global density (split over
    the layers like the target), as GraNet's sparse-to-sparse setting does (Liu et al. 2021, "Sparse
    Training via Boosting Pruning Plasticity with Neuroregeneration"; its regrowth is method ``granet``):
    the network is never dense, and training costs a fraction of dense FLOPs.
    """

    name = "gmp"
    summary = "gradual magnitude pruning, dense to the target on a cubic schedule (Zhu & Gupta 2017)"
    params = (
        INITIAL_DENSITY,
        PRUNE_BEGIN,
        *step_schedule(
            "Δt: optimizer steps between pruning steps",
            "the target is reached at the last pruning step before this fraction of training",
        ),
    )

    def update(self) -> int:
        return self.prune_to_schedule()
