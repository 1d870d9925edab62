"""The stratified training subset: exact class counts, seeded choice, a fraction of 1 changes nothing."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from evosparse.data import load_dataset
from evosparse.data.subset import check_fraction, class_quotas, subset_indices, subset_training
from evosparse.errors import UsageError

SIZES = st.lists(st.integers(0, 200), min_size=1, max_size=12)
PERCENT = st.integers(1, 100)


@given(sizes=SIZES, percent=PERCENT)
def test_quotas_are_largest_remainder_roundings(sizes, percent):
    fraction = percent / 100
    quotas = [Fraction(percent, 100) * size for size in sizes]
    counts = class_quotas(sizes, fraction)
    assert sum(counts) == math.floor(Fraction(percent, 100) * sum(sizes) + Fraction(1, 2))
    assert all(math.floor(q) <= c <= math.ceil(q) for q, c in zip(quotas, counts))
    rounded_up = [q - math.floor(q) for q, c in zip(quotas, counts) if c > math.floor(q)]
    rounded_down = [q - math.floor(q) for q, c in zip(quotas, counts) if c == math.floor(q) and q != c]
    assert not rounded_up or not rounded_down or min(rounded_up) >= max(rounded_down)


def test_quotas_break_ties_towards_the_earlier_class():
    # 0.5 of (10, 5, 3): 5, 2.5, 1.5 -> 9 in all; the one extra sample goes to the first tied class.
    assert class_quotas([10, 5, 3], 0.5) == [5, 3, 1]


def test_quotas_read_the_fraction_as_its_decimal():
    # In binary floating point 0.145 · 100 is 14.4999…, which would round down to 14.
    assert class_quotas([100], 0.145) == [15]


def test_subset_keeps_exact_class_counts_of_digits():
    data = load_dataset("digits")
    reduced = subset_training(data, 0.6, seed=0)
    full_counts = Counter(data.y_train.tolist())
    kept_counts = Counter(reduced.y_train.tolist())
    classes = sorted(full_counts)
    assert [kept_counts[c] for c in classes] == class_quotas([full_counts[c] for c in classes], 0.6)
    assert all(abs(kept_counts[c] - 0.6 * full_counts[c]) < 1 for c in classes)
    assert reduced.x_test is data.x_test and reduced.y_test is data.y_test


def test_subset_rows_are_training_rows_with_their_labels():
    data = load_dataset("digits")
    keep = subset_indices(data.y_train, 0.4, seed=3)
    reduced = subset_training(data, 0.4, seed=3)
    assert torch.equal(keep, torch.unique(keep))  # sorted, no repeats
    assert torch.equal(reduced.x_train, data.x_train[keep]) and torch.equal(reduced.y_train, data.y_train[keep])


def test_same_seed_same_subset_other_seed_other_subset():
    labels = torch.arange(500) % 7
    first, again = subset_indices(labels, 0.3, seed=5), subset_indices(labels, 0.3, seed=5)
    other = subset_indices(labels, 0.3, seed=6)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert Counter(labels[first].tolist()) == Counter(labels[other].tolist())


def test_subset_leaves_the_global_random_stream_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    subset_indices(torch.arange(100) % 3, 0.5, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_fraction_one_is_the_dataset_itself():
    data = load_dataset("digits")
    assert subset_training(data, 1.0, seed=4) is data
    assert torch.equal(subset_indices(data.y_train, 1.0, seed=4), torch.arange(len(data.y_train)))


def test_sequence_labels_keep_a_share_of_whole_sequences():
    labels = torch.zeros(50, 8, dtype=torch.long)
    keep = subset_indices(labels, 0.3, seed=0)
    assert len(keep) == 15 and len(torch.unique(keep)) == 15


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.0001, math.nan, math.inf])
def test_fractions_outside_zero_one_are_refused(fraction):
    with pytest.raises(UsageError, match=r"train fraction must be in \(0, 1\]"):
        check_fraction(fraction)
    with pytest.raises(UsageError):
        subset_training(load_dataset("digits"), fraction, seed=0)


def test_a_fraction_keeping_nothing_is_refused():
    with pytest.raises(UsageError, match="keeps none of the 10 training samples"):
        subset_indices(torch.arange(10), 0.01, seed=0)
