"""Scalar metrics of a training run, and what a run reports per epoch (:class:`Metric`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


def bits_per_char(nats: float) -> float:
    """A cross-entropy in nats per character as bits per character (÷ ln 2), the unit character-level
    language models are compared in (e.g. Graves 2013)."""
    return nats / math.log(2)


def epoch_reaching(accuracies: Sequence[float], target: float) -> int | None:
    """The first 1-based epoch whose accuracy is at least ``target``, or None if none reaches it.

    "Epochs to target accuracy" measures how fast a run converges (the convergence comparisons of
    Path-Weight/Sensitivity, Section IV, and LiSET, Section 5, read it off accuracy curves).
    """
    for epoch, accuracy in enumerate(accuracies, start=1):
        if accuracy >= target:
            return epoch
    return None


def select_epoch(values: Sequence[float], losses: Sequence[float], higher_is_better: bool = True) -> int | None:
    """The 1-based epoch a run is selected at: the best validation ``values`` (per-epoch metric), ties
    broken by the lower validation loss, then by the earlier epoch; None without validation numbers.

    Only validation numbers enter, so the test set never influences which model is reported.
    """
    if len(values) != len(losses):
        raise UsageError(f"selection needs one loss per value, got {len(values)} values and {len(losses)} losses")
    if not values:
        return None
    sign = -1.0 if higher_is_better else 1.0
    ranked = min(range(len(values)), key=lambda i: (sign * values[i], losses[i], i))
    return ranked + 1


def selection_split(result: Mapping[str, Any]) -> str:
    """``"val"`` when every epoch of a result.json has validation numbers, else ``"test"``: the split
    whose curve "epoch to target" is read off (results of schema 1, or of ``--val-fraction 0``, have
    only the test curve, and say so wherever it is used)."""
    epochs = result["epochs"]
    return "val" if epochs and all(e.get("val_acc") is not None for e in epochs) else "test"


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n − 1; 0 for a single value) of per-seed numbers."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": list(values)}


@dataclass(frozen=True)
class Metric:
    """The number a run reports per epoch in ``test_acc``: its name in result.json, labels for text and
    table headers, and its direction."""

    name: str
    label: str
    short: str
    higher_is_better: bool

    def best(self, values: Sequence[float]) -> float:
        """The best of per-epoch values: the largest accuracy, the smallest loss."""
        return max(values) if self.higher_is_better else min(values)


ACCURACY = Metric("accuracy", "accuracy", "acc", higher_is_better=True)
#: The negative evidence lower bound in nats per test sample (a loss: lower is better).
NEGATIVE_ELBO = Metric("neg_elbo_nats", "-ELBO (nats)", "-ELBO", higher_is_better=False)
METRICS = {metric.name: metric for metric in (ACCURACY, NEGATIVE_ELBO)}


def result_metric(result: Mapping[str, Any]) -> Metric:
    """The :class:`Metric` a result.json's ``test_acc`` holds (accuracy in results written before ``metric``)."""
    name = result.get("metric", ACCURACY.name)
    if name not in METRICS:
        raise UsageError(f"unknown metric {name!r} in a result; known: {', '.join(METRICS)}")
    return METRICS[name]
