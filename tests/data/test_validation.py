"""The validation split: held out per class by a fixed seed, a shipped split kept, 0 means none, bad fractions
refused."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from evosparse.data.base import Dataset
from evosparse.data.subset import class_quotas
from evosparse.data.validation import ValidationSplit, split_validation
from evosparse.errors import UsageError


def numbered(labels: list[int], *, shipped: bool = False) -> Dataset:
    """A dataset whose training sample i has the single feature i, so every split can be traced back."""
    y = torch.tensor(labels)
    x = torch.arange(len(labels), dtype=torch.float32)[:, None]
    extra = {"x_val": -torch.ones(3, 1), "y_val": torch.zeros(3, dtype=torch.long)} if shipped else {}
    return Dataset("numbered", x, y, -x[:4], y[:4], num_classes=3, **extra)


LABELS = [0] * 50 + [1] * 30 + [2] * 21


def test_held_out_share_is_per_class_disjoint_and_complete():
    data, split = split_validation(numbered(LABELS), 0.1)
    assert split == ValidationSplit("held_out", 0.1, sum(class_quotas([50, 30, 21], 0.1)))
    train_ids, val_ids = data.x_train[:, 0].long().tolist(), data.x_val[:, 0].long().tolist()
    assert sorted(train_ids + val_ids) == list(range(len(LABELS)))  # nothing lost, nothing shared
    assert Counter(data.y_val.tolist()) == Counter(dict(enumerate(class_quotas([50, 30, 21], 0.1))))
    assert data.y_train.tolist() == [LABELS[i] for i in train_ids]  # inputs stay with their labels
    assert torch.equal(data.x_test, numbered(LABELS).x_test)  # the test split is never touched


def test_the_held_out_samples_depend_on_nothing_but_the_labels_and_fraction():
    first, _ = split_validation(numbered(LABELS), 0.2)
    torch.manual_seed(123)  # the global generator (a run's seed) plays no part
    second, _ = split_validation(numbered(LABELS), 0.2)
    assert torch.equal(first.x_val, second.x_val)
    larger, _ = split_validation(numbered(LABELS), 0.4)
    assert len(larger.y_val) > len(first.y_val)


def test_a_shipped_split_is_kept_and_fraction_zero_drops_every_split():
    shipped = numbered(LABELS, shipped=True)
    kept, split = split_validation(shipped, 0.3)
    assert kept is shipped and split == ValidationSplit("shipped", 0.3, 3)
    for data in (shipped, numbered(LABELS)):
        none, split = split_validation(data, 0.0)
        assert split is None and none.x_val is None and none.y_val is None
        assert torch.equal(none.x_train, data.x_train)


def test_sequence_labels_are_held_out_as_rows():
    data = Dataset("seq", torch.randn(20, 5), torch.zeros(20, 5, dtype=torch.long), torch.randn(2, 5),
                   torch.zeros(2, 5, dtype=torch.long), num_classes=2)  # fmt: skip
    held, split = split_validation(data, 0.25)
    assert split is not None and split.samples == 5 and held.x_val.shape == (5, 5) and held.x_train.shape == (15, 5)


@pytest.mark.parametrize(
    ("labels", "fraction", "message"),
    [
        (LABELS, 1.0, "validation fraction must be in [0, 1), got 1.0"),
        (LABELS, -0.1, "validation fraction must be in [0, 1)"),
        ([0, 1, 2], 0.1, "--val-fraction 0.1 holds out 0 of the 3 training samples"),
    ],
)
def test_unusable_fractions_are_refused_in_one_line(labels, fraction, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace(")", r"\)")):
        split_validation(numbered(labels), fraction)
