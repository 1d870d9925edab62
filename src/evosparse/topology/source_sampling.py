"""Drawing absent positions by their source (input unit or channel), without a dense mask.

Growth ∝ node importance (Path-Weight and Sensitivity: Naji, Abtahi and Marvasti, eq. 6 and 11) and
LiSET's growth (Radu 2021, eq. 2) choose a new connection by its *source*, the second axis of the
weight. :func:`source_weighted_sample` draws such connections from the sorted list of present
positions alone, so both backends draw exactly the same positions from the same generator state,
at a cost that grows with the number of connections and draws, not with the size of the weight.

Positions are addressed *source-major* inside: source s owns the ``per_source`` positions
(output unit, kernel offset) of its column, and its absent ones are numbered 0, 1, ... by a rank
that a binary search over the present positions turns into a position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from evosparse.criteria.time_varying import source_of
from evosparse.errors import UsageError
from evosparse.topology.positions import distinct_with_first_draw, is_member

#: Safety margin on the number of draws per round (the expected number suffices on average).
_DRAW_MARGIN = 1.1


def source_weighted_sample(
    present: Tensor, shape: tuple[int, ...], count: int, source_weights: Tensor, generator: torch.Generator
) -> Tensor:
    """``count`` distinct absent flat positions of a weight of ``shape``, drawn by their source.

    ``present`` holds the sorted flat positions of the present connections; ``source_weights`` one
    non-negative weight w_s per source (``shape[1]`` of them). This is successive sampling with a
    fixed weight w_s / free_s per absent position of source s (free_s: its absent positions before
    the call), the Efraimidis–Spirakis distribution: the first draw picks source s with probability
    ∝ w_s and a target uniformly among its absent positions (the two-stage rule of eq. 6), each
    later draw the same among the positions not drawn yet. Positions of zero-weight sources are
    drawn only once those of the positive-weight sources are exhausted, uniformly. The result is in
    draw order, on ``present``'s device.

    Cost: O(P log P) for P present positions, plus rounds of draws with replacement (a repeat is
    drawn again) of expected O(count / acceptance) draws, each located by binary search; when the
    expected draws exceed the absent positions still eligible, those are enumerated instead (then
    O(their number + P), which is O(count + P) at that point).
    """
    if source_weights.shape != (shape[1],):
        raise UsageError(f"need one source weight per input unit ({shape[1]}), got {tuple(source_weights.shape)}")
    weights = source_weights.detach().to("cpu", torch.float64).clamp_min(0)
    if not bool(torch.isfinite(weights).all()):
        raise UsageError("source weights must be finite")
    if weights.numel() and float(weights.max()) > 0:
        # Node importances can be near float64's limit and their sums must stay finite. A weight below
        # 1e-308 of the largest becomes 0 here: such a source is drawn only after the others, uniformly.
        weights = weights / weights.max()
    space = _AbsentBySource.of(present.cpu(), shape)
    available = int(space.free.sum())
    if not 0 <= count <= available:
        raise UsageError(f"cannot grow {count} connections: only {available} positions are free")
    weighted = (weights > 0) & (space.free > 0)
    from_weighted = min(count, int(space.free[weighted].sum()))
    drawn = [space.successive(torch.where(weighted, weights, 0.0), from_weighted, generator)]
    if count > from_weighted:  # zero-weight sources, each absent position equally likely
        uniform = torch.where(weighted, 0, space.free).to(torch.float64)
        drawn.append(space.successive(uniform, count - from_weighted, generator))
    return torch.cat(drawn).to(present.device)


def free_per_source(present: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Number of absent positions of each source (int64 on the CPU, one per entry of ``shape[1]``)."""
    sources = source_of(shape, present.cpu().to(torch.int64))
    return math.prod(shape) // shape[1] - torch.bincount(sources, minlength=shape[1])


