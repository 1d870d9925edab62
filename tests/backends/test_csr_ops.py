"""csr_ops against a dense masked reference: values, gradients, structure, tap, and usage errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from evosparse.backends.csr_ops import (
    SDDMM_BATCH_BLOCK,
    CsrStructure,
    GradientTap,
    _sampled_products,
    csr_linear,
    index_dtype,
    sampled_gradient,
)
from evosparse.errors import UsageError
from support import assert_all_close, sparse_and_dense_passes

F64 = torch.float64


def random_mask(out_features: int, in_features: int, density: float, seed: int) -> torch.Tensor:
    """A boolean mask with about ``density`` of its entries set, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(out_features, in_features, generator=generator) < density


def dense_weight(structure: CsrStructure, values: torch.Tensor) -> torch.Tensor:
    """The dense matrix with ``values`` at the structure's positions and zeros elsewhere (differentiable)."""
    zeros = values.new_zeros(structure.shape)
    return zeros.index_put((structure.row_indices, structure.col_indices), values)


def run_both(mask: torch.Tensor, batch_shape: tuple[int, ...], with_bias: bool, seed: int, dtype=F64):
    """Forward and backward through csr_linear and through F.linear on the dense masked weight.

    Returns ((y, grad_x, grad_values, grad_bias) for csr, the same for the reference).
    """
    generator = torch.Generator().manual_seed(seed)
    structure = CsrStructure.from_dense_mask(mask)
    out_features, in_features = mask.shape
    x0 = torch.randn(*batch_shape, in_features, generator=generator, dtype=dtype)
    values0 = torch.randn(structure.nnz, generator=generator, dtype=dtype)
    bias0 = torch.randn(out_features, generator=generator, dtype=dtype) if with_bias else None
    grad_y = torch.randn(*batch_shape, out_features, generator=generator, dtype=dtype)

    return sparse_and_dense_passes(
        lambda x, values, bias: csr_linear(x, values, structure, bias),
        lambda values: dense_weight(structure, values),
        x0,
        values0,
        bias0,
        grad_y,
    )


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    out_features=st.integers(1, 9),
    in_features=st.integers(1, 9),
    density=st.sampled_from([0.0, 0.1, 0.4, 0.8, 1.0]),
    batch_shape=st.sampled_from([(1,), (5,), (2, 3), (0,), ()]),
    with_bias=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_matches_dense_masked_reference(out_features, in_features, density, batch_shape, with_bias, seed):
    mask = random_mask(out_features, in_features, density, seed)
    csr, reference = run_both(mask, batch_shape, with_bias, seed)
    assert_all_close(csr, reference)


@pytest.mark.parametrize(
    "case",
    ["empty_rows", "empty_columns", "no_connections", "single_connection"],
)
def test_edge_structures_match_reference(case):
    mask = random_mask(6, 5, 0.6, seed=3)
    if case == "empty_rows":
        mask[[0, 2, 5]] = False
    elif case == "empty_columns":
        mask[:, [1, 4]] = False
    elif case == "no_connections":
        mask[:] = False
    else:
        mask[:] = False
        mask[4, 2] = True
    csr, reference = run_both(mask, (7,), with_bias=True, seed=1)
    assert_all_close(csr, reference)
    assert csr[2].shape == (int(mask.sum()),)


def test_float32_matches_reference_at_width_300():
    mask = random_mask(300, 200, 0.05, seed=4)
    csr, reference = run_both(mask, (16,), with_bias=True, seed=2, dtype=torch.float32)
    assert_all_close(csr, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_bias", [False, True])
def test_gradcheck_float64(with_bias):
    generator = torch.Generator().manual_seed(5)
    structure = CsrStructure.from_dense_mask(random_mask(4, 6, 0.4, seed=5))
    x = torch.randn(3, 6, generator=generator, dtype=F64, requires_grad=True)
    values = torch.randn(structure.nnz, generator=generator, dtype=F64, requires_grad=True)
    bias = torch.randn(4, generator=generator, dtype=F64, requires_grad=True) if with_bias else None
    assert torch.autograd.gradcheck(
        lambda *a: csr_linear(a[0], a[1], structure, *a[2:]), (x, values) + ((bias,) if with_bias else ())
    )


def test_frozen_values_or_input_get_only_the_requested_gradients():
    structure = CsrStructure.from_dense_mask(random_mask(5, 4, 0.5, seed=6))
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    values = torch.randn(structure.nnz, dtype=F64)
    csr_linear(x, values, structure).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3, 5, dtype=F64) @ dense_weight(structure, values))

    x_frozen = torch.randn(3, 4, dtype=F64)
    values.requires_grad_()
    csr_linear(x_frozen, values, structure).sum().backward()
    expected = (torch.ones(5, 3, dtype=F64) @ x_frozen)[structure.row_indices, structure.col_indices]
    torch.testing.assert_close(values.grad, expected)


