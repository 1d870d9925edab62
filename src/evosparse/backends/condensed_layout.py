"""The condensed layout of a constant fan-in weight: values and input indices as two (out_features, k) tensors.

A weight W of logical shape (out_features, in_features) whose every row (output unit) has exactly k
active connections is stored as ``values`` (out_features, k) and ``indices`` (out_features, k), with
W[o, indices[o, j]] = values[o, j] and each row of ``indices`` strictly increasing. Read in row-major
order, (o, indices[o, j]) is evosparse's flat numbering ``o · in_features + indices[o, j]`` in
increasing order, so ``values.flatten()`` is aligned with the sorted active positions, as
:meth:`~evosparse.topology.layer.SparseLayer.active_values` is with ``active_positions``.

:class:`CondensedStructure` holds the indices and what the kernels of
:mod:`evosparse.backends.condensed_ops` derive from them once per topology change (the transposed
index that turns the input gradient into a gather). :func:`condense` and :func:`expand` convert
between a dense weight with a constant-row-count mask and the condensed pair.

Index tensors are int32 whenever every index and offset fits (nnz and in_features below 2³¹): the
kernels read them at every step, and the narrower type makes the embedding-bag sums 8 to 18% faster
and the SDDMM up to 12% (bench/condensed.py cases of width 2048 and 4096, density 0.1); flat positions
handed out are int64, as everywhere in evosparse.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from evosparse.backends.csr_ops import _check_shape, _compressed_offsets, index_dtype
from evosparse.backends.sparse_linear_function import describe
from evosparse.errors import UsageError


@dataclass(frozen=True, eq=False)
class CondensedStructure:
    """The indices of a constant fan-in weight and their transposed (column-major) order.

    ``indices`` (out_features, k): the input column of each connection, rows strictly increasing, in
    :func:`index_dtype`.
    The transposed fields list the same nnz connections grouped by input column (rows increasing within
    a column): ``t_rows[m]`` is the output unit of the m-th one, ``t_permutation[m]`` its place in
    ``values.flatten()`` and ``t_offsets[i]`` where column i's group starts (an embedding-bag offset).
    ``crow_indices`` (out_features + 1 entries, o · k) reads the structure as CSR for the SDDMM of the
    value gradient. Build with :meth:`from_indices`, :meth:`from_positions` or :meth:`from_mask`.
    """

    shape: tuple[int, int]
    indices: Tensor
    crow_indices: Tensor
    t_offsets: Tensor
    t_rows: Tensor
    t_permutation: Tensor

    @classmethod
    def from_indices(cls, indices: Tensor, in_features: int) -> CondensedStructure:
        """Structure of ``indices`` (out_features, k), each row strictly increasing and inside [0, in_features)."""
        if (
            not isinstance(indices, Tensor)
            or indices.dim() != 2
            or indices.is_floating_point()
            or indices.dtype == torch.bool
        ):
            raise UsageError(f"indices must be a 2-D integer tensor (out_features, k), got {describe(indices)}")
        out_features, in_features = _check_shape((indices.shape[0], in_features))
        if indices.shape[1] == 0:
            raise UsageError("a condensed weight needs at least one connection per output unit, got k = 0")
        if int(indices.min()) < 0 or int(indices.max()) >= in_features:
            raise UsageError(
                f"indices must lie in [0, {in_features}), got values in [{int(indices.min())}, {int(indices.max())}]"
            )
        if not bool((indices[:, 1:] > indices[:, :-1]).all()):
            raise UsageError("each row of indices must be strictly increasing (sorted, no repeated input)")
        fan_in = indices.shape[1]
        flat = indices.flatten().to(torch.int64)
        t_permutation = torch.argsort(flat, stable=True)
        dtype = index_dtype(flat.numel(), in_features)
        return cls(
            shape=(out_features, in_features),
            indices=indices.to(dtype),
            crow_indices=(torch.arange(out_features + 1, device=indices.device) * fan_in).to(dtype),
            t_offsets=_compressed_offsets(flat, in_features)[:-1].to(dtype),
            t_rows=torch.div(t_permutation, fan_in, rounding_mode="floor").to(dtype),
            t_permutation=t_permutation.to(dtype),
        )

    @classmethod
    def from_positions(cls, positions: Tensor, shape: tuple[int, int]) -> CondensedStructure:
        """Structure of the flat positions ``row · in_features + col`` (any order, distinct), equal count per row.

        ``values.flatten()`` of the result follows the sorted positions.
        """
        out_features, in_features = _check_shape(shape)
        if not isinstance(positions, Tensor) or positions.dim() != 1 or positions.is_floating_point():
            raise UsageError(f"positions must be a 1-D integer tensor, got {describe(positions)}")
        positions = torch.sort(positions.to(torch.int64)).values
        if positions.numel() and (int(positions[0]) < 0 or int(positions[-1]) >= out_features * in_features):
            raise UsageError(f"positions must lie in [0, {out_features * in_features}) for shape {shape}")
        if bool((positions[1:] == positions[:-1]).any()):
            raise UsageError("positions must be distinct; got a repeated position")
        rows = torch.div(positions, in_features, rounding_mode="floor")
        counts = torch.bincount(rows, minlength=out_features)
        uneven = torch.nonzero(counts != counts[0])
        if uneven.numel():
            row = int(uneven[0])
            raise UsageError(
                "a condensed weight needs the same number of connections in every row (constant fan-in): "
                f"row 0 has {int(counts[0])}, row {row} has {int(counts[row])}"
            )
        fan_in = positions.numel() // out_features
        return cls.from_indices((positions - rows * in_features).view(out_features, fan_in), in_features)

    @classmethod
    def from_mask(cls, mask: Tensor) -> CondensedStructure:
        """Structure of the set entries of a 2-D boolean mask (out_features, in_features) with equal row counts."""
        if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.dtype != torch.bool:
            raise UsageError(f"a mask must be a 2-D boolean tensor, got {describe(mask)}")
        return cls.from_positions(torch.nonzero(mask.flatten()).flatten(), (mask.shape[0], mask.shape[1]))

    @property
    def fan_in(self) -> int:
        """k: the number of connections of every output unit."""
        return self.indices.shape[1]

    @property
    def nnz(self) -> int:
        """Number of active connections (out_features · k)."""
        return self.indices.numel()

    @property
    def device(self) -> torch.device:
        """Device of the index tensors (the values must live there too)."""
        return self.indices.device

    def positions(self) -> Tensor:
        """Sorted flat int64 positions ``row · in_features + col``, aligned with ``values.flatten()``."""
        rows = torch.arange(self.shape[0], device=self.device).unsqueeze(1)
        return (rows * self.shape[1] + self.indices.to(torch.int64)).flatten()

    def to(self, device: torch.device | str) -> CondensedStructure:
        """The same structure with its index tensors on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "shape"}
        return replace(self, **moved)


def condense(weight: Tensor, mask: Tensor) -> tuple[Tensor, CondensedStructure]:
    """(values, structure) of ``weight`` (out_features, in_features) at the set entries of ``mask``.

    ``mask`` must set the same number of entries in every row; ``values`` is a new (out_features, k)
    tensor (``weight`` is left untouched), on ``weight``'s device, rows in increasing column order.
    """
    if (
        not isinstance(weight, Tensor)
        or weight.dim() != 2
        or not isinstance(mask, Tensor)
        or mask.shape != weight.shape
    ):
        raise UsageError(f"need a 2-D weight and a mask of its shape, got {describe(weight)} and {describe(mask)}")
    structure = CondensedStructure.from_mask(mask).to(weight.device)
    return weight.detach().gather(1, structure.indices.to(torch.int64)), structure


def expand(values: Tensor, structure: CondensedStructure) -> Tensor:
    """The dense (out_features, in_features) weight with ``values`` at the structure's positions, zero elsewhere."""
    if not isinstance(values, Tensor) or values.shape != structure.indices.shape:
        raise UsageError(f"values must have shape {tuple(structure.indices.shape)}, got {describe(values)}")
    return values.new_zeros(structure.shape).scatter(1, structure.indices.to(torch.int64), values)