@dataclass(frozen=True)
class _AbsentBySource:
    """The absent positions of a weight, numbered per source (column) by rank.

    For the present positions of one source at local offsets a_0 < a_1 < ..., g_j = a_j - j counts
    the absent offsets before a_j, so the absent offset of rank r is r + #{j : g_j ≤ r}.
    ``rank_keys`` holds source · (per_source + 1) + g_j for all present positions in source-major
    order (non-decreasing), so one ``searchsorted`` answers every (source, rank) query at once.
    """

    shape: tuple[int, ...]
    per_source: int
    free: Tensor
    starts: Tensor
    rank_keys: Tensor

    @classmethod
    def of(cls, present: Tensor, shape: tuple[int, ...]) -> _AbsentBySource:
        sources = shape[1]
        per_source = math.prod(shape) // sources
        source, local = _source_major(present.to(torch.int64), shape)
        keys = torch.sort(source * per_source + local).values
        source, local = keys // per_source, keys % per_source
        counts = torch.bincount(source, minlength=sources)
        starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        absent_before = local - (torch.arange(keys.numel()) - starts[source])
        return cls(shape, per_source, per_source - counts, starts, source * (per_source + 1) + absent_before)

    def positions(self, source: Tensor, rank: Tensor) -> Tensor:
        """Flat positions of the absent offsets of rank ``rank`` in ``source`` (element-wise)."""
        query = source * (self.per_source + 1) + rank
        present_before = torch.searchsorted(self.rank_keys, query, right=True) - self.starts[source]
        return _flat(source, rank + present_before, self.shape)

    def successive(self, weights: Tensor, count: int, generator: torch.Generator) -> Tensor:
        """``count`` absent positions by successive sampling, per-position weight weights[s] / free[s]."""
        per_position = torch.where(self.free > 0, weights / self.free.clamp_min(1), 0.0)
        chosen = torch.zeros(0, dtype=torch.int64)
        taken = torch.zeros_like(self.free)
        while chosen.numel() < count:
            needed = count - chosen.numel()
            live = (per_position > 0) & (taken < self.free)
            left = self.free - taken
            acceptance = float((per_position * left)[live].sum() / (per_position * self.free)[live].sum())
            draws = math.ceil(needed / acceptance * _DRAW_MARGIN) + 16
            if draws >= int(left[live].sum()):
                return torch.cat([chosen, self._by_keys(per_position * live, chosen, needed, generator)])
            source = torch.multinomial(weights * live, draws, replacement=True, generator=generator)
            rank = (torch.rand(draws, generator=generator, dtype=torch.float64) * self.free[source]).to(torch.int64)
            drawn = self.positions(source, torch.minimum(rank, self.free[source] - 1))
            distinct, first = distinct_with_first_draw(drawn)
            fresh = ~is_member(torch.sort(chosen).values, distinct)
            new = distinct[fresh][torch.sort(first[fresh]).indices[:needed]]
            chosen = torch.cat([chosen, new])
            taken += torch.bincount(source_of(self.shape, new), minlength=self.free.numel())
        return chosen

    def _by_keys(self, per_position: Tensor, chosen: Tensor, count: int, generator: torch.Generator) -> Tensor:
        """Enumerate the absent, not yet chosen positions of positive weight; the ``count`` with the largest
        Efraimidis–Spirakis keys log(u) / weight, in decreasing key order (successive sampling)."""
        sources = per_position.nonzero().squeeze(1)
        counts = self.free[sources]
        source = torch.repeat_interleave(sources, counts)
        rank = torch.arange(source.numel()) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        candidates = self.positions(source, rank)
        keep = ~is_member(torch.sort(chosen).values, candidates)
        candidates, source = candidates[keep], source[keep]
        uniform = torch.rand(candidates.numel(), generator=generator, dtype=torch.float64)
        keys = uniform.log() / per_position[source]
        return candidates[torch.topk(keys, count).indices]


def _source_major(flat: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(source, offset within the source's column) of flat positions of a weight of ``shape``."""
    inner = math.prod(shape[2:])
    row_size = shape[1] * inner
    output, within = flat // row_size, flat % row_size
    return within // inner, output * inner + within % inner


def _flat(source: Tensor, local: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Flat positions from (source, offset within its column): the inverse of :func:`_source_major`."""
    inner = math.prod(shape[2:])
    return (local // inner) * (shape[1] * inner) + source * inner + local % inner
