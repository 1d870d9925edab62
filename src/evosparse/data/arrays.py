"""Turning parsed NumPy splits into a :class:`Dataset`, the last step every loader shares."""

from __future__ import annotations

import numpy as np
import torch

from evosparse.data.base import Dataset, standardise
from evosparse.errors import DataError

Split = tuple[np.ndarray, np.ndarray]


def dataset_from_arrays(
    name: str,
    num_classes: int,
    train: Split,
    test: Split,
    validation: Split | None = None,
    *,
    per_feature: bool,
    class_names: tuple[str, ...] | None = None,
) -> Dataset:
    """Standardise the inputs by the training split and wrap them, with int64 labels, as a Dataset.

    Each split is ``(inputs, labels)`` with one sample per row of ``inputs`` (any sample shape).
    Labels outside ``[0, num_classes)`` raise :class:`DataError`; ``class_names`` (one per class)
    are kept on the Dataset.
    """
    splits = [train, test] if validation is None else [train, test, validation]
    for inputs, labels in splits:
        if len(inputs) != len(labels):
            raise DataError(f"{name}: {len(inputs)} samples but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{name}: labels must lie in 0..{num_classes - 1}")
    features = [torch.from_numpy(np.asarray(x, dtype=np.float32)) for x, _ in splits]
    targets = [torch.from_numpy(np.asarray(y, dtype=np.int64)) for _, y in splits]
    standardisation, (x_train, x_test, *x_val) = standardise(*features, per_feature=per_feature)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=targets[0],
        x_test=x_test,
        y_test=targets[1],
        num_classes=num_classes,
        x_val=x_val[0] if x_val else None,
        y_val=targets[2] if validation is not None else None,
        class_names=class_names,
        standardisation=standardisation,
    )
