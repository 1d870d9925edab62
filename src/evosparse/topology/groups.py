"""Densities of groups of connections that span or split sparse layers: a transformer's blocks and heads.

A model may name such groups with ``density_groups()``, returning :class:`ConnectionGroup` objects:
each gathers parts of sparse layers — a whole layer, or a range of its output rows or input columns
(an attention head's rows of the query, key and value projections and its columns of the output
projection). :func:`group_densities` counts the active connections of each group from the layers'
positions, so it reads the same on every backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from evosparse.topology.layer import SparseLayer


@dataclass(frozen=True)
class LayerPart:
    """A sparse layer (by name), whole (``axis`` None) or rows (``axis`` 0) / columns (``axis`` 1) [start, stop)."""

    layer: str
    axis: int | None = None
    start: int = 0
    stop: int = 0


@dataclass(frozen=True)
class ConnectionGroup:
    name: str
    parts: tuple[LayerPart, ...]


def _count(layer: SparseLayer, part: LayerPart) -> tuple[int, int]:
    """(active, total) connections of ``part`` of ``layer`` (seen as an out × in matrix)."""
    rows, columns = layer.shape[0], layer.numel // layer.shape[0]
    if part.axis is None:
        return layer.active, layer.numel
    positions = layer.active_positions()
    index = torch.div(positions, columns, rounding_mode="floor") if part.axis == 0 else positions % columns
    active = int(((index >= part.start) & (index < part.stop)).sum())
    return active, (part.stop - part.start) * (columns if part.axis == 0 else rows)


def group_densities(
    groups: Sequence[ConnectionGroup], layers: Mapping[str, SparseLayer]
) -> list[dict[str, int | float | str]]:
    """``name``, ``active``, ``total`` and ``density`` of every group, in the order given."""
    report: list[dict[str, int | float | str]] = []
    for group in groups:
        counts = [_count(layers[part.layer], part) for part in group.parts]
        active, total = sum(a for a, _ in counts), sum(t for _, t in counts)
        report.append({"name": group.name, "active": active, "total": total, "density": active / total})
    return report
