"""A linear layer stored condensed: every output unit's inputs as one row of (out_features, k_max) slots.

:class:`CondensedLinear` is the module form of :func:`evosparse.backends.condensed_ops.condensed_linear`
for a weight whose output units hold *about* the same number of inputs — what a constant fan-in method
keeps (SRigL: k or k + 1 inputs per unit, none for an ablated unit; per-neuron SET: each unit keeps its
count). The kernels need one count for every row, so rows are **padded**: every row has k_max slots (the
largest count of the layer), the slots beyond a row's own count point at inputs the row does not use and
are marked invalid in ``valid``. An invalid slot's value and gradient stay exactly 0 (the gradient is
zeroed in the backward pass, so no optimizer moves it, and :meth:`CondensedLinear.zero_padding` re-zeroes
the values after every step), so the padding computes nothing. The alternative, an index of the
non-empty rows, would keep the kernels free of padding for ablated units but needs a scatter of the
output rows and a second structure per layer; at k or k + 1 inputs per unit the padding costs at most
1/k of the work, and an ablated unit k_max slots.

Memory per slot: the value, its gradient and the optimizer state (4 bytes each in float32, Adam two
more), the index and its transposed copies (three int32 entries and one int32 row offset per unit while
indices fit int32) and the validity flag (1 byte).

:func:`padded_layout` turns sorted positions into this layout; :func:`rewire` changes the topology with
the csr backend's preconditions and effect on the optimizer (see :mod:`evosparse.backends.csr_topology`),
rebuilding the layout in O(slots · log slots): a rewiring may change any row's count and k_max.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from evosparse.backends.condensed_layout import CondensedStructure
from evosparse.backends.condensed_ops import condensed_linear
from evosparse.backends.csr_layer import SparseLinear
from evosparse.backends.csr_ops import GradientTap
from evosparse.backends.csr_topology import carry_values, plan_rewiring, replaced
from evosparse.errors import InvariantError, UsageError


@dataclass(frozen=True)
class PaddedLayout:
    """Where sorted active positions go in the padded (out_features, k_max) slots.

    ``structure`` indexes every slot (valid or padding), ``valid`` (out_features, k_max) marks the slots of
    active connections and ``slots[m]`` is the flat slot of the m-th position.
    """

    structure: CondensedStructure
    valid: Tensor
    slots: Tensor

    def scatter(self, active: Tensor) -> Tensor:
        """A tensor of the slots' shape holding ``active`` (one entry per position) at the valid slots, 0 elsewhere."""
        flat = active.new_zeros(self.valid.numel())
        flat[self.slots] = active
        return flat.view(self.valid.shape)


def padded_layout(positions: Tensor, shape: tuple[int, int]) -> PaddedLayout:
    """The padded layout of sorted, distinct flat ``positions`` of an (out, in) weight.

    k_max is the largest row count (at least 1). A row with c < k_max connections is padded with its
    k_max − c smallest unused inputs: the j-th unused input of a row is j plus the number of its active
    inputs c_i with c_i − i ≤ j (i the rank of c_i in the row), one binary search over all rows at once;
    the padding is then merged into the sorted positions. O(slots · log slots).
    """
    out_features, in_features = shape
    device = positions.device
    rows = torch.div(positions, in_features, rounding_mode="floor")
    cols = positions - rows * in_features
    counts = torch.bincount(rows, minlength=out_features)
    k_max = max(1, int(counts.max())) if positions.numel() else 1
    row_starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(positions.numel(), device=device) - row_starts[rows]
    free_before = rows * (in_features + 1) + cols - rank  # nondecreasing: rows ascend, cols − rank too
    padding = k_max - counts
    pad_rows = torch.repeat_interleave(torch.arange(out_features, device=device), padding)
    pad_rank = torch.arange(pad_rows.numel(), device=device) - (torch.cumsum(padding, 0) - padding)[pad_rows]
    earlier = torch.searchsorted(free_before, pad_rows * (in_features + 1) + pad_rank, right=True)
    pad_cols = pad_rank + earlier - row_starts[pad_rows]
    # Both lists are sorted: merge them (each padding entry lands after the positions below it).
    pad_slots = torch.searchsorted(positions, pad_rows * in_features + pad_cols) + torch.arange(
        pad_rows.numel(), device=device
    )
    valid = torch.ones(out_features * k_max, dtype=torch.bool, device=device)
    valid[pad_slots] = False
    slots = valid.nonzero().squeeze(1)
    indices = torch.empty(out_features * k_max, dtype=torch.int64, device=device)
    indices[slots], indices[pad_slots] = cols, pad_cols
    structure = CondensedStructure.from_indices(indices.view(out_features, k_max), in_features)
    return PaddedLayout(structure, valid.view(out_features, k_max), slots)