def test_in_place_activation_on_output_keeps_gradients_right():
    mask = random_mask(5, 4, 0.6, seed=7)
    structure = CsrStructure.from_dense_mask(mask)
    values = torch.randn(structure.nnz, dtype=F64, requires_grad=True)
    x = torch.randn(6, 4, dtype=F64)
    torch.relu_(csr_linear(x, values, structure)).sum().backward()
    reference_values = values.detach().clone().requires_grad_()
    F.relu(F.linear(x, dense_weight(structure, reference_values))).sum().backward()
    torch.testing.assert_close(values.grad, reference_values.grad)


def test_structure_indices_are_csr_of_w_and_of_w_transposed():
    mask = random_mask(7, 5, 0.4, seed=8)
    mask[3] = False
    structure = CsrStructure.from_dense_mask(mask)
    rows, cols = mask.nonzero(as_tuple=True)
    assert torch.equal(structure.row_indices, rows) and torch.equal(structure.col_indices, cols)
    assert torch.equal(structure.crow_indices, torch.tensor([0] + mask.sum(1).cumsum(0).tolist()))
    t_rows, t_cols = mask.t().nonzero(as_tuple=True)
    assert torch.equal(structure.t_col_indices, t_cols)
    assert torch.equal(structure.t_crow_indices, torch.tensor([0] + mask.sum(0).cumsum(0).tolist()))
    values = torch.arange(1.0, structure.nnz + 1, dtype=F64)
    dense = dense_weight(structure, values)
    assert torch.equal(values[structure.t_permutation], dense.t()[t_rows, t_cols])
    assert torch.equal(structure.sparse_weight_t(values).to_dense(), dense.t())
    assert torch.equal(structure.sparse_weight(values).to_dense(), dense)


def test_from_indices_sorts_and_returns_the_value_order():
    mask = random_mask(6, 8, 0.3, seed=9)
    rows, cols = mask.nonzero(as_tuple=True)
    shuffle = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(9))
    rows, cols = rows[shuffle].to(torch.int32), cols[shuffle].to(torch.int32)
    values = torch.randn(rows.numel(), dtype=F64)
    structure, order = CsrStructure.from_indices(rows, cols, (6, 8))
    reference = CsrStructure.from_dense_mask(mask)
    for name in ("crow_indices", "col_indices", "row_indices", "t_crow_indices", "t_col_indices", "t_permutation"):
        assert torch.equal(getattr(structure, name), getattr(reference, name)), name
        assert getattr(structure, name).dtype == torch.int32
    expected = torch.zeros(6, 8, dtype=F64).index_put((rows.long(), cols.long()), values)
    assert torch.equal(dense_weight(structure, values[order]), expected)


