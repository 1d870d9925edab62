"""Scalar metrics of a training run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from evosparse.errors import UsageError


def ara(accuracies: Sequence[float], b: float = 0.5) -> float:
    """Average Ratioed Accuracy: a weighted mean of per-epoch accuracies favouring later epochs.

    LiSET (eq. 3): ARA = Σ_i a_i (i·c1 + c2) / (n²(b+1)/2) with c1 = (n − n·b)/(n − 1) and
    c2 = n − n·c1, i = 1..n. The first epoch weighs b times the last; b = 1 gives the plain mean.
    A single epoch returns its accuracy.
    """
    n = len(accuracies)
    if n == 0:
        raise UsageError("ARA needs at least one accuracy")
    if not b > 0:
        raise UsageError(f"ARA's b must be positive, got {b}")
    if n == 1:
        return float(accuracies[0])
    c1 = (n - n * b) / (n - 1)
    c2 = n - n * c1
    weighted = sum(a * (i * c1 + c2) for i, a in enumerate(accuracies, start=1))
    return float(weighted / (n * n * (b + 1) / 2))


def epoch_reaching(accuracies: Sequence[float], target: float) -> int | None:
    """The first 1-based epoch whose accuracy is at least ``target``, or None if none reaches it.

    "Epochs to target accuracy" measures how fast a run converges (the convergence comparisons of
    Path-Weight/Sensitivity, Section IV, and LiSET, Section 5, read it off accuracy curves).
    """
    for epoch, accuracy in enumerate(accuracies, start=1):
        if accuracy >= target:
            return epoch
    return None


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n − 1; 0 for a single value) of per-seed numbers."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": list(values)}
