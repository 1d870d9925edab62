"""A linear layer whose weight is stored truly sparse: nnz values plus CSR indices.

:class:`CsrLinear` is the module form of :func:`evosparse.backends.csr_ops.csr_linear`: time and
memory of its forward and backward passes grow with the number of connections, never with
out_features x in_features. Its topology is changed only through
:mod:`evosparse.backends.csr_topology`, which keeps the values, their gradient and the optimizer
state aligned with the structure.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from evosparse.backends.csr_ops import CsrStructure, GradientTap, csr_linear
from evosparse.errors import UsageError


class SparseLinear(nn.Module, metaclass=ABCMeta):
    """What every sparse linear module stores and answers, whatever its layout (csr, condensed).

    The trained ``values`` Parameter, an optional ``bias``, the logical (out_features, in_features) shape,
    the active positions in evosparse's flat row-major numbering and the weights there, and a
    :class:`GradientTap` slot; the backend-independent parts of a sparse layer
    (:class:`~evosparse.backends.csr_model.SparseLinearLayer`), installing and squashing and the export
    are written once against it.
    """

    values: nn.Parameter
    bias: nn.Parameter | None
    in_features: int
    out_features: int
    tap: GradientTap | None

    @property
    def shape(self) -> tuple[int, int]:
        """Logical weight shape (out_features, in_features)."""
        return (self.out_features, self.in_features)

    @property
    @abstractmethod
    def nnz(self) -> int:
        """Number of active connections."""

    @abstractmethod
    def positions(self) -> Tensor:
        """Sorted flat int64 positions ``row · in_features + col`` of the active connections."""

    @abstractmethod
    def active_values(self) -> Tensor:
        """The active weights (detached), aligned with :meth:`positions`."""

    @abstractmethod
    def active_gradient(self, gradient: Tensor) -> Tensor:
        """The entries of a tensor shaped like ``values`` (its gradient) at the active connections, in order."""

    @abstractmethod
    def set_active_values(self, values: Tensor) -> None:
        """Overwrite the active weights with ``values`` (aligned with :meth:`positions`)."""

    @abstractmethod
    def to_dense_weight(self) -> Tensor:
        """The dense (out, in) weight with zeros at inactive positions — for tests, squashing and export only."""

    def extra_repr(self) -> str:
        density = self.nnz / (self.in_features * self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
            f"density={density:.4g}, bias={self.bias is not None}"
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Let a saved layer with another connection count (csr: nnz, condensed: k_max) load: resize ``values``
        (the same Parameter) to the saved shape first."""
        saved = state_dict.get(prefix + "values")
        if isinstance(saved, Tensor) and saved.dim() == self.values.dim() and saved.shape != self.values.shape:
            set_parameter_data(self.values, self.values.data.new_empty(saved.shape))
            self.values.grad = None
        super()._load_from_state_dict(state_dict, prefix, *args)

    def csr_form(self) -> tuple[CsrStructure, Tensor]:
        """The weight as a CSR structure and its values in CSR order (what an export stores)."""
        positions = self.positions()
        rows = torch.div(positions, self.in_features, rounding_mode="floor")
        structure, order = CsrStructure.from_indices(rows, positions - rows * self.in_features, self.shape)
        return structure, self.active_values()[order.to(positions.device)]


