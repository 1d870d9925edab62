"""Uniform sampling of absent positions from a sorted list of present ones, without a dense mask.

Both sparse backends draw random growth through :func:`sample_absent`, so for the same generator
state and the same set of active positions they draw exactly the same positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from evosparse.errors import UsageError

#: Safety margin on the number of random draws per rejection round (the expected number suffices on average).
_DRAW_MARGIN = 1.1


def sample_absent(
    present: Tensor,
    total: int,
    count: int,
    generator: torch.Generator,
    exclude: Tensor | None = None,
) -> Tensor:
    """``count`` distinct positions of ``[0, total)``, uniform without replacement among those absent.

    ``present`` holds sorted, distinct int64 positions; ``exclude`` (any order, repeats allowed) lists
    more positions not to return. The result is in draw order (a uniformly random order) on
    ``present``'s device.

    Cost: let B be the number of blocked positions (present ∪ exclude). While B + count < total / 2,
    positions are drawn uniformly from ``[0, total)`` and rejected when blocked or already drawn: each
    draw is accepted with probability > 1/2 and duplicates stay rare (count < free / 2), so about
    ≤ 2.8 · count draws are expected, each checked by binary search: O(count · log B) time and memory,
    independent of ``total``. Otherwise (a nearly full layer, or growth of a large share of the free
    positions) the free positions are enumerated exactly from the gaps between blocked ones and a
    random permutation picks among them: O(total) = O(B + count) here, since B + count ≥ total / 2.
    """
    if count < 0:
        raise UsageError(f"cannot sample a negative number ({count}) of positions")
    if exclude is not None and exclude.numel() and (int(exclude.min()) < 0 or int(exclude.max()) >= total):
        raise UsageError(
            f"excluded positions must lie in [0, {total}), got values in [{int(exclude.min())}, {int(exclude.max())}]"
        )
    blocked = present if exclude is None else _sorted_union(present, exclude.to(present.device, torch.int64))
    free = total - blocked.numel()
    if count > free:
        raise UsageError(f"cannot grow {count} connections: only {free} positions are free")
    if count == 0:
        return present.new_zeros(0)
    if 2 * (blocked.numel() + count) >= total:
        return _sample_by_enumeration(blocked, total, count, generator)
    return _sample_by_rejection(blocked, total, count, generator)


def sample_absent_per_row(
    present: Tensor, row_size: int, counts: Tensor, generator: torch.Generator, block_entries: int
) -> Tensor:
    """``counts[r]`` distinct entries of each row r of a (rows, ``row_size``) grid, uniform without replacement
    among the row's absent ones; returns their sorted flat indices ``r · row_size + j``.

    ``present`` holds distinct flat indices into the grid (any order). Every row that draws gets one uniform
    key per entry (``torch.rand``, a block of about ``block_entries`` entries at a time, rows in increasing
    order), present entries are ruled out and a row keeps its ``counts[r]`` smallest keys: O(rows drawing ·
    row_size + present) time (each block reads only its rows' present entries, found by binary search in
    the sorted ``present``), O(block) memory, the same draws for the same present entries and generator
    state.
    """
    rows = torch.nonzero(counts).squeeze(1)
    present = torch.sort(present).values  # by row, so that each block of rows reads only its own entries
    present_rows = torch.div(present, row_size, rounding_mode="floor")
    free = row_size - torch.bincount(present_rows, minlength=counts.numel())
    if bool((counts < 0).any()) or bool((counts > free).any()):
        row = int(torch.nonzero((counts < 0) | (counts > free))[0])
        raise UsageError(f"cannot draw {int(counts[row])} absent entries from row {row}: {int(free[row])} are absent")
    chosen = []
    step = max(1, block_entries // max(1, row_size))
    for start in range(0, rows.numel(), step):
        block = rows[start : start + step]
        keys = torch.rand(block.numel(), row_size, generator=generator)
        first, end = torch.searchsorted(present_rows, torch.stack([block[0], block[-1] + 1])).tolist()
        entries, entry_rows = present[first:end], present_rows[first:end]
        slot = torch.searchsorted(block, entry_rows)
        inside = block[slot] == entry_rows  # rows in between that draw nothing are left out
        keys[slot[inside], entries[inside] - entry_rows[inside] * row_size] = 2.0  # above every uniform key
        wanted = counts[block]
        smallest = torch.topk(keys, int(wanted.max()), dim=1, largest=False).indices
        taken = torch.arange(smallest.shape[1]) < wanted.unsqueeze(1)
        chosen.append((block.unsqueeze(1) * row_size + smallest)[taken])
    return torch.sort(torch.cat(chosen)).values if chosen else present.new_zeros(0)


def sample_per_row(row_size: int, counts: Tensor, generator: torch.Generator, block_entries: int) -> Tensor:
    """``counts[r]`` distinct entries of each row r of an empty (rows, ``row_size``) grid, uniform without
    replacement; returns their sorted flat indices ``r · row_size + j``. No grid is formed.

    A row asking for at most half its entries draws 2 · count + 4 values with replacement and keeps the
    first ``counts[r]`` distinct ones (a uniform subset: in an i.i.d. sequence no value is likelier to come
    early than another), drawing again, twice as many, in the rare case that too few were distinct:
    O(count · log count) expected time, whatever ``row_size``. A row asking for more is drawn by
    :func:`sample_absent_per_row` with nothing present: O(row_size), at most twice its count. Rows go in
    blocks of about ``block_entries`` drawn values (bounded memory).
    """
    if bool((counts < 0).any()) or bool((counts > row_size).any()):
        row = int(torch.nonzero((counts < 0) | (counts > row_size))[0])
        raise UsageError(f"cannot draw {int(counts[row])} distinct entries from row {row} of {row_size}")
    few = (counts > 0) & (2 * counts <= row_size)
    nothing = torch.zeros(0, dtype=torch.int64)
    chosen = [sample_absent_per_row(nothing, row_size, torch.where(few, 0, counts), generator, block_entries)]
    rows = torch.nonzero(few).squeeze(1)
    if rows.numel():
        width = 2 * int(counts[rows].max()) + 4
        step = max(1, block_entries // width)
        for start in range(0, rows.numel(), step):
            block = rows[start : start + step]
            chosen.append(_first_distinct(block, row_size, counts[block], width, generator))
    return torch.sort(torch.cat(chosen)).values


def _first_distinct(rows: Tensor, row_size: int, counts: Tensor, width: int, generator: torch.Generator) -> Tensor:
    """Flat indices of each row's first ``counts`` distinct values among ``width`` uniform draws with
    replacement (twice as many again for the rows that came up short)."""
    picked = []
    while rows.numel():
        draws = torch.randint(row_size, (rows.numel(), width), generator=generator)
        values, order = torch.sort(draws, dim=1, stable=True)
        first_in_sorted = torch.ones_like(values, dtype=torch.bool)
        first_in_sorted[:, 1:] = values[:, 1:] != values[:, :-1]  # stable: the earliest draw of each value
        first = torch.zeros_like(first_in_sorted).scatter_(1, order, first_in_sorted)
        rank = first.cumsum(dim=1)
        done = rank[:, -1] >= counts
        keep = first[done] & (rank[done] <= counts[done].unsqueeze(1))
        picked.append((rows[done].unsqueeze(1) * row_size + draws[done])[keep])
        rows, counts, width = rows[~done], counts[~done], 2 * width
    return torch.cat(picked)


def is_member(sorted_values: Tensor, queries: Tensor) -> Tensor:
    """Boolean tensor: whether each query occurs in ``sorted_values`` (binary search, O(q log n))."""
    return locate(sorted_values, queries)[1]


def locate(sorted_values: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
    """For each query, its insertion slot in ``sorted_values`` and whether it occurs there.

    Binary search; sorted queries run about twice as fast as random ones (cache locality).
    """
    slots = torch.searchsorted(sorted_values, queries)
    if sorted_values.numel() == 0:
        return slots, torch.zeros(queries.shape, dtype=torch.bool, device=queries.device)
    return slots, sorted_values[slots.clamp(max=sorted_values.numel() - 1)] == queries


def complement(sorted_values: Tensor, total: int) -> Tensor:
    """The positions of ``[0, total)`` not in ``sorted_values`` (sorted, distinct), in increasing order.

    Built from the gaps between consecutive present positions: O(len + result) time and memory.
    """
    device = sorted_values.device
    bounds = torch.cat([torch.tensor([-1], device=device), sorted_values, torch.tensor([total], device=device)])
    starts = bounds[:-1] + 1
    lengths = bounds[1:] - starts
    gap_of_entry = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    first_entry_of_gap = torch.cumsum(lengths, 0) - lengths
    entries = torch.arange(gap_of_entry.numel(), device=device)
    return starts[gap_of_entry] + entries - first_entry_of_gap[gap_of_entry]


def distinct_with_first_draw(values: Tensor) -> tuple[Tensor, Tensor]:
    """The sorted distinct entries of ``values`` and, for each, the index of its first occurrence."""
    distinct, inverse = torch.unique(values, sorted=True, return_inverse=True)
    draw_index = torch.arange(values.numel(), device=values.device)
    first = torch.full((distinct.numel(),), values.numel(), dtype=torch.int64, device=values.device)
    return distinct, first.scatter_reduce_(0, inverse, draw_index, reduce="amin")


def _sorted_union(sorted_values: Tensor, extra: Tensor) -> Tensor:
    """Sorted distinct union of a sorted distinct tensor and any other int64 tensor."""
    return torch.unique(torch.cat([sorted_values, extra.reshape(-1)]), sorted=True)


def _sample_by_enumeration(blocked: Tensor, total: int, count: int, generator: torch.Generator) -> Tensor:
    """Exact draw: enumerate the free positions and take a random permutation's first ``count``."""
    free = complement(blocked, total)
    order = torch.randperm(free.numel(), generator=generator, device=generator.device)[:count]
    return free[order.to(free.device)]


def _sample_by_rejection(blocked: Tensor, total: int, count: int, generator: torch.Generator) -> Tensor:
    """Draw uniform positions, keep the first occurrence of each free one, until ``count`` are kept."""
    chosen = blocked.new_zeros(0)
    chosen_sorted = chosen
    while chosen.numel() < count:
        needed = count - chosen.numel()
        free_now = total - blocked.numel() - chosen.numel()
        draws = math.ceil(needed * total / free_now * _DRAW_MARGIN) + 16
        candidates = torch.randint(total, (draws,), generator=generator, device=generator.device)
        distinct, first_draw = distinct_with_first_draw(candidates.to(blocked.device))
        accepted = ~is_member(blocked, distinct) & ~is_member(chosen_sorted, distinct)
        in_draw_order = torch.sort(first_draw[accepted]).indices[:needed]
        chosen = torch.cat([chosen, distinct[accepted][in_draw_order]])
        chosen_sorted = torch.sort(chosen).values
    return chosen
