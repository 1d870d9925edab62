"""Truly sparse linear layer kernels: CSR storage and products whose cost grows with nnz.

A sparse weight W of logical shape (out_features, in_features) is kept as a 1-D ``values`` tensor
(one entry per active connection, an ``nn.Parameter`` an optimizer can hold) plus a
:class:`CsrStructure` with the CSR indices over rows = output units, the CSR indices of Wᵀ and the
permutation from W's value order to Wᵀ's. The structure changes only when the topology does.

:func:`csr_linear` computes y = x Wᵀ + b and its gradients without anything dense of size
out x in:

- forward: ``torch.addmm`` / ``torch.mm`` of W (CSR) times xᵀ, with xᵀ made contiguous once (it is
  also what the weight gradient reads). The (out, batch) product is written into a column-major
  (batch, out) result, so a following csr layer gets its xᵀ without a copy;
- input gradient: grad_xᵀ = Wᵀ grad_yᵀ with Wᵀ in CSR (values gathered through the permutation);
- weight gradient only at the active positions, an SDDMM:
  grad_values[k] = sum_b grad_y[b, i_k] x[b, j_k], by ``torch.sparse.sampled_addmm``;
- bias gradient: the dense column sums of grad_y.

Choices, measured with ``python bench/csr_ops.py --widths 4000 --threads 1 --clock cpu
--alternatives`` (torch 2.13 CPU with MKL, batch 128, width 4000, density 1% / 10%, best CPU time;
CPU time because the machine was shared, which made wall times of 2 threads unreliable):

- forward: ``mm(W_csr, xᵀ)`` 2.8 / 25 ms; the same with W in COO 5.5 / 54 ms; ``x @ CSR(Wᵀ)``
  (dense @ sparse takes a slow generic path) 21 / 204 ms;
- input gradient: ``mm(CSR(Wᵀ), grad_yᵀ)`` including the per-step value gather 4.1 / 32 ms;
  ``grad_y @ W_csr`` 20 / 230 ms; ``mm(W_csr.t(), grad_yᵀ)`` (a CSC operand) 8.9 / 113 ms. The
  gather uses ``index_select``, 4x faster than ``values[perm]`` (0.1 vs 0.4 ms at 160k entries);
- weight gradient: ``sampled_addmm`` 2.6 / 22 ms; gathering rows of grad_yᵀ and xᵀ per connection
  and summing their products, in chunks of 8192 connections, 35 / 358 ms. ``sampled_addmm`` also
  needs no memory beyond its nnz outputs, so it is not chunked. Operand layouts (x row- or
  column-major) differ by under 10%; xᵀ is already at hand from the forward, so it is used.
  On CUDA the same calls dispatch to cuSPARSE (SpMM, SDDMM); that path is written but was not
  measured here (no GPU).

Note: on CPU ``sampled_addmm`` propagates NaN from its ``input`` values even with beta=0 (contrary to
its documentation), so the pattern passed to it always carries zeros.

:class:`GradientTap` and :func:`sampled_gradient` give the dense gradient at any chosen positions
(for gradient-driven growth: RigL, AWS) from the (x, grad_y) of the last backward pass, without a
second backward pass, by the same SDDMM.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, fields, replace
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor

from evosparse.backends.sparse_linear_function import (
    SparseLinearFunction,
    SparseLinearKernels,
    check_operands,
    describe,
)
from evosparse.errors import UsageError

# torch warns once per process that CSR is "beta"; the calls used here are stable since torch 2.0.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)


@dataclass(frozen=True, eq=False)
class CsrStructure:
    """The index structure of one sparse weight of shape (out_features, in_features), in CSR over rows.

    Values live outside (1-D, ``nnz`` entries, in the order of ``row_indices``/``col_indices``). The
    transposed structure (CSR of Wᵀ, i.e. CSC of W) serves the input gradient: its values are
    ``values[t_permutation]``. Build with :meth:`from_indices` or :meth:`from_dense_mask`, once per
    topology change.

    The index tensors are int32 whenever nnz and both dimensions fit in it (:func:`index_dtype`), else
    int64: four index entries per connection (column, row, transposed column, permutation), 16 bytes
    instead of 32, which torch's CSR kernels (SpMM, ``sampled_addmm``) and ``index_select`` take as they
    are. Positions handed out (:meth:`positions`) are always int64.
    """

    shape: tuple[int, int]
    crow_indices: Tensor
    col_indices: Tensor
    row_indices: Tensor
    t_crow_indices: Tensor
    t_col_indices: Tensor
    t_permutation: Tensor

    @classmethod
    def from_indices(cls, rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> tuple[CsrStructure, Tensor]:
        """Structure of the active positions (rows[k], cols[k]) and the order that sorts them into CSR.

        Returns ``(structure, order)``: values given in the order of ``rows``/``cols`` become the
        structure's values as ``values[order]``. Positions must be distinct and inside ``shape``. Positions
        already in CSR order are not sorted again (their order is the identity): a 1.2M-connection layer
        drawn sparse skips an argsort and its int64 temporaries.
        """
        out_features, in_features = _check_shape(shape)
        rows, cols = _check_positions(rows, cols, (out_features, in_features))
        keys = rows * in_features + cols
        if is_strictly_increasing(keys):  # already in CSR order (a direct draw's, an export's): no sort, no gather
            identity = torch.arange(keys.numel(), device=keys.device)
            return cls._from_sorted(rows, cols, (out_features, in_features)), identity
        order = torch.argsort(keys)
        sorted_keys = keys[order]
        if bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
            raise UsageError("active positions must be distinct; got a repeated (row, col) pair")
        return cls._from_sorted(rows[order], cols[order], (out_features, in_features)), order

    @classmethod
    def from_dense_mask(cls, mask: Tensor) -> CsrStructure:
        """Structure of the nonzero entries of a 2-D mask (out_features x in_features)."""
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            raise UsageError(f"a mask must be a 2-D tensor, got {describe(mask)}")
        rows, cols = mask.nonzero(as_tuple=True)
        return cls._from_sorted(rows, cols, _check_shape(tuple(mask.shape)))

    @classmethod
    def _from_sorted(cls, rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> CsrStructure:
        """Build from positions already in CSR (row-major) order (any integer dtype)."""
        dtype = index_dtype(rows.numel(), *shape)
        t_permutation = torch.argsort(cols, stable=True)
        return cls(
            shape=shape,
            crow_indices=_compressed_offsets(rows, shape[0]).to(dtype),
            col_indices=cols.to(dtype),
            row_indices=rows.to(dtype),
            t_crow_indices=_compressed_offsets(cols, shape[1]).to(dtype),
            t_col_indices=rows[t_permutation].to(dtype),
            t_permutation=t_permutation.to(dtype),
        )

    @property
    def nnz(self) -> int:
        """Number of active connections."""
        return self.col_indices.numel()

    @property
    def device(self) -> torch.device:
        """Device of the index tensors (the values must live there too)."""
        return self.col_indices.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the index tensors (the values, their gradient and optimizer state come on top)."""
        return sum(getattr(self, f.name).nbytes for f in fields(self) if f.name != "shape")

    def positions(self) -> Tensor:
        """Sorted flat int64 positions ``row · in_features + col`` of the active connections: O(nnz)."""
        return self.row_indices.to(torch.int64) * self.shape[1] + self.col_indices

    def to(self, device: torch.device | str) -> CsrStructure:
        """The same structure with its index tensors on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "shape"}
        return replace(self, **moved)

    def sparse_weight(self, values: Tensor) -> Tensor:
        """W as a sparse CSR tensor sharing ``values`` (no copy, no dense matrix)."""
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, values, self.shape, check_invariants=False)

    def sparse_weight_t(self, values: Tensor) -> Tensor:
        """Wᵀ as a sparse CSR tensor; gathers the values into transposed order (nnz work)."""
        return torch.sparse_csr_tensor(
            self.t_crow_indices,
            self.t_col_indices,
            values.index_select(0, self.t_permutation),
            self.shape[::-1],
            check_invariants=False,
        )


class GradientTap:
    """Receives the input and output gradient of a :func:`csr_linear` call during its backward pass.

    Pass one as ``tap=`` on the steps where a dense gradient is wanted; afterwards
    :meth:`gradient_at` returns dL/dW at any positions, active or not, with no second backward pass.
    A later backward pass through the same tap replaces what it holds.
    """

    def __init__(self) -> None:
        self._x_t: Tensor | None = None
        self._grad_y_t: Tensor | None = None

    def record(self, x_t: Tensor, grad_y_t: Tensor) -> None:
        """Keep xᵀ (in x batch) and grad_yᵀ (out x batch) of the current backward pass."""
        self._x_t, self._grad_y_t = x_t, grad_y_t

    @property
    def recorded(self) -> bool:
        """Whether a backward pass has filled the tap."""
        return self._x_t is not None

    def gradient_at(self, rows: Tensor, cols: Tensor) -> Tensor:
        """dL/dW[rows[k], cols[k]] for each k, from the recorded backward pass."""
        if self._x_t is None or self._grad_y_t is None:
            raise UsageError("the gradient tap is empty: run a backward pass through csr_linear(..., tap=tap) first")
        return sampled_gradient(self._x_t.t(), self._grad_y_t.t(), rows, cols)

    def clear(self) -> None:
        """Release the recorded tensors."""
        self._x_t = self._grad_y_t = None


def csr_linear(
    x: Tensor,
    values: Tensor,
    structure: CsrStructure,
    bias: Tensor | None = None,
    tap: GradientTap | None = None,
) -> Tensor:
    """y = x Wᵀ + b for x of shape (..., in_features), W sparse (``values`` in ``structure``'s order).

    Time and memory grow with nnz, never with out x in. The gradient of ``values`` has exactly nnz
    entries in CSR order. The result has shape (..., out_features) and column-major strides (the
    (out_features, batch) product is what is computed). ``tap`` (optional) receives x and grad_y in
    backward.
    """
    device_type = values.device.type
    if torch.is_autocast_enabled(device_type) and x.is_floating_point():
        # Under autocast: compute in its dtype where torch's CSR kernels have it, else in the values' own
        # dtype (an input that autocast produced in lower precision is cast up); the casts are differentiable,
        # so gradients reach the full-precision values. The kernels then run with autocast off.
        wanted = torch.get_autocast_dtype(device_type)
        dtype = wanted if kernels_support(wanted, values.device) else values.dtype
        x, values = x.to(dtype), values.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return csr_linear(x, values, structure, bias, tap)
    check_operands(
        x,
        values,
        bias,
        shape=structure.shape,
        device=structure.device,
        values_shape=(structure.nnz,),
        values_meaning="nnz",
    )
    x_2d = x.reshape(-1, structure.shape[1])
    y_2d = SparseLinearFunction.apply(x_2d, values, bias, structure, tap, KERNELS)
    return y_2d.reshape(*x.shape[:-1], structure.shape[0])


@functools.cache
def kernels_support(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether torch's sparse kernels behind :func:`csr_linear` (CSR x dense products and ``sampled_addmm``)
    run in ``dtype`` on ``device``: found by running one tiny forward and backward pass there.

    torch 2.13's CPU kernels (MKL) lack bfloat16, for example; cuSPARSE has it for some products.
    """
    structure, _ = CsrStructure.from_indices(torch.tensor([0, 1]), torch.tensor([1, 0]), (2, 2))
    structure = structure.to(device)
    values = torch.ones(2, dtype=dtype, device=device, requires_grad=True)
    x = torch.ones(3, 2, dtype=dtype, device=device, requires_grad=True)
    try:
        with torch.autocast(device.type, enabled=False):
            SparseLinearFunction.apply(x, values, None, structure, None, KERNELS).sum().backward()
    except (RuntimeError, NotImplementedError):
        return False
    return True


def sampled_gradient(x: Tensor, grad_y: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """dL/dW at positions (rows[k], cols[k]) of a linear layer y = x Wᵀ + b, in the given order.

    grad_W[i, j] = sum_b grad_y[b, i] x[b, j] over all leading (batch) dimensions. Cost O(k · batch)
    for k positions and O(k) memory; repeated positions are allowed.
    """
    if not isinstance(x, Tensor) or not isinstance(grad_y, Tensor) or x.dim() == 0 or grad_y.dim() == 0:
        raise UsageError(
            f"x and grad_y must be tensors with a feature dimension, got {describe(x)} and {describe(grad_y)}"
        )
    if x.shape[:-1] != grad_y.shape[:-1]:
        raise UsageError(f"x {tuple(x.shape)} and grad_y {tuple(grad_y.shape)} must share their leading dimensions")
    if x.dtype != grad_y.dtype or x.device != grad_y.device:
        raise UsageError(f"x ({x.dtype}, {x.device}) and grad_y ({grad_y.dtype}, {grad_y.device}) must match")
    shape = (grad_y.shape[-1], x.shape[-1])
    rows, cols = _check_positions(rows, cols, shape, device=x.device)
    keys = rows * shape[1] + cols
    if is_strictly_increasing(keys):
        unique_keys, inverse = keys, None
    else:
        unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    unique_rows = torch.div(unique_keys, shape[1], rounding_mode="floor")
    crow_indices = _compressed_offsets(unique_rows, shape[0])
    x_t = x.detach().reshape(-1, shape[1]).t().contiguous()
    grad_y_t = grad_y.detach().reshape(-1, shape[0]).t().contiguous()
    products = _sampled_products(crow_indices, unique_keys % shape[1], shape, grad_y_t, x_t)
    return products if inverse is None else products.index_select(0, inverse)


class CsrKernels:
    """The csr layout's products, for :class:`~evosparse.backends.sparse_linear_function.SparseLinearFunction`."""

    @staticmethod
    def forward(x_t: Tensor, values: Tensor, bias: Tensor | None, structure: CsrStructure) -> Tensor:
        """y (batch, out), column-major: W (CSR) times xᵀ written through y's transpose (a fresh tensor, not
        a view, so in-place ops on the output such as ReLU(inplace=True) stay legal)."""
        weight = structure.sparse_weight(values)
        batch = x_t.shape[1]
        y = torch.empty_strided((batch, structure.shape[0]), (1, batch), dtype=x_t.dtype, device=x_t.device)
        if bias is None:
            torch.mm(weight, x_t, out=y.t())
        else:
            torch.addmm(bias.unsqueeze(1), weight, x_t, out=y.t())
        return y

    @staticmethod
    def input_gradient_t(values: Tensor, grad_y_t: Tensor, structure: CsrStructure) -> Tensor:
        """grad_xᵀ = Wᵀ grad_yᵀ with Wᵀ in CSR (values gathered through the permutation)."""
        return torch.mm(structure.sparse_weight_t(values), grad_y_t)

    @staticmethod
    def value_gradient(x_t: Tensor, grad_y_t: Tensor, structure: CsrStructure) -> Tensor:
        """The SDDMM at the active positions, in CSR order."""
        return _sampled_products(structure.crow_indices, structure.col_indices, structure.shape, grad_y_t, x_t)


KERNELS: SparseLinearKernels[CsrStructure] = CsrKernels()


def _sampled_products(
    crow_indices: Tensor, col_indices: Tensor, shape: tuple[int, int], grad_y_t: Tensor, x_t: Tensor
) -> Tensor:
    """SDDMM: for each CSR entry (i, j), sum_b grad_y_t[i, b] * x_t[j, b], in CSR order.

    A batch above 1 that is not a multiple of :data:`SDDMM_BATCH_BLOCK` gets zero samples appended (they
    add nothing to the sums): ``sampled_addmm`` on CPU is up to 10x slower for a batch of 2 to 7 than for
    8 (see :func:`_padded_batch`).
    """
    return _sddmm(crow_indices, col_indices, shape, *_padded_batch(grad_y_t, x_t))


#: ``sampled_addmm`` on CPU handles the batch in blocks of this many samples (a smaller batch, above 1, is padded).
SDDMM_BATCH_BLOCK = 8


def _padded_batch(*tensors_t: Tensor) -> tuple[Tensor, ...]:
    """(features, batch) tensors with zero samples appended up to a multiple of :data:`SDDMM_BATCH_BLOCK` (batch > 1).

    Below 8 the padding saves up to 10x (4096 / 0.1: 16 ms at batch 2 and 51 at batch 5 against 4 at
    batch 8); above, a few percent (20 ms at batch 100, 17.5 at batch 104), against copies of
    (in + out) x batch elements. At batch 1 the unpadded product is the faster one.
    """
    batch = tensors_t[0].shape[1]
    missing = -batch % SDDMM_BATCH_BLOCK
    if batch <= 1 or missing == 0:
        return tensors_t
    return tuple(F.pad(t, (0, missing)) for t in tensors_t)


def _sddmm(crow_indices: Tensor, col_indices: Tensor, shape: tuple[int, int], grad_y_t: Tensor, x_t: Tensor) -> Tensor:
    """The SDDMM of :func:`_sampled_products` by one ``sampled_addmm`` call, the batch as given."""
    if col_indices.numel() == 0:
        return grad_y_t.new_zeros(0)
    zeros = grad_y_t.new_zeros(col_indices.numel())
    pattern = torch.sparse_csr_tensor(crow_indices, col_indices, zeros, shape, check_invariants=False)
    # Written into the pattern itself: with another ``out`` (or none) the kernel first copies the pattern, indices
    # included (5M connections: 15-100 ms, as long as a third of the product).
    return torch.sparse.sampled_addmm(pattern, grad_y_t, x_t.t(), beta=0.0, out=pattern).values()


def is_strictly_increasing(values: Tensor) -> bool:
    """Whether a 1-D tensor is sorted with no repeats (then its entries are CSR-ordered distinct positions)."""
    return values.numel() < 2 or bool((values[1:] > values[:-1]).all())


def index_dtype(nnz: int, *sizes: int) -> torch.dtype:
    """int32 when ``nnz`` and every dimension in ``sizes`` fit in it (so do all indices and offsets of a
    sparse structure with nnz connections), else int64."""
    return torch.int32 if max(nnz, *sizes) <= torch.iinfo(torch.int32).max else torch.int64


def _compressed_offsets(sorted_indices: Tensor, length: int) -> Tensor:
    """CSR offsets (length + 1) of a sorted index vector: entry i starts at offsets[i]."""
    counts = torch.bincount(sorted_indices, minlength=length)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _check_shape(shape: object) -> tuple[int, int]:
    """Validate a logical weight shape (out_features, in_features) of positive ints."""
    if (
        not isinstance(shape, tuple | list)
        or len(shape) != 2
        or any(not isinstance(n, Integral) or isinstance(n, bool) or n < 1 for n in shape)
    ):
        raise UsageError(f"a weight shape must be two positive ints (out_features, in_features), got {shape!r}")
    return (int(shape[0]), int(shape[1]))


def _check_positions(
    rows: Tensor, cols: Tensor, shape: tuple[int, int], device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Validate 1-D integer position vectors inside ``shape``; return them as int64 (on ``device``)."""
    for name, index in (("rows", rows), ("cols", cols)):
        if not isinstance(index, Tensor) or index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool:
            raise UsageError(f"{name} must be a 1-D integer tensor, got {describe(index)}")
    if rows.numel() != cols.numel():
        raise UsageError(f"rows and cols must have the same length, got {rows.numel()} and {cols.numel()}")
    rows, cols = rows.to(device=device, dtype=torch.int64), cols.to(device=device, dtype=torch.int64)
    for name, index, bound in (("rows", rows, shape[0]), ("cols", cols, shape[1])):
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= bound):
            raise UsageError(f"{name} must lie in [0, {bound}), got values in [{int(index.min())}, {int(index.max())}]")
    return rows, cols
