"""Training losses read from the device in batches of steps, not after every step.

Reading a loss (``loss.item()``) makes the host wait for the device to finish the step, so the next
step's kernels cannot be queued while this one runs; on a GPU, a small model's step is then bound by
launch latency plus that wait. :class:`LossReadings` keeps each step's loss on the device (one small
copy into a preallocated buffer) and reads the pending ones in one transfer when asked: every
:data:`READ_INTERVAL` steps, before a topology update (which must not run on a diverged model) and at
the end of the epoch. The sums are the same float64 sums, in step order, as reading every step gave,
and a non-finite loss is still reported at the exact step where it first appeared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from evosparse.distributed import DistributedContext, all_sum

#: Steps between two reads of the pending losses (the progress bar's loss is refreshed as often).
READ_INTERVAL = 32


@dataclass(frozen=True)
class NonFiniteLoss:
    """The first step (1-based, within the epoch) whose loss summed over the processes was not finite."""

    step: int
    value: float


class LossReadings:
    """Per-step training losses of one epoch, kept on ``device`` until :meth:`read`.

    ``steps`` bounds the epoch's step count (the buffer's length). Each :meth:`record` takes the step's
    mean loss over this process's samples (a 0-d tensor), their number, and the step's global batch size;
    :meth:`read` transfers the losses recorded since the last read, sums each times its process's sample
    count over every process, and adds them to :attr:`total`.
    """

    def __init__(self, steps: int, device: torch.device, context: DistributedContext) -> None:
        self._losses = torch.empty(max(steps, 1), dtype=torch.float32, device=device)
        self._sizes: list[int] = []  # this process's samples per recorded step
        self._global_sizes: list[int] = []
        self._context = context
        self._read = 0
        #: Σ loss × samples over the steps read so far, and the number of those samples.
        self.total = 0.0
        self.samples = 0

    @property
    def pending(self) -> int:
        """Steps recorded but not read yet."""
        return len(self._sizes) - self._read

    def record(self, loss: torch.Tensor, local_size: int, global_size: int) -> None:
        """Keep the step's mean loss (no host synchronisation), the number of this process's samples it
        averages and the step's batch size over all processes."""
        self._losses[len(self._sizes)].copy_(loss.detach())
        self._sizes.append(local_size)
        self._global_sizes.append(global_size)

    def read(self) -> NonFiniteLoss | None:
        """Read the pending losses (one transfer); return the first non-finite one, else None."""
        start, stop = self._read, len(self._sizes)
        if start == stop:
            return None
        values = self._losses[start:stop].tolist()
        summed = all_sum([value * size for value, size in zip(values, self._sizes[start:stop])], self._context)
        self._read = stop
        for offset, step_loss in enumerate(summed):
            if not math.isfinite(step_loss):
                return NonFiniteLoss(start + offset + 1, step_loss)
            self.total += step_loss
            self.samples += self._global_sizes[start + offset]
        return None

    @property
    def mean(self) -> float:
        """Mean loss per sample over the steps read so far (NaN before any)."""
        return self.total / self.samples if self.samples else math.nan