def test_positions_already_in_csr_order_keep_their_order_and_are_still_checked():
    mask = random_mask(7, 5, 0.4, seed=4)
    reference = CsrStructure.from_dense_mask(mask)
    rows, cols = mask.nonzero(as_tuple=True)
    structure, order = CsrStructure.from_indices(rows, cols, (7, 5))
    for name in ("crow_indices", "col_indices", "row_indices", "t_crow_indices", "t_col_indices", "t_permutation"):
        assert torch.equal(getattr(structure, name), getattr(reference, name)), name
    assert torch.equal(order, torch.arange(rows.numel()))
    empty, empty_order = CsrStructure.from_indices(rows[:0], cols[:0], (7, 5))
    assert empty.nnz == 0 and empty_order.numel() == 0
    with pytest.raises(UsageError, match="distinct"):
        CsrStructure.from_indices(torch.tensor([0, 1, 1]), torch.tensor([2, 3, 3]), (7, 5))
    with pytest.raises(UsageError, match=r"cols must lie in \[0, 5\)"):
        CsrStructure.from_indices(torch.tensor([0, 1]), torch.tensor([-1, 3]), (7, 5))
    with pytest.raises(UsageError, match=r"rows must lie in \[0, 7\)"):
        CsrStructure.from_indices(torch.tensor([0, 7]), torch.tensor([1, 3]), (7, 5))


def test_structure_indices_are_int32_sixteen_bytes_per_connection():
    """Four int32 entries per connection (column, row, transposed column, permutation) plus two offset arrays."""
    structure = CsrStructure.from_dense_mask(random_mask(300, 200, 0.05, seed=12))
    fields = ("crow_indices", "col_indices", "row_indices", "t_crow_indices", "t_col_indices", "t_permutation")
    assert {getattr(structure, name).dtype for name in fields} == {torch.int32}
    assert structure.nbytes == 4 * (4 * structure.nnz + (300 + 1) + (200 + 1))
    positions = structure.positions()
    assert positions.dtype == torch.int64
    assert torch.equal(positions, structure.row_indices.long() * 200 + structure.col_indices.long())


def test_positions_are_computed_in_int64_beyond_int32():
    """A flat position row · in + col overflows int32 long before the indices do; the positions never do."""
    shape = (70_000, 70_000)
    rows, cols = torch.tensor([0, 69_999]), torch.tensor([5, 69_998])
    structure, _ = CsrStructure.from_indices(rows, cols, shape)
    assert structure.col_indices.dtype == torch.int32
    assert structure.positions().tolist() == [5, 69_999 * 70_000 + 69_998]


def test_index_dtype_is_int64_where_int32_overflows():
    limit = torch.iinfo(torch.int32).max
    assert index_dtype(limit, limit, 3) == torch.int32
    assert index_dtype(limit + 1, 3, 3) == torch.int64
    assert index_dtype(5, 3, limit + 1) == torch.int64


@pytest.mark.parametrize("batch", [1, 2, 5, SDDMM_BATCH_BLOCK - 1, SDDMM_BATCH_BLOCK, SDDMM_BATCH_BLOCK + 3, 37])
def test_sampled_products_with_padded_batches_match_dense_products(batch):
    """Zero samples appended to reach a multiple of the SDDMM's batch block change no product."""
    mask = random_mask(30, 20, 0.3, seed=13)
    structure = CsrStructure.from_dense_mask(mask)
    generator = torch.Generator().manual_seed(batch)
    grad_y_t = torch.randn(30, batch, generator=generator, dtype=F64)
    x_t = torch.randn(20, batch, generator=generator, dtype=F64)
    products = _sampled_products(structure.crow_indices, structure.col_indices, structure.shape, grad_y_t, x_t)
    expected = (grad_y_t @ x_t.t())[structure.row_indices, structure.col_indices]
    torch.testing.assert_close(products, expected)


def test_structure_moves_every_index_tensor():
    structure = CsrStructure.from_dense_mask(random_mask(3, 4, 0.5, seed=10)).to("meta")
    assert structure.device == torch.device("meta") and structure.shape == (3, 4)
    assert all(
        t.device.type == "meta"
        for t in (
            structure.crow_indices,
            structure.col_indices,
            structure.row_indices,
            structure.t_crow_indices,
            structure.t_col_indices,
            structure.t_permutation,
        )
    )


