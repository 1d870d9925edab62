"""Timing helper shared by the benchmark scripts (they run as ``python bench/NAME.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

Result = TypeVar("Result")


def best_time(repeats: int, work: Callable[[], Result]) -> tuple[float, Result]:
    """Best wall time of ``repeats`` calls of ``work`` and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result
