"""Exact RigL growth on a CsrLinear from its GradientTap agrees with the dense gradient."""

from __future__ import annotations

import pytest
import torch
from backend_pairs import masked_linear

from evosparse.backends.csr_growth import exact_top_inactive_gradients, inactive_gradient_blocks
from evosparse.backends.csr_layer import CsrLinear
from evosparse.backends.csr_ops import GradientTap
from evosparse.errors import UsageError


def tapped_layer_and_dense_gradient(n_in, n_out, density, seed):
    """A CsrLinear after one backward pass (its tap filled) and the flat dense gradient of the same loss."""
    linear, mask = masked_linear(n_in, n_out, density, seed=seed)
    layer = CsrLinear.from_linear(linear, mask)
    layer.tap = GradientTap()
    x = torch.randn(5, n_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    layer(x).pow(2).sum().backward()
    dense = torch.autograd.grad(linear(x).pow(2).sum(), linear.weight)[0]  # weight is zero off the mask
    return layer, mask, dense.reshape(-1)


@pytest.mark.parametrize("block_positions", [1, 7, 40, 1 << 20])
def test_exact_growth_is_the_top_of_the_dense_gradient_at_inactive_positions(block_positions):
    layer, mask, dense = tapped_layer_and_dense_gradient(9, 6, 0.4, seed=3)
    scores = dense.abs()
    inactive = (~mask).reshape(-1).nonzero().squeeze(1)
    ranked = inactive[torch.argsort(scores[inactive], descending=True, stable=True)]
    for count in (0, 1, 5, inactive.numel()):
        grown = exact_top_inactive_gradients(layer, count, block_positions)
        assert sorted(grown.tolist()) == sorted(ranked[:count].tolist())


def test_exact_growth_needs_a_recorded_tap_and_enough_free_positions():
    linear, mask = masked_linear(4, 3, 0.5, seed=0)
    layer = CsrLinear.from_linear(linear, mask)
    with pytest.raises(UsageError, match="no gradient was recorded"):
        exact_top_inactive_gradients(layer, 1)
    layer.tap = GradientTap()
    layer(torch.randn(2, 4, dtype=torch.float64)).sum().backward()
    with pytest.raises(UsageError, match="only"):
        exact_top_inactive_gradients(layer, 12 - layer.nnz + 1)


@pytest.mark.parametrize("block_positions", [1, 10, 1 << 20])
def test_gradient_blocks_cover_every_inactive_position_in_order_with_the_dense_gradient(block_positions):
    layer, mask, dense = tapped_layer_and_dense_gradient(7, 8, 0.3, seed=4)
    blocks = list(inactive_gradient_blocks(layer, block_positions))
    positions = torch.cat([positions for positions, _ in blocks])
    assert len(blocks) > (1 if block_positions < 56 else 0)
    assert torch.equal(positions, (~mask).reshape(-1).nonzero().squeeze(1))
    torch.testing.assert_close(torch.cat([gradients for _, gradients in blocks]), dense[positions])
