"""condensed_layout and condensed_ops against a dense masked reference: values, gradients, layout, usage errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from evosparse.backends.condensed_layout import CondensedStructure, condense, expand
from evosparse.backends.condensed_ops import condensed_linear
from evosparse.backends.csr_ops import SDDMM_BATCH_BLOCK, GradientTap
from evosparse.errors import UsageError
from support import assert_all_close, sparse_and_dense_passes

F64 = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def fan_in_mask(out_features: int, in_features: int, fan_in: int, seed: int) -> torch.Tensor:
    """A boolean mask with exactly ``fan_in`` set entries per row, drawn uniformly from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    columns = torch.rand(out_features, in_features, generator=generator).argsort(dim=1)[:, :fan_in]
    return torch.zeros(out_features, in_features, dtype=torch.bool).scatter(1, columns, True)


def run_both(mask, batch_shape, with_bias, seed, device="cpu", dtype=F64):
    """Forward and backward through condensed_linear and through F.linear on the dense masked weight.

    Returns ((y, grad_x, grad_values, grad_bias) condensed, the same for the reference), with
    grad_values of the reference read at the structure's positions.
    """
    generator = torch.Generator().manual_seed(seed)
    out_features, in_features = mask.shape
    weight = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
    x0 = torch.randn(*batch_shape, in_features, generator=generator, dtype=dtype).to(device)
    bias0 = torch.randn(out_features, generator=generator, dtype=dtype).to(device) if with_bias else None
    grad_y = torch.randn(*batch_shape, out_features, generator=generator, dtype=dtype).to(device)
    values0, structure = condense(weight.to(device), mask.to(device))

    return sparse_and_dense_passes(
        lambda x, values, bias: condensed_linear(x, values, structure, bias),
        lambda values: expand(values, structure),
        x0,
        values0,
        bias0,
        grad_y,
    )


# -- kernels against the dense reference --------------------------------------------------------


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    out_features=st.integers(1, 11),
    in_features=st.integers(1, 11),
    fan_in_fraction=st.floats(0.0, 1.0),
    batch_shape=st.sampled_from([(1,), (3,), (8,), (13,), (2, 3), (0,), ()]),
    with_bias=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_matches_dense_masked_reference(out_features, in_features, fan_in_fraction, batch_shape, with_bias, seed):
    fan_in = max(1, round(fan_in_fraction * in_features))
    mask = fan_in_mask(out_features, in_features, fan_in, seed)
    condensed, reference = run_both(mask, batch_shape, with_bias, seed)
    assert_all_close(condensed, reference)


@pytest.mark.parametrize("fan_in", [1, 5, 17])
@pytest.mark.parametrize("batch", [1, 2, SDDMM_BATCH_BLOCK - 1, SDDMM_BATCH_BLOCK, SDDMM_BATCH_BLOCK + 1, 37])
def test_every_batch_path_and_fan_in_extreme_matches_reference(fan_in, batch):
    """Batch 1 (padded table, scattered input gradient), a batch padded for the SDDMM or not; k = 1 and k = in."""
    mask = fan_in_mask(23, 17, fan_in, seed=fan_in + batch)
    condensed, reference = run_both(mask, (batch,), with_bias=True, seed=batch)
    assert_all_close(condensed, reference)


@pytest.mark.parametrize("batch", [1, 3, 9])
def test_gradcheck_in_float64(batch):
    generator = torch.Generator().manual_seed(batch)
    values, structure = condense(torch.randn(5, 7, generator=generator, dtype=F64), fan_in_mask(5, 7, 3, seed=batch))
    x = torch.randn(batch, 7, generator=generator, dtype=F64)
    bias = torch.randn(5, generator=generator, dtype=F64)
    operands = tuple(t.requires_grad_() for t in (x, values, bias))
    assert torch.autograd.gradcheck(lambda x, v, b: condensed_linear(x, v, structure, b), operands)


def test_float32_matches_reference_at_a_benchmark_like_size():
    mask = fan_in_mask(300, 200, 20, seed=1)
    condensed, reference = run_both(mask, (32,), with_bias=True, seed=1, dtype=torch.float32)
    assert_all_close(condensed, reference, rtol=1e-4, atol=1e-4)


def test_gradients_of_operands_that_do_not_require_one_are_not_computed():
    values, structure = condense(torch.randn(4, 6), fan_in_mask(4, 6, 2, seed=0))
    x = torch.randn(3, 6)
    values.requires_grad_()
    condensed_linear(x, values, structure).sum().backward()
    assert x.grad is None and values.grad is not None
    frozen = values.detach()
    x.requires_grad_()
    condensed_linear(x, frozen, structure).sum().backward()
    assert x.grad is not None and frozen.grad is None


