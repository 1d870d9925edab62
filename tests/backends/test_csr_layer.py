"""CsrLinear against the masked dense nn.Linear: outputs, gradients, construction, moves and state_dict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from backend_pairs import F64, masked_linear
from evosparse.backends.csr_layer import CsrLinear, structure_from_csr_arrays
from evosparse.backends.csr_ops import CsrStructure, GradientTap
from evosparse.errors import UsageError
from support import saved_and_loaded


@settings(derandomize=True, max_examples=30, deadline=None)
@given(
    in_features=st.integers(1, 12),
    out_features=st.integers(1, 12),
    density=st.sampled_from([0.0, 0.2, 0.6, 1.0]),
    batch_shape=st.sampled_from([(4,), (2, 3), ()]),
    bias=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_forward_and_backward_equal_the_masked_dense_layer(in_features, out_features, density, batch_shape, bias, seed):
    linear, mask = masked_linear(in_features, out_features, density, seed, bias=bias)
    layer = CsrLinear.from_linear(linear, mask)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch_shape, in_features, generator=generator, dtype=F64)
    grad_y = torch.randn(*batch_shape, out_features, generator=generator, dtype=F64)
    x_dense, x_csr = x.clone().requires_grad_(), x.clone().requires_grad_()

    y_dense = F.linear(x_dense, linear.weight * mask, linear.bias)
    y_dense.backward(grad_y)
    y_csr = layer(x_csr)
    y_csr.backward(grad_y)

    torch.testing.assert_close(y_csr, y_dense)
    torch.testing.assert_close(x_csr.grad, x_dense.grad)
    rows, cols = mask.nonzero(as_tuple=True)
    torch.testing.assert_close(layer.values.grad, linear.weight.grad[rows, cols])
    if bias:
        torch.testing.assert_close(layer.bias.grad, linear.bias.grad)
    else:
        assert layer.bias is None


def test_constructors_agree_and_copy_their_inputs():
    linear, mask = masked_linear(9, 6, 0.4, seed=1)
    from_linear = CsrLinear.from_linear(linear, mask)
    from_dense = CsrLinear.from_dense(linear.weight, mask, linear.bias)
    positions = mask.reshape(-1).nonzero().squeeze(1)
    shuffle = torch.randperm(positions.numel(), generator=torch.Generator().manual_seed(1))
    from_positions = CsrLinear.from_positions(
        (6, 9), positions[shuffle], linear.weight.detach().reshape(-1)[positions[shuffle]], linear.bias.detach()
    )
    in_order_values = linear.weight.detach().reshape(-1)[positions]
    from_sorted_positions = CsrLinear.from_positions((6, 9), positions, in_order_values, linear.bias.detach())
    for layer in (from_dense, from_positions, from_sorted_positions):
        assert torch.equal(layer.values, from_linear.values)
        assert torch.equal(layer.structure.col_indices, from_linear.structure.col_indices)
        assert torch.equal(layer.structure.crow_indices, from_linear.structure.crow_indices)
    assert torch.equal(from_linear.to_dense_weight(), linear.weight.detach())
    with torch.no_grad():
        from_linear.values.add_(1.0)
        from_linear.bias.add_(1.0)
    assert torch.equal(from_dense.values + 1.0, from_linear.values)  # no storage shared with the source
    assert torch.equal(from_sorted_positions.values, in_order_values)
    assert from_sorted_positions.values.data_ptr() != in_order_values.data_ptr()
    assert torch.equal(linear.bias + 1.0, from_linear.bias)


def test_extra_repr_and_counts():
    linear, mask = masked_linear(10, 4, 0.5, seed=2)
    layer = CsrLinear.from_linear(linear, mask)
    assert layer.nnz == int(mask.sum()) and layer.shape == (4, 10)
    assert (layer.in_features, layer.out_features) == (10, 4)
    assert f"nnz={int(mask.sum())}" in repr(layer) and "in_features=10" in repr(layer)
    assert [name for name, _ in layer.named_parameters()] == ["values", "bias"]


def test_tap_attribute_records_the_dense_gradient():
    linear, mask = masked_linear(7, 5, 0.3, seed=3)
    layer = CsrLinear.from_linear(linear, mask)
    layer.tap = GradientTap()
    x = torch.randn(6, 7, dtype=F64)
    layer(x).pow(2).sum().backward()
    dense = (linear.weight * mask).detach().requires_grad_()
    F.linear(x, dense, linear.bias).pow(2).sum().backward()
    rows, cols = (~mask).nonzero(as_tuple=True)
    assert dense.grad[rows, cols].abs().sum() > 0
    torch.testing.assert_close(layer.tap.gradient_at(rows, cols), dense.grad[rows, cols])


def test_module_moves_and_casts_carry_the_structure():
    linear, mask = masked_linear(6, 5, 0.5, seed=4, dtype=torch.float32)
    layer = CsrLinear.from_linear(linear, mask)
    layer.double()
    assert layer.values.dtype == F64 and layer.structure.col_indices.dtype == torch.int32
    x = torch.randn(3, 6, dtype=F64)
    torch.testing.assert_close(layer(x), F.linear(x, (linear.weight * mask).double(), linear.bias.double()))
    layer.to("meta")
    assert layer.values.device.type == "meta" and layer.structure.device.type == "meta"
    assert layer.structure.t_permutation.device.type == "meta"


def test_state_dict_round_trip_restores_topology_even_with_another_nnz():
    source_linear, source_mask = masked_linear(8, 6, 0.5, seed=5)
    source = CsrLinear.from_linear(source_linear, source_mask)
    saved = saved_and_loaded(source.state_dict())

    target_linear, target_mask = masked_linear(8, 6, 0.2, seed=6)
    target = CsrLinear.from_linear(target_linear, target_mask)
    assert target.nnz != source.nnz
    values_parameter = target.values
    target.load_state_dict(saved)
    assert target.values is values_parameter  # an optimizer holding it stays valid
    assert target.nnz == source.nnz
    x = torch.randn(4, 8, dtype=F64)
    torch.testing.assert_close(target(x), source(x))


def test_usage_errors():
    linear, mask = masked_linear(4, 3, 0.5, seed=7)
    with pytest.raises(UsageError, match="boolean mask"):
        CsrLinear.from_dense(linear.weight, mask[:, :2])
    with pytest.raises(UsageError, match="boolean mask"):
        CsrLinear.from_dense(linear.weight, mask.float())
    with pytest.raises(UsageError, match="nn.Linear"):
        CsrLinear.from_linear(torch.nn.Conv1d(1, 1, 1), mask)
    structure = CsrStructure.from_dense_mask(mask)
    with pytest.raises(UsageError, match="nnz"):
        CsrLinear(structure, torch.zeros(structure.nnz + 1, dtype=F64))
    with pytest.raises(UsageError, match="one value per position"):
        CsrLinear.from_positions((3, 4), torch.tensor([0, 1]), torch.zeros(3))
    layer = CsrLinear.from_linear(linear, mask)
    state = layer.state_dict()
    state["_extra_state"] = {"crow_indices": torch.tensor([0, 1]), "col_indices": torch.tensor([0])}
    with pytest.raises(UsageError, match="row offsets"):
        layer.load_state_dict(state)


@pytest.mark.parametrize(
    ("crow", "cols", "message"),
    [
        ([0, 2, 1, 3], [0, 1, 2], "prefix sum"),  # decreasing offsets
        ([1, 2, 2, 3], [0, 1, 2], "prefix sum"),  # does not start at 0
        ([0, 1, 2, 2], [0, 1, 2], "prefix sum"),  # does not end at nnz
        ([0, 2, 2, 3], [1, 0, 2], "sorted"),  # columns out of order in row 0
        ([0, 2, 2, 3], [1, 1, 2], "distinct"),  # repeated position
        ([0, 2, 2, 3], [0, 4, 2], "cols must lie"),  # column out of range
    ],
)
def test_structure_from_csr_arrays_rejects_invalid_arrays(crow, cols, message):
    with pytest.raises(UsageError, match=message):
        structure_from_csr_arrays(torch.tensor(crow, dtype=torch.int32), torch.tensor(cols, dtype=torch.int32), (3, 4))


def test_structure_from_csr_arrays_accepts_int32_arrays():
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    reference = CsrStructure.from_dense_mask(mask)
    structure = structure_from_csr_arrays(reference.crow_indices.int(), reference.col_indices.int(), (3, 4))
    assert torch.equal(structure.row_indices, reference.row_indices)
    assert torch.equal(structure.t_permutation, reference.t_permutation)
