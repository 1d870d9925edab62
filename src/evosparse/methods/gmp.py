"""GMP: gradual magnitude pruning on the cubic schedule of Zhu & Gupta (2017)."""

from __future__ import annotations

from evosparse.criteria.schedules import cubic_sparsity, last_update_step
from evosparse.errors import InvariantError, UsageError
from evosparse.methods.base import Method, Param, register, step_schedule
from evosparse.methods.context import MethodContext
from evosparse.methods.prune import prune_smallest_magnitude


@register
class GMP(Method):
    """Start dense; every Δt steps prune each layer by |w| to the sparsity of the cubic schedule.

    Each layer goes from dense (s_i = 0) at ``prune_begin`` of training to its own target budget
    (s_f = 1 − budget/size, from the chosen distribution) at the last pruning step before
    ``update_until`` of training, where it holds exactly its budget; nothing is ever regrown.
    """

    name = "gmp"
    summary = "gradual magnitude pruning, dense to the target on a cubic schedule (Zhu & Gupta 2017)"
    evolves = True
    needs_total_steps = True
    fixed_budget = False
    starts_dense = True
    supports_csr = False
    params = (
        Param("prune_begin", 0.0, "t0: fraction of training at which pruning begins", minimum=0.0, maximum=1.0),
        *step_schedule(
            "Δt: optimizer steps between pruning steps",
            "the target is reached at the last pruning step before this fraction of training",
        ),
    )

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        total = context.require_total_steps(self.name, "for its pruning schedule")
        self.begin_step: float = self.hparams["prune_begin"] * total
        self.end_step = last_update_step(self.hparams["update_interval"], self.hparams["update_until"] * total)
        if self.end_step <= self.begin_step:
            raise UsageError(
                f"gmp: no pruning step falls between prune_begin={self.hparams['prune_begin']} and "
                f"update_until={self.hparams['update_until']} of {total} steps every {self.hparams['update_interval']}"
            )

    def scheduled_count(self, numel: int, budget: int, step: int) -> int:
        """Connections a layer of ``numel`` positions keeps at ``step`` on its way to ``budget``."""
        sparsity = cubic_sparsity(step, 0.0, 1.0 - budget / numel, self.begin_step, self.end_step)
        return numel - round(sparsity * numel)

    def update(self) -> int:
        step = self.context.step
        removed = 0
        for layer, budget in zip(self.layers, self.context.plan.budgets):
            removed += prune_smallest_magnitude(layer, self.scheduled_count(layer.numel, budget, step))
            if step >= self.end_step and layer.active != budget:
                raise InvariantError(f"{layer.name} missed its budget {budget} at the end ({layer.active} active)")
        return removed