def test_inference_path_keeps_no_graph_and_gives_the_training_result():
    values, structure = condense(torch.randn(9, 12), fan_in_mask(9, 12, 4, seed=2))
    bias = torch.randn(9)
    values.requires_grad_()
    x = torch.randn(5, 12)
    trained = condensed_linear(x, values, structure, bias)
    with torch.no_grad():
        inferred = condensed_linear(x, values, structure, bias)
    assert trained.grad_fn is not None and inferred.grad_fn is None
    assert torch.equal(trained.detach(), inferred)


def test_output_is_column_major_and_open_to_in_place_ops():
    values, structure = condense(torch.randn(6, 8, dtype=F64), fan_in_mask(6, 8, 3, seed=3))
    x = torch.randn(4, 8, dtype=F64)
    values.requires_grad_()
    y = condensed_linear(x, values, structure)
    assert y.stride() == (1, 4)
    y.relu_().sum().backward()  # a view made inside the Function would refuse this
    reference = values.detach().clone().requires_grad_()
    F.linear(x, expand(reference, structure)).relu().sum().backward()
    torch.testing.assert_close(values.grad, reference.grad)


def test_two_stacked_layers_match_reference():
    """The column-major output of one layer feeds the next (whose xᵀ is then free)."""
    generator = torch.Generator().manual_seed(4)
    first_values, first = condense(torch.randn(10, 7, generator=generator, dtype=F64), fan_in_mask(10, 7, 3, 4))
    second_values, second = condense(torch.randn(5, 10, generator=generator, dtype=F64), fan_in_mask(5, 10, 4, 5))
    x = torch.randn(6, 7, generator=generator, dtype=F64)
    operands = tuple(t.requires_grad_() for t in (x, first_values, second_values))
    assert torch.autograd.gradcheck(
        lambda x, a, b: condensed_linear(condensed_linear(x, a, first).tanh(), b, second), operands
    )


def test_bfloat16_input_under_autocast_computes_in_the_values_dtype():
    values, structure = condense(torch.randn(6, 9), fan_in_mask(6, 9, 4, seed=6))
    values.requires_grad_()
    x = torch.randn(5, 9).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = condensed_linear(x, values, structure)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.linear(x.float(), expand(values, structure)))
    y.sum().backward()
    assert values.grad is not None and values.grad.dtype == torch.float32


def test_tap_gives_the_dense_gradient_at_any_position():
    """What gradient-driven growth reads: ∂L/∂W = grad_yᵀ x, at active and inactive positions alike."""
    generator = torch.Generator().manual_seed(7)
    values, structure = condense(torch.randn(8, 11, generator=generator, dtype=F64), fan_in_mask(8, 11, 3, 7))
    x = torch.randn(4, 11, generator=generator, dtype=F64)
    grad_y = torch.randn(4, 8, generator=generator, dtype=F64)
    values.requires_grad_()
    tap = GradientTap()
    condensed_linear(x, values, structure, tap=tap).backward(grad_y)
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(11), indexing="ij")
    everywhere = tap.gradient_at(rows.flatten(), cols.flatten()).view(8, 11)
    torch.testing.assert_close(everywhere, grad_y.t() @ x)
    torch.testing.assert_close(everywhere.gather(1, structure.indices.long()), values.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_on_the_device_matches_reference_and_stays_there(device):
    mask = fan_in_mask(33, 40, 6, seed=8)
    condensed, reference = run_both(mask, (5,), with_bias=True, seed=8, device=device)
    assert all(t.device.type == device for t in condensed)
    assert_all_close(condensed, reference)


@CUDA
def test_cuda_result_equals_cpu_result():
    mask = fan_in_mask(64, 48, 12, seed=9)
    on_cpu, _ = run_both(mask, (16,), with_bias=True, seed=9)
    on_cuda, _ = run_both(mask, (16,), with_bias=True, seed=9, device="cuda")
    assert_all_close(tuple(t.cpu() for t in on_cuda), on_cpu)


# -- layout -------------------------------------------------------------------------------------


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    out_features=st.integers(1, 9),
    in_features=st.integers(1, 9),
    fan_in_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_condense_expand_round_trip_in_row_major_positions(out_features, in_features, fan_in_fraction, seed):
    fan_in = max(1, round(fan_in_fraction * in_features))
    mask = fan_in_mask(out_features, in_features, fan_in, seed)
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed))
    values, structure = condense(weight, mask)
    positions = torch.nonzero(mask.flatten()).flatten()
    assert values.shape == structure.indices.shape == (out_features, fan_in)
    assert structure.fan_in == fan_in and structure.nnz == positions.numel()
    assert torch.equal(structure.positions(), positions)
    assert torch.equal(values.flatten(), weight.flatten()[positions])
    assert bool((structure.indices[:, 1:] > structure.indices[:, :-1]).all())
    assert torch.equal(expand(values, structure), weight * mask)
    shuffled = positions[torch.randperm(positions.numel(), generator=torch.Generator().manual_seed(seed))]
    again = CondensedStructure.from_positions(shuffled, (out_features, in_features))
    assert torch.equal(again.indices, structure.indices)