class CsrLinear(SparseLinear):
    """y = x Wᵀ + b with W kept as ``values`` (an ``nn.Parameter`` of nnz entries) in a :class:`CsrStructure`.

    The structure's index tensors follow the module through ``.to(device)``/``.cuda()`` like buffers
    and are saved in ``state_dict`` (as extra state), so a checkpoint restores the topology with the
    values. Set :attr:`tap` to a :class:`GradientTap` on steps where a method needs dL/dW at inactive
    positions (gradient-driven growth).
    """

    def __init__(self, structure: CsrStructure, values: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(values, Tensor) or not values.is_floating_point() or values.shape != (structure.nnz,):
            raise UsageError(f"values must be a floating 1-D tensor of {structure.nnz} entries (nnz)")
        self.out_features, self.in_features = structure.shape
        self.structure = structure
        self.values = nn.Parameter(values)
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.tap: GradientTap | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_positions(
        cls, shape: tuple[int, int], positions: Tensor, values: Tensor, bias: Tensor | None = None
    ) -> CsrLinear:
        """A layer with ``values[k]`` at flat position ``positions[k]`` (= row · in_features + col), any order."""
        if positions.shape != values.shape:
            raise UsageError(f"need one value per position, got {tuple(values.shape)} for {tuple(positions.shape)}")
        positions = positions.to(torch.int64)
        rows = torch.div(positions, shape[1], rounding_mode="floor")
        structure, order = CsrStructure.from_indices(rows, positions - rows * shape[1], shape)
        return cls(structure, values.detach()[order.to(values.device)], bias)

    @classmethod
    def from_dense(cls, weight: Tensor, mask: Tensor, bias: Tensor | None = None) -> CsrLinear:
        """A layer with the entries of ``weight`` where ``mask`` is set (copies; the inputs stay untouched)."""
        if mask.shape != weight.shape or mask.dtype != torch.bool:
            raise UsageError(
                f"need a boolean mask shaped like the weight {tuple(weight.shape)}, got {mask.dtype} "
                f"{tuple(mask.shape)}"
            )
        structure = CsrStructure.from_dense_mask(mask.to(weight.device))
        values = weight.detach()[structure.row_indices, structure.col_indices].clone()
        return cls(structure, values, bias.detach().clone() if bias is not None else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor) -> CsrLinear:
        """The sparse equivalent of a masked ``nn.Linear`` (its weight where ``mask`` is set, its bias)."""
        if not isinstance(linear, nn.Linear):
            raise UsageError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        return cls.from_dense(linear.weight, mask, linear.bias)

    # -- computation ----------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """y = x Wᵀ + b for x of shape (..., in_features)."""
        return csr_linear(x, self.values, self.structure, self.bias, self.tap)

    @property
    def nnz(self) -> int:
        return self.structure.nnz

    def positions(self) -> Tensor:
        """O(nnz): CSR order is row-major, so the positions come sorted."""
        return self.structure.positions()

    def active_values(self) -> Tensor:
        return self.values.detach()

    def active_gradient(self, gradient: Tensor) -> Tensor:
        return gradient

    def set_active_values(self, values: Tensor) -> None:
        set_parameter_data(self.values, values.to(self.values.device, self.values.dtype))

    def csr_form(self) -> tuple[CsrStructure, Tensor]:
        return self.structure, self.values.detach()

    def to_dense_weight(self) -> Tensor:
        dense = self.values.new_zeros(self.shape)
        return dense.index_put_((self.structure.row_indices, self.structure.col_indices), self.values.detach())

    # -- the structure follows the module like a buffer -------------------------------------------

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> CsrLinear:
        """Apply ``fn`` (a move or cast) to parameters and to the structure's index tensors."""
        super()._apply(fn, recurse)
        moved: dict[str, Any] = {
            f.name: fn(getattr(self.structure, f.name)) for f in fields(self.structure) if f.name != "shape"
        }
        self.structure = replace(self.structure, **moved)
        return self

    def get_extra_state(self) -> dict[str, Tensor]:
        """The CSR indices, saved with the values so that a checkpoint restores the topology."""
        return {"crow_indices": self.structure.crow_indices, "col_indices": self.structure.col_indices}

    def set_extra_state(self, state: Any) -> None:
        """Rebuild the structure from saved CSR indices (validated)."""
        if not isinstance(state, dict) or not {"crow_indices", "col_indices"} <= state.keys():
            raise UsageError("saved state of a CsrLinear lacks its CSR indices")
        structure = structure_from_csr_arrays(state["crow_indices"], state["col_indices"], self.shape)
        if structure.nnz != self.values.numel():
            raise UsageError(f"saved CSR indices hold {structure.nnz} connections but {self.values.numel()} values")
        self.structure = structure.to(self.values.device)


def set_parameter_data(parameter: nn.Parameter, data: Tensor) -> None:
    """``parameter.data = data``, also when ``data`` has another shape (the Parameter keeps its identity).

    Autograd keeps one gradient accumulator per leaf, made with the leaf's shape and reused while any
    graph through the leaf is alive (a training loop's last ``loss`` keeps one); assigning ``.data``
    renews it only when the dtype or device changes, so a resized leaf would fail the next backward
    pass ("expected shape compatible with" the old size). Passing through another dtype renews it;
    hooks registered on the Parameter are kept.
    """
    if data.shape != parameter.shape:
        parameter.data = data.new_empty(0, dtype=torch.float64 if data.dtype != torch.float64 else torch.float32)
    parameter.data = data


def structure_from_csr_arrays(crow_indices: Tensor, col_indices: Tensor, shape: tuple[int, int]) -> CsrStructure:
    """A :class:`CsrStructure` from stored CSR arrays (any integer dtype), or a one-line UsageError if invalid.

    Checks that the row offsets start at 0, never decrease and end at nnz, and (through
    :meth:`CsrStructure.from_indices`) that columns are in range and no position repeats.
    """
    for name, index in (("crow_indices", crow_indices), ("col_indices", col_indices)):
        if not isinstance(index, Tensor) or index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool:
            raise UsageError(f"CSR {name} must be a 1-D integer tensor")
    crow, cols = crow_indices.to(torch.int64), col_indices.to(torch.int64)
    if crow.numel() != shape[0] + 1:
        raise UsageError(f"CSR row offsets have {crow.numel()} entries, expected {shape[0] + 1} for shape {shape}")
    counts = crow.diff()
    if int(crow[0]) != 0 or int(crow[-1]) != cols.numel() or bool((counts < 0).any()):
        raise UsageError(f"CSR row offsets are not a valid prefix sum of {cols.numel()} connections")
    rows = torch.repeat_interleave(torch.arange(shape[0], device=crow.device), counts)
    structure, order = CsrStructure.from_indices(rows, cols, shape)
    if not torch.equal(order, torch.arange(order.numel(), device=order.device)):
        raise UsageError("CSR column indices are not sorted within each row")
    return structure
