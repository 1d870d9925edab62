"""A seeded, class-stratified share of a training split (``--train-fraction``).

The Path-Weight paper (Naji et al., Table 1) compares methods trained on 100/80/60/40 % of the
training samples. For such a comparison to be fair every method must see the same samples, so the
subset depends only on the run's seed and the labels, drawn from a generator of its own: the model's
initialisation and the batch order use other streams and are unaffected, and a fraction of 1 keeps
the dataset untouched (bit for bit the runs made before this option existed). The test split is
never reduced.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import torch

from evosparse.data.base import Dataset
from evosparse.errors import UsageError

#: Added to the run's seed so the subset's stream differs from the epoch shuffles (seed·1_000_003 + epoch).
SUBSET_STREAM = 2**40


def check_fraction(fraction: float) -> None:
    """Refuse a training fraction outside (0, 1] with one line."""
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"train fraction must be in (0, 1], got {fraction}")


def class_quotas(class_sizes: list[int], fraction: float) -> list[int]:
    """How many samples of each class a ``fraction`` of the data keeps (largest-remainder method).

    The total is ``fraction · N`` rounded half up; each class gets ``⌊fraction · n_c⌋`` and the
    classes with the largest fractional remainders (the earlier class on ties) one more, so every
    class keeps its share to within one sample. The fraction is read as the decimal it prints as
    (``0.145`` is 145/1000, not the binary float just below it), so 0.145 of 100 samples is 14.5,
    rounded to 15.
    """
    exact = Fraction(str(float(fraction)))
    quotas = [exact * size for size in class_sizes]
    counts = [math.floor(quota) for quota in quotas]
    total = math.floor(exact * sum(class_sizes) + Fraction(1, 2))
    by_remainder = sorted(range(len(quotas)), key=lambda c: (-(quotas[c] - counts[c]), c))
    for c in by_remainder[: total - sum(counts)]:
        counts[c] += 1
    return counts


def subset_indices(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of the kept samples: per class a seeded random choice of its quota.

    ``labels`` are class indices, one per sample; for sequence labels (one row per sample) there are
    no per-sample classes, so a seeded random ``fraction`` of the samples is kept instead.
    """
    check_fraction(fraction)
    indices = stratified_choice(labels, fraction, torch.Generator().manual_seed(seed + SUBSET_STREAM))
    if indices.numel() == 0:
        raise UsageError(f"train fraction {fraction} keeps none of the {labels.shape[0]} training samples")
    return indices


def stratified_choice(labels: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of a random ``fraction`` of the samples, drawn per class (:func:`class_quotas`)
    from ``generator``; sequence labels (one row per sample) have no classes and are drawn as one group."""
    if labels.dim() != 1:
        [count] = class_quotas([labels.shape[0]], fraction)
        chosen = [torch.randperm(labels.shape[0], generator=generator)[:count]]
    else:
        classes = torch.unique(labels)
        members = [torch.nonzero(labels == c).flatten() for c in classes]
        quotas = class_quotas([len(m) for m in members], fraction)
        chosen = [m[torch.randperm(len(m), generator=generator)[:q]] for m, q in zip(members, quotas)]
    return torch.cat(chosen).sort().values


def subset_training(data: Dataset, fraction: float, seed: int) -> Dataset:
    """``data`` with its training split reduced to :func:`subset_indices` (unchanged for fraction 1)."""
    check_fraction(fraction)
    if fraction == 1.0:
        return data
    keep = subset_indices(data.y_train, fraction, seed)
    return dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