@settings(derandomize=True, max_examples=30, deadline=None)
@given(
    out_features=st.integers(1, 9),
    in_features=st.integers(1, 9),
    fan_in_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_transposed_index_lists_each_column_s_connections_by_row(out_features, in_features, fan_in_fraction, seed):
    """Brute force: the entries of column i, in increasing row order, are t_permutation[t_offsets[i] : next]."""
    fan_in = max(1, round(fan_in_fraction * in_features))
    structure = CondensedStructure.from_mask(fan_in_mask(out_features, in_features, fan_in, seed))
    flat_columns = structure.indices.flatten().tolist()
    bounds = structure.t_offsets.tolist() + [structure.nnz]
    for column in range(in_features):
        expected = [m for m, c in enumerate(flat_columns) if c == column]
        found = structure.t_permutation[bounds[column] : bounds[column + 1]].tolist()
        assert found == expected
        assert structure.t_rows[bounds[column] : bounds[column + 1]].tolist() == [m // fan_in for m in expected]
    assert structure.crow_indices.tolist() == [row * fan_in for row in range(out_features + 1)]


def test_unequal_rows_are_refused_with_the_rows_named():
    mask = fan_in_mask(5, 8, 3, seed=10)
    mask[3, (~mask[3]).nonzero()[0]] = True
    with pytest.raises(UsageError, match="constant fan-in.*row 0 has 3, row 3 has 4"):
        condense(torch.randn(5, 8), mask)


@pytest.mark.parametrize(
    "indices, in_features, message",
    [
        (torch.tensor([[0, 2], [1, 1]]), 3, "strictly increasing"),
        (torch.tensor([[2, 0], [0, 1]]), 3, "strictly increasing"),
        (torch.tensor([[0, 3], [0, 1]]), 3, r"lie in \[0, 3\)"),
        (torch.tensor([[-1, 0]]), 3, r"lie in \[0, 3\)"),
        (torch.zeros(2, 0, dtype=torch.int64), 3, "k = 0"),
        (torch.tensor([0.0, 1.0]), 3, "2-D integer"),
    ],
)
def test_bad_indices_are_refused(indices, in_features, message):
    with pytest.raises(UsageError, match=message):
        CondensedStructure.from_indices(indices, in_features)


@pytest.mark.parametrize(
    "positions, message",
    [
        (torch.tensor([0, 0, 4, 5]), "distinct"),
        (torch.tensor([0, 1, 4, 9]), r"lie in \[0, 8\)"),
        (torch.tensor([], dtype=torch.int64), "k = 0"),
        (torch.tensor([0, 1, 2]), "row 0 has 3, row 1 has 0"),
    ],
)
def test_bad_positions_are_refused(positions, message):
    with pytest.raises(UsageError, match=message):
        CondensedStructure.from_positions(positions, (2, 4))


def test_a_non_boolean_or_misshapen_mask_is_refused():
    with pytest.raises(UsageError, match="boolean"):
        CondensedStructure.from_mask(torch.ones(2, 3))
    with pytest.raises(UsageError, match="mask of its shape"):
        condense(torch.randn(2, 3), torch.ones(3, 2, dtype=torch.bool))
    values, structure = condense(torch.randn(2, 3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(UsageError, match=r"shape \(2, 3\)"):
        expand(values.flatten(), structure)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, v, b: (x[:, :-1], v, b), "last dimension 6"),
        (lambda x, v, b: (x, v.flatten(), b), r"shape \(4, 2\)"),
        (lambda x, v, b: (x, v, b[:-1]), "4 entries"),
        (lambda x, v, b: (x.double(), v, b), "share one floating dtype"),
        (lambda x, v, b: (x, v.long(), b), "share one floating dtype"),
    ],
)
def test_operands_that_do_not_fit_are_refused(change, message):
    values, structure = condense(torch.randn(4, 6), fan_in_mask(4, 6, 2, seed=11))
    x, values, bias = change(torch.randn(3, 6), values, torch.randn(4))
    with pytest.raises(UsageError, match=message):
        condensed_linear(x, values, structure, bias)
