"""Losses kept on the device and read in batches give the per-step readings' sums and first bad step."""

import math

import torch

from evosparse.distributed import DistributedContext
from evosparse.engine.loss_readings import LossReadings


def single_process() -> DistributedContext:
    return DistributedContext()


def test_batched_reads_sum_as_reading_every_step_did():
    generator = torch.Generator().manual_seed(0)
    values = (torch.rand(50, generator=generator) * 3).tolist()
    sizes = [32] * 49 + [17]
    readings = LossReadings(50, torch.device("cpu"), single_process())
    for step, (value, size) in enumerate(zip(values, sizes), 1):
        readings.record(torch.tensor(value), size, size)
        if step % 7 == 0:
            assert readings.read() is None and readings.pending == 0
    assert readings.pending == 50 % 7
    assert readings.read() is None
    expected = 0.0
    for value, size in zip(values, sizes):  # the float64 sum, in step order, of the float32 losses
        expected += torch.tensor(value, dtype=torch.float32).item() * size
    assert readings.total == expected and readings.samples == sum(sizes)
    assert readings.mean == expected / sum(sizes)


def test_the_first_non_finite_step_is_named_exactly():
    readings = LossReadings(20, torch.device("cpu"), single_process())
    assert math.isnan(readings.mean)
    for value in [1.0, 2.0, float("inf"), float("nan"), 1.0]:
        readings.record(torch.tensor(value), 4, 8)
    diverged = readings.read()
    assert diverged is not None and diverged.step == 3 and diverged.value == math.inf
    assert readings.samples == 16 and readings.total == 12.0  # the two finite steps before it
