"""What a method may see and do: :class:`MethodContext`, handed to it by the Sparsifier.

A method reads its parameters, its generator, the clock (step, epoch, training length), the budget
plan and its sparse layers (:class:`~evosparse.topology.layer.SparseLayer`, the same protocol on every
backend and device), and may rewire those layers, register hooks and add parameters to the user's
optimizer. It never sees the Sparsifier, so it cannot change its bookkeeping: what a method decides
about the run (its budget, whether its budget is fixed) it states as facts the Sparsifier reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from evosparse.errors import UsageError
from evosparse.topology.budget import BudgetPlan
from evosparse.topology.layer import SparseLayer


@dataclass
class Clock:
    """Where training stands: optimizer steps and epochs done, and the training length when known."""

    step: int = 0
    epoch: int = 0
    total_steps: int | None = None


class MethodContext:
    """A method's window on the run (see the module docstring).

    Args:
        layers: the sparse layers, final (their backend chosen, on their device), in model order.
        hparams: the method's validated parameters.
        generator: the CPU generator every random choice of the method draws from (checkpointed).
        model: the model being trained (for hooks on modules the layers do not cover).
        optimizer: the user's optimizer, or None.
        plan: the per-layer budget targets of the run.
        clock: the Sparsifier's clock, read-only here.
        update_pending: whether the coming optimizer step will be followed by a topology update.
    """

    def __init__(
        self,
        *,
        layers: Sequence[SparseLayer],
        hparams: Mapping[str, Any],
        generator: torch.Generator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        plan: BudgetPlan,
        clock: Clock,
        update_pending: Callable[[], bool],
    ) -> None:
        self.layers: tuple[SparseLayer, ...] = tuple(layers)
        self.hparams: Mapping[str, Any] = MappingProxyType(dict(hparams))
        self.generator = generator
        self.model = model
        self.optimizer = optimizer
        self.plan = plan
        self._clock = clock
        self._update_pending = update_pending

    @property
    def step(self) -> int:
        """Optimizer steps done so far."""
        return self._clock.step

    @property
    def epoch(self) -> int:
        """Epochs done so far."""
        return self._clock.epoch

    @property
    def total_steps(self) -> int | None:
        """The training length in optimizer steps, when the caller gave it."""
        return self._clock.total_steps

    def update_pending(self) -> bool:
        """Whether the coming optimizer step will be followed by a step-scheduled topology update."""
        return self._update_pending()

    def require_total_steps(self, method: str, why: str) -> int:
        """The training length, or a one-line UsageError saying that ``method`` needs it ``why``."""
        if self._clock.total_steps is None:
            raise UsageError(f"method {method} needs total_steps, the length of training, {why}")
        return self._clock.total_steps

    def require_optimizer(self, method: str, why: str) -> torch.optim.Optimizer:
        """The user's optimizer, or a one-line UsageError saying that ``method`` needs it ``why``."""
        if self.optimizer is None:
            raise UsageError(f"{method} {why}: pass the optimizer to sparsify()")
        return self.optimizer

    def add_param_group(self, parameters: Iterable[torch.Tensor]) -> None:
        """Let the user's optimizer train ``parameters`` too (modules a method adds for training only)."""
        if self.optimizer is None:
            raise UsageError(
                "this method trains parameters of its own with the model's optimizer: pass it to sparsify()"
            )
        self.optimizer.add_param_group({"params": list(parameters)})