@pytest.mark.parametrize("batch_shape", [(5,), (2, 3)])
def test_tap_gives_the_dense_gradient_at_any_positions(batch_shape):
    mask = random_mask(6, 7, 0.3, seed=11)
    structure = CsrStructure.from_dense_mask(mask)
    values = torch.randn(structure.nnz, dtype=F64, requires_grad=True)
    x = torch.randn(*batch_shape, 7, dtype=F64)
    grad_y = torch.randn(*batch_shape, 6, dtype=F64)
    tap = GradientTap()
    assert not tap.recorded
    csr_linear(x, values, structure, tap=tap).backward(grad_y)
    dense = dense_weight(structure, values.detach()).requires_grad_()
    F.linear(x, dense).backward(grad_y)

    generator = torch.Generator().manual_seed(11)
    rows = torch.randint(0, 6, (30,), generator=generator)  # unsorted, repeats, active and inactive
    cols = torch.randint(0, 7, (30,), generator=generator)
    assert tap.recorded
    torch.testing.assert_close(tap.gradient_at(rows, cols), dense.grad[rows, cols])
    inactive_rows, inactive_cols = (~mask).nonzero(as_tuple=True)
    torch.testing.assert_close(tap.gradient_at(inactive_rows, inactive_cols), dense.grad[~mask])
    tap.clear()
    assert not tap.recorded


def test_sampled_gradient_matches_outer_products():
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(4, 2, 5, generator=generator, dtype=F64)
    grad_y = torch.randn(4, 2, 3, generator=generator, dtype=F64)
    full = grad_y.reshape(-1, 3).t() @ x.reshape(-1, 5)
    rows = torch.tensor([2, 0, 2, 1, 0])
    cols = torch.tensor([4, 0, 4, 3, 1])
    torch.testing.assert_close(sampled_gradient(x, grad_y, rows, cols), full[rows, cols])
    sorted_rows, sorted_cols = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 3, 1, 2])
    torch.testing.assert_close(sampled_gradient(x, grad_y, sorted_rows, sorted_cols), full[sorted_rows, sorted_cols])
    empty = torch.zeros(0, dtype=torch.long)
    assert sampled_gradient(x, grad_y, empty, empty).shape == (0,)


def test_usage_errors_from_csr_linear():
    structure = CsrStructure.from_dense_mask(random_mask(4, 3, 0.7, seed=13))
    values = torch.randn(structure.nnz)
    with pytest.raises(UsageError, match="in_features"):
        csr_linear(torch.randn(2, 4), values, structure)
    with pytest.raises(UsageError, match="nnz"):
        csr_linear(torch.randn(2, 3), torch.randn(structure.nnz + 1), structure)
    with pytest.raises(UsageError, match="out_features"):
        csr_linear(torch.randn(2, 3), values, structure, bias=torch.randn(3))
    with pytest.raises(UsageError, match="dtype"):
        csr_linear(torch.randn(2, 3, dtype=F64), values, structure)
    with pytest.raises(UsageError, match="device"):
        csr_linear(torch.randn(2, 3), values, structure.to("meta"))


def test_usage_errors_from_structures_and_sampling():
    with pytest.raises(UsageError, match="distinct"):
        CsrStructure.from_indices(torch.tensor([0, 1, 0]), torch.tensor([2, 1, 2]), (2, 3))
    with pytest.raises(UsageError, match=r"cols must lie in \[0, 3\)"):
        CsrStructure.from_indices(torch.tensor([0]), torch.tensor([3]), (2, 3))
    with pytest.raises(UsageError, match="integer"):
        CsrStructure.from_indices(torch.tensor([0.0]), torch.tensor([1]), (2, 3))
    with pytest.raises(UsageError, match="same length"):
        CsrStructure.from_indices(torch.tensor([0, 1]), torch.tensor([1]), (2, 3))
    with pytest.raises(UsageError, match="shape"):
        CsrStructure.from_indices(torch.tensor([0]), torch.tensor([1]), (2, 0))
    with pytest.raises(UsageError, match="2-D"):
        CsrStructure.from_dense_mask(torch.ones(3, dtype=torch.bool))
    with pytest.raises(UsageError, match="leading"):
        sampled_gradient(torch.randn(4, 3), torch.randn(5, 2), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(UsageError, match=r"rows must lie in \[0, 2\)"):
        sampled_gradient(torch.randn(4, 3), torch.randn(4, 2), torch.tensor([2]), torch.tensor([0]))
    with pytest.raises(UsageError, match="empty"):
        GradientTap().gradient_at(torch.tensor([0]), torch.tensor([0]))
