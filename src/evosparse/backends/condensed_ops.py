"""Kernels of a constant fan-in linear layer in the condensed layout: y = x Wᵀ + b with W as (values, indices).

W (out_features, in_features) has exactly k connections per output unit, stored as ``values`` and
``structure.indices``, both (out_features, k) (see :mod:`evosparse.backends.condensed_layout`):
y[b, o] = Σ_j values[o, j] · x[b, indices[o, j]] + bias[o]. :func:`condensed_linear` computes it and
its gradients with work proportional to nnz · batch and no dense out x in tensor:

- forward: a weighted embedding-bag sum over the rows of xᵀ (in, batch): bag o gathers the
  batch-long rows xᵀ[indices[o, j]] and sums them weighted by values[o, j]. The gather and the
  multiply-add are fused in one kernel (FBGEMM on CPU), so no (batch, out, k) intermediate exists;
- input gradient: the same kernel over the transposed index, grad_xᵀ[i] = Σ values[o, j] · grad_yᵀ[o]
  over the connections (o, j) into column i (the values gathered into that order per step, nnz work):
  a gather rather than a scatter-add. At batch 1, a scatter (``index_add_``) of values · grad_y;
- value gradient: an SDDMM, grad_values[o, j] = Σ_b grad_y[b, o] · x[b, indices[o, j]], by
  ``torch.sparse.sampled_addmm`` on the structure read as CSR (shared with the csr backend). At
  batch 1 it is x[indices] scaled by grad_y[o] per row: one gather into the result itself;
- bias gradient: the column sums of grad_y.

Extra memory beyond the inputs and outputs: O(nnz) (the per-step value permutation, the SDDMM's
pattern and index bookkeeping inside the kernels) plus O((in + out) · batch) (xᵀ, grad_yᵀ and
their padded copies), never nnz · batch, so nothing needs chunking.

Choices, measured with ``python bench/condensed.py --alternatives`` (torch 2.13 CPU, one thread,
CPU time on a 2-core machine loaded by other jobs, so within about 20%; square width w, density
d = k / w; milliseconds):

- forward, 2048 / 0.1 / batch 256: embedding bag 5.2; CSR SpMM (MKL, as the csr backend) 12;
  gathering xᵀ rows per chunk of 256 output units into (256, k, batch) then ``bmm`` 271; gathering
  x[:, indices] into (batch, 256, k) then ``einsum`` 521 (the materialised gather is memory-bound);
  dense ``F.linear`` 21.8. At 4096 / 0.05 / 256: bag 14.2, CSR 22.9, dense 92.7;
- forward at batch 1 (4096 / 0.1): the bag kernel takes a slow path for one-element rows (12.9), so
  a zero column is appended to xᵀ (2.3); CSR SpMV 2.1, gather-multiply-sum 4.8, dense 2.8;
- input gradient, 2048 / 0.1 / 256: transposed bag 6.2, CSR of Wᵀ 12.5, ``index_add_`` of the
  (nnz, batch) products 466, dense 21.6. At batch 1 (4096 / 0.1): ``index_add_`` 2.5, transposed bag
  (padded) 7.4 (the per-step value permutation alone costs about 2.5 at 1.6 M connections);
- value gradient, 2048 / 0.1 / 256: SDDMM 9.0, FBGEMM's per-sample-weight backward of the bag 17.6,
  chunked gather + ``bmm`` 342, dense grad_yᵀ x 22. ``sampled_addmm`` on CPU is very slow for a batch
  of 2 to 7 (4096 / 0.1: 16 ms at batch 2, 51 at batch 5 against 4 at batch 8; it vectorises over
  batch in blocks of 8), so such a batch is padded with zero samples to 8 (zeros add nothing). At
  batch 1 the SDDMM allocates and fills several nnz-long buffers (index copies, a zero pattern), and
  the gather-and-scale makes the whole training step faster: 2048 / 0.1 2.7 -> 1.9 ms, 4096 / 0.05
  9.2 -> 3.4, 4096 / 0.1 9.3 -> 7.0 (dense 2.7, 32, 10; csr 3.2, 6.2, 13.9).

Precision: any floating dtype the kernels have (float32, float64; on CPU the SDDMM lacks bfloat16 and
float16). Under autocast the layer computes in the values' dtype: a lower-precision input is cast up
(differentiably) and the result has the values' dtype, so autocast neither fails nor lowers this
layer's precision. The code has no device branches: index tensors live with the structure and new
tensors are made on the input's device (the kernels dispatch to CUDA there; not measured here; on
CUDA the batch-1 ``index_add_`` sums in a nondeterministic order).

Dense gradient for growth: pass a :class:`~evosparse.backends.csr_ops.GradientTap` as ``tap`` on an
update step; it keeps xᵀ and grad_yᵀ of the backward pass, and ``tap.gradient_at(rows, cols)`` gives
∂L/∂W at any positions by the same SDDMM, without a second backward pass. Scanning every inactive
position (RigL's growth) is cheaper as dense row blocks grad_yᵀ[rows] · x, one GEMM per block from the
same two tensors, formed on update steps only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from evosparse.backends.condensed_layout import CondensedStructure
from evosparse.backends.csr_ops import GradientTap, _sampled_products
from evosparse.backends.sparse_linear_function import SparseLinearFunction, SparseLinearKernels, check_operands


def condensed_linear(
    x: Tensor,
    values: Tensor,
    structure: CondensedStructure,
    bias: Tensor | None = None,
    tap: GradientTap | None = None,
) -> Tensor:
    """y = x Wᵀ + b for x of shape (..., in_features), W given by ``values`` (out_features, k) in ``structure``.

    The result has shape (..., out_features); for a 2-D x it is column-major (the (out, batch) product is
    what is computed, and a following condensed layer reads its transpose without a copy). The gradient
    of ``values`` has their shape. ``tap`` (optional) receives xᵀ and grad_yᵀ in backward. Without any
    gradient to compute (``torch.no_grad()`` or no operand requiring one) only the forward kernel runs
    and nothing is kept for a backward pass.
    """
    device_type = values.device.type
    if torch.is_autocast_enabled(device_type) and x.is_floating_point():
        with torch.autocast(device_type, enabled=False):
            return condensed_linear(x.to(values.dtype), values, structure, bias, tap)
    check_operands(
        x,
        values,
        bias,
        shape=structure.shape,
        device=structure.device,
        values_shape=tuple(structure.indices.shape),
        values_meaning="out_features, k",
    )
    x_2d = x.reshape(-1, structure.shape[1])
    operands = (x_2d, values) if bias is None else (x_2d, values, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in operands):
        y_2d = SparseLinearFunction.apply(x_2d, values, bias, structure, tap, KERNELS)
    else:
        y_2d = KERNELS.forward(x_2d.t().contiguous(), values, bias, structure)
    return y_2d.reshape(*x.shape[:-1], structure.shape[0])


class CondensedKernels:
    """The condensed layout's products, for :class:`~evosparse.backends.sparse_linear_function.SparseLinearFunction`."""

    @staticmethod
    def forward(x_t: Tensor, values: Tensor, bias: Tensor | None, structure: CondensedStructure) -> Tensor:
        """y (batch, out), column-major, from xᵀ (in, batch): weighted bag sums of xᵀ's rows, plus the bias."""
        y_t = _weighted_bag_sums(structure.indices, x_t, None, values)
        if bias is not None:
            y_t.add_(bias.unsqueeze(1))
        # A fresh column-major tensor, not the transposed view of y_t (see SparseLinearKernels.forward), made
        # by a clone that keeps the transpose's strides: under torch.compile too, where writing through the
        # transpose of an empty tensor becomes a view again. The copy is out · batch, against nnz · batch
        # for the sums.
        return y_t.t().clone()

    @staticmethod
    def input_gradient_t(values: Tensor, grad_y_t: Tensor, structure: CondensedStructure) -> Tensor:
        """grad_xᵀ (in, batch) = Wᵀ grad_yᵀ: bag sums over the transposed index, or a scatter at batch 1."""
        if grad_y_t.shape[1] == 1:
            products = (values * grad_y_t).flatten()
            grad_x = products.new_zeros(structure.shape[1]).index_add_(0, structure.indices.flatten(), products)
            return grad_x.unsqueeze(1)
        weights = values.flatten().index_select(0, structure.t_permutation)
        return _weighted_bag_sums(structure.t_rows, grad_y_t, structure.t_offsets, weights)

    @staticmethod
    def value_gradient(x_t: Tensor, grad_y_t: Tensor, structure: CondensedStructure) -> Tensor:
        """grad_values (out, k) = Σ_b grad_yᵀ[o, b] · xᵀ[indices[o, j], b]: the SDDMM, or at batch 1
        x[indices] · grad_y."""
        flat_indices = structure.indices.flatten()
        if x_t.shape[1] == 1:
            gathered = x_t.view(-1).index_select(0, flat_indices).view(structure.indices.shape)
            return gathered.mul_(grad_y_t)
        products = _sampled_products(structure.crow_indices, flat_indices, structure.shape, grad_y_t, x_t)
        return products.view(structure.indices.shape)


KERNELS: SparseLinearKernels[CondensedStructure] = CondensedKernels()


def _weighted_bag_sums(indices: Tensor, table: Tensor, offsets: Tensor | None, weights: Tensor) -> Tensor:
    """Bag sums Σ weights[m] · table[indices[m]] (mode "sum" of ``F.embedding_bag``), one row per bag.

    Bags are the rows of a 2-D ``indices`` (then ``weights`` has its shape), or the runs of a 1-D one
    starting at ``offsets``. A one-column table gets a zero column appended: the kernel's path for
    one-element rows is about 5x slower than for two.
    """
    if table.shape[1] == 1:
        return _weighted_bag_sums(indices, F.pad(table, (0, 1)), offsets, weights)[:, :1]
    return F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=weights)