class _ZeroPaddingGradient(torch.autograd.Function):
    """The values as they are, with the gradient at invalid (padding) slots set to exactly 0."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, valid: Tensor) -> Tensor:
        ctx.save_for_backward(valid)
        return values.view_as(values)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (valid,) = ctx.saved_tensors
        return grad * valid, None


class CondensedLinear(SparseLinear):
    """y = x Wᵀ + b with W kept as ``values`` (an ``nn.Parameter`` (out_features, k_max)) in padded condensed slots.

    ``structure`` (a :class:`CondensedStructure` over every slot) and ``valid`` follow the module through
    ``.to(device)`` and are saved in its ``state_dict`` as extra state, so a checkpoint restores the
    topology with the values. Set :attr:`tap` to a :class:`GradientTap` on steps where a method needs
    dL/dW at inactive positions.
    """

    def __init__(self, layout: PaddedLayout, values: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(values, Tensor) or not values.is_floating_point() or values.shape != layout.valid.shape:
            raise UsageError(f"values must be a floating tensor of shape {tuple(layout.valid.shape)} (out, k_max)")
        self.out_features, self.in_features = layout.structure.shape
        self.values = nn.Parameter(values)
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.tap: GradientTap | None = None
        self._set_layout(layout.structure, layout.valid)

    def _set_layout(self, structure: CondensedStructure, valid: Tensor) -> None:
        """Adopt ``structure`` and ``valid`` (and cache what the forward pass and the counts read)."""
        self.structure, self.valid = structure, valid
        self._nnz = int(valid.sum())
        self._padded = self._nnz != valid.numel()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_positions(
        cls, shape: tuple[int, int], positions: Tensor, values: Tensor, bias: Tensor | None = None
    ) -> CondensedLinear:
        """A layer with ``values[m]`` at flat position ``positions[m]`` (= row · in_features + col), any order."""
        if positions.shape != values.shape or positions.dim() != 1:
            raise UsageError(f"need one value per position, got {tuple(values.shape)} for {tuple(positions.shape)}")
        ordered, order = torch.sort(positions.to(values.device, torch.int64))
        if ordered.numel() and (int(ordered[0]) < 0 or int(ordered[-1]) >= shape[0] * shape[1]):
            raise UsageError(f"positions must lie in [0, {shape[0] * shape[1]}) for shape {shape}")
        if bool((ordered[1:] == ordered[:-1]).any()):
            raise UsageError("positions must be distinct; got a repeated position")
        layout = padded_layout(ordered, shape)
        return cls(layout, layout.scatter(values.detach()[order]), bias)

    @classmethod
    def from_dense(cls, weight: Tensor, mask: Tensor, bias: Tensor | None = None) -> CondensedLinear:
        """A layer with the entries of ``weight`` where ``mask`` is set (copies; the inputs stay untouched)."""
        if mask.shape != weight.shape or mask.dtype != torch.bool or weight.dim() != 2:
            raise UsageError(
                f"need a boolean mask shaped like the 2-D weight {tuple(weight.shape)}, got {mask.dtype} "
                f"{tuple(mask.shape)}"
            )
        positions = mask.to(weight.device).reshape(-1).nonzero().squeeze(1)
        shape = (weight.shape[0], weight.shape[1])
        copied_bias = bias.detach().clone() if bias is not None else None
        return cls.from_positions(shape, positions, weight.detach().reshape(-1)[positions].clone(), copied_bias)

    # -- computation ----------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """y = x Wᵀ + b for x of shape (..., in_features)."""
        values = _ZeroPaddingGradient.apply(self.values, self.valid) if self._padded else self.values
        return condensed_linear(x, values, self.structure, self.bias, self.tap)

    @property
    def k_max(self) -> int:
        """Slots per output unit: the largest number of inputs of any unit."""
        return self.valid.shape[1]

    @property
    def nnz(self) -> int:
        return self._nnz

    def positions(self) -> Tensor:
        positions = self.structure.positions()
        return positions[self.valid.reshape(-1)] if self._padded else positions

    def active_values(self) -> Tensor:
        return self.active_gradient(self.values.detach())

    def active_gradient(self, gradient: Tensor) -> Tensor:
        flat = gradient.reshape(-1)
        return flat[self.valid.reshape(-1)] if self._padded else flat

    @torch.no_grad()
    def set_active_values(self, values: Tensor) -> None:
        self.values.reshape(-1)[self.valid.reshape(-1)] = values.to(self.values.device, self.values.dtype)

    @torch.no_grad()
    def zero_padding(self) -> None:
        """Set the values of invalid slots to 0 (nothing to do without padding)."""
        if self._padded:
            self.values.mul_(self.valid)

    def to_dense_weight(self) -> Tensor:
        masked = self.values.detach() * self.valid
        return masked.new_zeros(self.shape).scatter_(1, self.structure.indices.to(torch.int64), masked)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k_max={self.k_max}"

    # -- the structure follows the module like a buffer -------------------------------------------

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> CondensedLinear:
        """Apply ``fn`` (a move or cast) to parameters, the structure's index tensors and ``valid``."""
        super()._apply(fn, recurse)
        self._set_layout(self.structure.to(self.values.device), self.valid.to(self.values.device))
        return self

    def get_extra_state(self) -> dict[str, Tensor]:
        """The slots' input indices and validity, saved with the values so that a checkpoint restores the topology."""
        return {"indices": self.structure.indices, "valid": self.valid}

    def set_extra_state(self, state: Any) -> None:
        """Rebuild the structure from saved indices and validity (validated)."""
        if not isinstance(state, dict) or not {"indices", "valid"} <= state.keys():
            raise UsageError("saved state of a CondensedLinear lacks its indices and validity")
        indices, valid = state["indices"], state["valid"]
        if not isinstance(valid, Tensor) or valid.dtype != torch.bool or not isinstance(indices, Tensor):
            raise UsageError("saved validity of a CondensedLinear is not a boolean tensor")
        if indices.shape != valid.shape or indices.shape != self.values.shape or indices.shape[0] != self.out_features:
            raise UsageError(
                f"saved condensed indices {tuple(indices.shape)} and validity {tuple(valid.shape)} do not fit "
                f"values {tuple(self.values.shape)}"
            )
        structure = CondensedStructure.from_indices(indices, self.in_features)
        self._set_layout(structure.to(self.values.device), valid.to(self.values.device))


