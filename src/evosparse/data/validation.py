"""The validation split that model selection reads (``--val-fraction``), so nothing selects on the test set.

A dataset that ships a validation split (MNIST and Fashion-MNIST: the last 10,000 of the official
training images) keeps it, whatever positive fraction is asked for: results then compare with the
literature that uses the same split. Every other dataset holds out a class-stratified share of its
training split, drawn from a generator with a fixed seed (:data:`VALIDATION_SEED`, not the run's
seed), so that every method and every seed of a comparison is selected on the same samples and only
training varies between seeds. The default share, 0.1, is the usual compromise for small sets: on
``digits`` it holds out 135 of 1,347 training samples (the test split stays 450), enough for a
selection step of 0.7 points while costing the training set a tenth. ``--val-fraction 0`` keeps the
behaviour of runs made before this option (no validation, the whole training split trains; a shipped
validation split is left unused). The held-out share is cut after standardisation, so its inputs are
scaled by statistics that include it: those are label-free, and the test split is never touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from evosparse.data.base import Dataset
from evosparse.data.subset import stratified_choice
from evosparse.errors import UsageError

#: Share of the training split held out when a dataset ships no validation split.
DEFAULT_VAL_FRACTION = 0.1
#: Seed of the held-out draw: fixed, so every run of a comparison is selected on the same samples.
VALIDATION_SEED = 2**41


@dataclass(frozen=True)
class ValidationSplit:
    """Where a run's validation samples came from (result.json's ``validation``).

    ``source`` is ``"shipped"`` (the dataset's own split) or ``"held_out"`` (``fraction`` of the
    training split); ``samples`` counts them.
    """

    source: str
    fraction: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_val_fraction(fraction: float) -> None:
    """Refuse a validation fraction outside [0, 1) with one line."""
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"validation fraction must be in [0, 1), got {fraction} (0 means no validation split)")


def split_validation(data: Dataset, fraction: float) -> tuple[Dataset, ValidationSplit | None]:
    """``data`` with the validation split a run of ``--val-fraction fraction`` uses, and its description.

    0 drops any validation split (``None``); a dataset's own split is kept; otherwise ``fraction`` of
    each class of the training split moves, by :data:`VALIDATION_SEED`, to the validation split.
    """
    check_val_fraction(fraction)
    if fraction == 0.0:
        return dataclasses.replace(data, x_val=None, y_val=None), None
    if data.x_val is not None and data.y_val is not None:
        return data, ValidationSplit("shipped", fraction, int(data.y_val.shape[0]))
    size = data.y_train.shape[0]
    held = stratified_choice(data.y_train, fraction, torch.Generator().manual_seed(VALIDATION_SEED))
    if held.numel() == 0 or held.numel() == size:
        raise UsageError(
            f"--val-fraction {fraction} holds out {held.numel()} of the {size} training samples; "
            "choose a fraction that leaves both splits samples (or 0 for no validation)"
        )
    kept = torch.ones(size, dtype=torch.bool)
    kept[held] = False
    split = dataclasses.replace(
        data, x_train=data.x_train[kept], y_train=data.y_train[kept], x_val=data.x_train[held], y_val=data.y_train[held]
    )
    return split, ValidationSplit("held_out", fraction, int(held.numel()))
