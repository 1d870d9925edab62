"""Per-row sampling of grid entries (topology/positions.py): exact counts, distinct and absent entries, any
block size, uniform subsets, and no grid where rows are long."""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evosparse.errors import UsageError
from evosparse.topology.positions import _first_distinct, sample_absent_per_row, sample_per_row


def chi_square_of_subsets(rows: torch.Tensor, subsets: int) -> float:
    """Pearson's statistic of how often each distinct row (a drawn subset) occurs, against all ``subsets``
    equally likely."""
    seen = collections.Counter(tuple(row.tolist()) for row in rows)
    assert len(seen) <= subsets
    expected = rows.shape[0] / subsets
    return sum((seen.get(key, 0) - expected) ** 2 / expected for key in seen) + (subsets - len(seen)) * expected


@st.composite
def grids(draw):
    rows, size = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    present = draw(st.sets(st.integers(0, rows * size - 1), max_size=rows * size))
    free = [size - sum(1 for p in present if p // size == r) for r in range(rows)]
    counts = [draw(st.integers(0, f)) for f in free]
    return rows, size, sorted(present), counts, draw(st.integers(1, 60)), draw(st.integers(0, 1000))


@settings(derandomize=True, max_examples=150, deadline=None)
@given(grid=grids())
def test_absent_entries_per_row_are_exact_distinct_absent_and_independent_of_the_present_order(grid):
    rows, size, present, counts, block, seed = grid
    present_t, counts_t = torch.tensor(present, dtype=torch.int64), torch.tensor(counts)
    drawn = sample_absent_per_row(present_t, size, counts_t, torch.Generator().manual_seed(seed), block)
    assert torch.equal(drawn, torch.unique(drawn))  # sorted and distinct
    assert not set(drawn.tolist()) & set(present)
    assert torch.bincount(drawn // size, minlength=rows).tolist() == counts
    shuffled = present_t[torch.randperm(present_t.numel(), generator=torch.Generator().manual_seed(seed))]
    again = sample_absent_per_row(shuffled, size, counts_t, torch.Generator().manual_seed(seed), block)
    assert torch.equal(again, drawn)


def test_absent_entries_of_a_row_are_a_uniform_subset_of_its_absent_ones():
    present = torch.tensor([1, 4])  # row 0 of 6 entries: 0, 2, 3, 5 absent; choose 2 of 4 (6 subsets)
    counts = torch.tensor([2])
    generator = torch.Generator().manual_seed(0)
    rows = torch.stack([sample_absent_per_row(present, 6, counts, generator, 64) for _ in range(3000)])
    assert not set(rows.flatten().tolist()) & {1, 4}
    assert chi_square_of_subsets(rows, 6) < 15.1  # chi-square, 5 degrees of freedom, 1%


@settings(derandomize=True, max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 12),
    size=st.integers(1, 12),
    fractions=st.lists(st.floats(0, 1), min_size=12, max_size=12),
    block=st.integers(1, 60),
    seed=st.integers(0, 1000),
)
def test_entries_per_row_of_an_empty_grid_are_exact_and_distinct_at_any_block_size(rows, size, fractions, block, seed):
    counts = torch.tensor([round(f * size) for f in fractions[:rows]])  # few and many per row, zero and full
    drawn = sample_per_row(size, counts, torch.Generator().manual_seed(seed), block)
    assert torch.equal(drawn, torch.unique(drawn))
    assert torch.equal(torch.bincount(drawn // size, minlength=rows), counts)


@pytest.mark.parametrize("size, count", [(8, 3), (5, 4)])  # drawn with replacement; by the smallest keys
def test_entries_per_row_of_an_empty_grid_are_uniform_subsets(size, count):
    drawn = sample_per_row(size, torch.full((4000,), count), torch.Generator().manual_seed(1), 1 << 16)
    subsets = {(8, 3): 56, (5, 4): 5}[(size, count)]
    critical = {56: 82.3, 5: 13.3}[subsets]  # chi-square at 1% for subsets - 1 degrees of freedom
    assert chi_square_of_subsets(drawn.view(4000, count) % size, subsets) < critical


def test_entries_per_row_need_no_grid_where_rows_are_long():
    counts = torch.tensor([2, 0, 3])
    drawn = sample_per_row(10**12, counts, torch.Generator().manual_seed(0), 1 << 20)
    assert torch.bincount(drawn // 10**12, minlength=3).tolist() == [2, 0, 3]
    with pytest.raises(UsageError, match="cannot draw 4 distinct entries from row 1 of 3"):
        sample_per_row(3, torch.tensor([0, 4]), torch.Generator(), 8)


def test_rows_short_of_distinct_values_draw_again_and_stay_uniform():
    """Drawing with replacement, some rows come up short and draw again (5 of 6 from 14 draws: about 1 row
    in 20 here); the redraws neither break the counts nor bias the subsets."""
    generator = torch.Generator().manual_seed(3)
    rows = torch.arange(6000)
    drawn = _first_distinct(rows, 6, torch.full((6000,), 5), 14, generator)
    assert torch.equal(torch.bincount(drawn // 6, minlength=6000), torch.full((6000,), 5))
    assert torch.equal(drawn.sort().values, torch.unique(drawn))
    assert chi_square_of_subsets(drawn.sort().values.view(6000, 5) % 6, 6) < 15.1  # 5 degrees of freedom, 1%
    every = _first_distinct(torch.arange(50), 8, torch.full((50,), 8), 20, generator)  # all of a row: many redraws
    assert torch.equal(every.sort().values, torch.arange(400))