@torch.no_grad()
def rewire(
    layer: CondensedLinear,
    prune: Tensor,
    grow: Tensor,
    grow_values: Tensor | float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
) -> int:
    """Deactivate flat positions ``prune``, activate ``grow`` with ``grow_values``; return the number changed.

    The preconditions and their :class:`~evosparse.errors.InvariantError` are the csr backend's
    (:class:`~evosparse.backends.csr_topology.Merge`). Any rewiring is accepted: the layout is rebuilt
    (:func:`padded_layout`), so row counts and k_max may change (SRigL's ablation moves a unit's budget
    to the others). The values Parameter keeps its identity; its gradient and every optimizer-state
    tensor shaped like it (SGD momentum, Adam moments) follow their connections, pruned entries dropped,
    grown ones and padding zero; in place when k_max is unchanged. Cost O(slots · log slots).
    """
    merge, new_values = plan_rewiring(
        f"condensed layer {layer.shape}", layer.shape, layer.positions(), prune, grow, grow_values, layer.values.dtype
    )
    layout = padded_layout(merge.new_keys, layer.shape)

    def moved(old: Tensor, grown: Tensor | float = 0.0) -> Tensor:
        return replaced(old, layout.scatter(merge.realign(layer.active_gradient(old), grown)))

    carry_values(layer.values, optimizer, moved, new_values)
    layer._set_layout(layout.structure, layout.valid)
    return int(prune.numel() + grow.numel())


def check(layer: CondensedLinear) -> None:
    """Raise InvariantError unless values, validity and structure agree and every padding value is 0."""
    name = f"condensed layer {layer.shape}"
    if layer.values.shape != layer.valid.shape or layer.valid.shape != layer.structure.indices.shape:
        raise InvariantError(f"{name}: values, validity and indices do not have one shape")
    if layer.structure.shape != layer.shape or layer.valid.dtype != torch.bool:
        raise InvariantError(f"{name}: the structure does not describe the layer")
    if bool(layer.values.detach()[~layer.valid].any()):
        raise InvariantError(f"{name}: a padding slot holds a non-zero value")
    indices = layer.structure.indices
    if indices.shape[1] > 1 and not bool((indices[:, 1:] > indices[:, :-1]).all()):
        raise InvariantError(f"{name}: the inputs of a unit are not strictly increasing")
    if layer.nnz != int(layer.valid.sum()):
        raise InvariantError(f"{name}: the cached connection count is stale")
