"""The 8×8 handwritten digits shipped with scikit-learn: always offline, the default dataset."""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.datasets import load_digits as _sklearn_digits
from sklearn.model_selection import train_test_split

from evosparse.data.base import Dataset, standardise

#: The split is fixed (not tied to the training seed) so every run sees the same test set.
SPLIT_SEED = 0
TEST_FRACTION = 0.25


def load_digits(data_dir: Path | None = None) -> Dataset:
    """1,797 digits as 64 features, a fixed stratified 75/25 train/test split, standardised.

    ``data_dir`` is accepted for a uniform loader signature; the data ships with scikit-learn.
    """
    bunch = _sklearn_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data, bunch.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=bunch.target
    )
    standardisation, (x_train, x_test) = standardise(
        torch.as_tensor(x_train), torch.as_tensor(x_test), per_feature=False
    )
    return Dataset(
        name="digits",
        x_train=x_train,
        y_train=torch.as_tensor(y_train, dtype=torch.long),
        x_test=x_test,
        y_test=torch.as_tensor(y_test, dtype=torch.long),
        num_classes=10,
        standardisation=standardisation,
    )
