"""Gradient growth (RigL's criterion) on both backends: the top of the dense gradient at inactive positions.

``SparseLayer.inactive_gradient_blocks`` streams ∂L/∂w at every inactive position (a masked layer from its
recorded dense gradient, a csr layer from its GradientTap, with no dense tensor) and
``top_gradient_positions`` keeps a running top-k over the blocks; both are checked against brute force.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from backend_pairs import BACKEND_NAMES, F64, dense_weight, layer_on, masked_linear
from evosparse.criteria.growth import top_gradient_positions
from evosparse.errors import UsageError


def recorded_layer_and_dense_gradient(backend, n_in, n_out, density, seed, dtype=F64):
    """A layer of ``backend`` after one recorded backward pass, and the flat dense gradient of the same loss."""
    linear, mask = masked_linear(n_in, n_out, density, seed=seed, dtype=dtype)
    layer = layer_on(backend, linear, mask)
    layer.record_gradients(True)
    x = torch.randn(5, n_in, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    layer.module(x).pow(2).sum().backward()
    weight = dense_weight(layer).detach().requires_grad_()
    (dense,) = torch.autograd.grad(F.linear(x, weight, layer.module.bias).pow(2).sum(), [weight])
    return layer, mask, dense.reshape(-1)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("block_positions", [1, 7, 40, 1 << 20])
def test_growth_is_the_top_of_the_dense_gradient_at_inactive_positions(backend, block_positions):
    layer, mask, dense = recorded_layer_and_dense_gradient(backend, 9, 6, 0.4, seed=3)
    scores = dense.abs()
    inactive = (~mask).reshape(-1).nonzero().squeeze(1)
    ranked = inactive[torch.argsort(scores[inactive], descending=True, stable=True)]
    assert scores[inactive].unique().numel() == inactive.numel()  # no ties: the top-k is unique
    for count in (0, 1, 5, inactive.numel()):
        grown = top_gradient_positions(layer.inactive_gradient_blocks(block_positions), count)
        assert grown.dtype == torch.int64 and grown.device == layer.device
        assert sorted(grown.tolist()) == sorted(ranked[:count].tolist())


def test_equal_scores_go_to_the_smaller_position_however_the_blocks_fall():
    """Ties at the cut: the same choice whatever the block size (so both backends agree)."""
    positions = torch.arange(0, 60, 2)
    gradients = torch.tensor([1.0, -3.0, 2.0, 3.0, -2.0, 3.0] * 5, dtype=F64)
    for count in (1, 3, 7, 11, 30):
        scores = gradients.abs().tolist()
        expected = sorted(sorted(range(30), key=lambda k: (-scores[k], k))[:count])
        for size in (1, 4, 7, 30):
            blocks = zip(positions.split(size), gradients.split(size))
            assert sorted(top_gradient_positions(blocks, count).tolist()) == positions[expected].tolist()


def test_both_backends_grow_the_same_positions():
    """Float32, several rows per block: the choice equals the masked backend's on the same weights and input."""
    chosen = {}
    for name in BACKEND_NAMES:
        layer, _, _ = recorded_layer_and_dense_gradient(name, 30, 20, 0.1, seed=6, dtype=torch.float32)
        chosen[name] = torch.sort(top_gradient_positions(layer.inactive_gradient_blocks(64), 25)).values
    assert torch.equal(chosen["csr"], chosen["masked"]) and chosen["csr"].numel() == 25


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_growth_needs_a_recorded_gradient_and_enough_free_positions(backend):
    linear, mask = masked_linear(4, 3, 0.5, seed=0)
    layer = layer_on(backend, linear, mask)
    with pytest.raises(UsageError, match="no gradient of layer0 was recorded") as info:
        top_gradient_positions(layer.inactive_gradient_blocks(), 1)
    assert "\n" not in str(info.value)
    layer.record_gradients(True)
    layer.module(torch.randn(2, 4, dtype=F64)).sum().backward()
    free = 12 - layer.active
    assert top_gradient_positions(layer.inactive_gradient_blocks(), free).numel() == free
    with pytest.raises(UsageError, match=f"only {free} positions are free"):
        top_gradient_positions(layer.inactive_gradient_blocks(), free + 1)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("block_positions", [1, 10, 1 << 20])
def test_gradient_blocks_cover_every_inactive_position_in_order_with_the_dense_gradient(backend, block_positions):
    layer, mask, dense = recorded_layer_and_dense_gradient(backend, 7, 8, 0.3, seed=4)
    blocks = list(layer.inactive_gradient_blocks(block_positions))
    positions = torch.cat([positions for positions, _ in blocks])
    assert len(blocks) > (1 if block_positions < 56 else 0)
    assert torch.equal(positions, (~mask).reshape(-1).nonzero().squeeze(1))
    torch.testing.assert_close(torch.cat([gradients for _, gradients in blocks]), dense[positions])
