"""A yardstick for speed that machine load cannot bend: one training step of the dense model, timed in
the run's own process after every epoch.

A run's seconds per epoch depend on what else the machine is doing, so comparing runs made one after the
other over an hour mixes the methods' costs with the load's changes. Dividing each epoch's time per step
by the dense model's step time measured just after it, in the same process on the same device, cancels
the load to first order: ``compare`` reports that ratio ("× dense step") beside the raw seconds. The
reference model is a fresh dense copy of the run's architecture (never the run's own model), trained
on the run's first batch with the run's optimizer, all under a forked random state, so the run is
exactly the same with or without it. A csr run gets none: its dense twin would take the memory the csr
backend exists to save.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from evosparse.engine.objectives import Objective

#: Dense models above this many parameters get no reference (a csr run's dense twin may not fit).
REFERENCE_PARAMETER_LIMIT = 2**26
#: Steps timed per measurement (their median is the reference) after the untimed warm-up steps.
TIMED_STEPS = 5
WARMUP_STEPS = 2


class ReferenceStep:
    """Times training steps of a dense model built by ``build`` on one batch ``(x, y)``."""

    def __init__(
        self,
        build: Callable[[], nn.Module],
        optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        objective: Objective,
        x: Tensor,
        y: Tensor,
        *,
        enabled: bool = True,
    ) -> None:
        self.model: nn.Module | None = None
        if not enabled:
            return
        with torch.device("meta"):
            parameters = sum(p.numel() for p in build().parameters())
        if parameters > REFERENCE_PARAMETER_LIMIT:
            return
        self.device = x.device
        with self._forked_random_state():
            self.model = build().to(self.device)
        self.optimizer = optimizer(self.model)
        self.objective, self.x, self.y = objective, x, y

    def _forked_random_state(self) -> AbstractContextManager[Any]:
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=cuda)

    def _step(self) -> None:
        assert self.model is not None
        loss = self.objective.loss(self.model, self.x, self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def measure(self) -> float | None:
        """Seconds of one dense training step now (median of a few), or None without a reference model."""
        if self.model is None:
            return None
        self.model.train()
        times = []
        with self._forked_random_state():
            for index in range(WARMUP_STEPS + TIMED_STEPS):
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                started = time.perf_counter()
                self._step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                if index >= WARMUP_STEPS:
                    times.append(time.perf_counter() - started)
        return statistics.median(times)
