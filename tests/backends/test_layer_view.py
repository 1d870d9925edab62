"""The backend-neutral layer view: masked and csr views agree, and SET written once gives the same topologies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backend_pairs import F64, masked_linear, masked_topology, twin_mlp

from evosparse.backends import csr_topology
from evosparse.backends.csr_layer import CsrLinear
from evosparse.backends.layer_view import CsrLayerView, MaskedLayerView, masked_views
from evosparse.backends.set_on_view import set_prune_positions, set_update
from evosparse.backends.uniform_sampling import sample_absent
from evosparse.criteria.magnitude import set_prune_selection, weakest_of


def twin_views(in_features: int, out_features: int, density: float, seed: int):
    """A masked view and a csr view of the same layer (each with its own SGD optimizer)."""
    linear, mask = masked_linear(in_features, out_features, density, seed)
    layer = CsrLinear.from_linear(linear, mask)
    topology = masked_topology([linear], [mask], torch.optim.SGD(linear.parameters(), lr=0.1, momentum=0.9))
    csr_view = CsrLayerView(layer, torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9))
    return MaskedLayerView(topology, 0), csr_view


def assert_same_topology(masked: MaskedLayerView, csr: CsrLayerView) -> None:
    """Same active positions and the same weights (zeros elsewhere)."""
    assert torch.equal(masked.active_positions(), csr.active_positions())
    assert torch.equal(masked.topology.layers[0].weight.detach(), csr.layer.to_dense_weight())


def set_same_weights(masked: MaskedLayerView, csr: CsrLayerView, generator: torch.Generator) -> None:
    """Give both backends the same new weights, coarsely rounded so that equal magnitudes (ties) abound."""
    weight = masked.topology.layers[0].weight
    draws = torch.round(torch.randn(weight.shape, generator=generator, dtype=F64) * 4) / 4
    with torch.no_grad():
        weight.copy_(draws * masked.topology.layers[0].mask)
        csr.layer.values.copy_(draws.reshape(-1)[csr.active_positions()])


def test_views_answer_queries_alike():
    masked, csr = twin_views(11, 7, 0.3, seed=1)
    assert masked.shape == csr.shape == (7, 11)
    assert masked.numel == csr.numel == 77 and masked.fan_out_axis_size == csr.fan_out_axis_size == 7
    assert masked.active == csr.active
    assert torch.equal(masked.active_positions(), csr.active_positions())
    assert torch.equal(masked.active_values(), csr.active_values())
    queries = torch.arange(77)
    assert torch.equal(masked.contains(queries), csr.contains(queries))
    assert len(masked_views(masked.topology)) == 1


@pytest.mark.parametrize("density", [0.1, 0.8])  # rejection sampling / exact enumeration
def test_views_draw_the_same_inactive_positions(density):
    masked, csr = twin_views(20, 15, density, seed=2)
    exclude = torch.tensor([0, 7, 299])
    count = 40 if density < 0.5 else 20
    drawn_masked = masked.sample_inactive(count, torch.Generator().manual_seed(5), exclude)
    drawn_csr = csr.sample_inactive(count, torch.Generator().manual_seed(5), exclude)
    assert torch.equal(drawn_masked, drawn_csr)
    assert not masked.contains(drawn_masked).any() and not torch.isin(drawn_masked, exclude).any()


@pytest.mark.parametrize(("density", "zeta"), [(0.2, 0.3), (0.9, 0.5)])  # the second is capped by free positions
def test_set_prunes_the_same_positions_as_the_masked_criteria(density, zeta):
    masked, csr = twin_views(16, 12, density, seed=3)
    generator = torch.Generator().manual_seed(3)
    set_same_weights(masked, csr, generator)
    layer = masked.topology.layers[0]
    reference = weakest_of(
        layer.weight, set_prune_selection(layer.weight, layer.mask, zeta), layer.numel - layer.active
    )
    from_masked, from_csr = set_prune_positions(masked, zeta), set_prune_positions(csr, zeta)
    assert reference.numel() > 0
    assert torch.equal(from_masked, reference)  # same positions in the same order: ties broken alike
    assert torch.equal(from_csr, reference)


@pytest.mark.parametrize("grow_init", ["zero", "normal", "kaiming"])
def test_set_update_on_both_backends_gives_identical_topologies(grow_init):
    masked, csr = twin_views(30, 20, 0.15, seed=4)
    weights = torch.Generator().manual_seed(4)
    masked_generator, csr_generator = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    before = masked.active_positions()
    for _ in range(5):
        set_same_weights(masked, csr, weights)
        prune = set_prune_positions(masked, 0.3)
        changed_masked = set_update(masked, 0.3, masked_generator, grow_init, grow_std=0.05)
        changed_csr = set_update(csr, 0.3, csr_generator, grow_init, grow_std=0.05)
        assert changed_masked == changed_csr == 2 * prune.numel() > 0
        assert not torch.isin(prune, masked.active_positions()).any()  # nothing pruned now is regrown now
        assert_same_topology(masked, csr)
        masked.topology.check()
        csr_topology.check(csr.layer)
    assert masked.active == before.numel()
    assert not torch.equal(masked.active_positions(), before)


def test_training_with_set_gives_the_same_losses_and_topologies_on_both_backends():
    """A small MLP trained with SGD + momentum and a SET update every 4 steps, masked vs csr."""
    masked_model, masks, csr_model = twin_mlp((24, 32, 16, 5), density=0.25, seed=5)
    masked_linears = [m for m in masked_model if isinstance(m, torch.nn.Linear)]
    csr_linears = [m for m in csr_model if isinstance(m, CsrLinear)]
    masked_optimizer = torch.optim.SGD(masked_model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    csr_optimizer = torch.optim.SGD(csr_model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    topology = masked_topology(masked_linears, masks, masked_optimizer)
    masked_layer_views = masked_views(topology)
    csr_layer_views = [CsrLayerView(layer, csr_optimizer) for layer in csr_linears]
    masked_generator, csr_generator = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    data = torch.Generator().manual_seed(5)
    x = torch.randn(64, 24, generator=data, dtype=F64)
    y = torch.randint(0, 5, (64,), generator=data)

    changed = 0
    for step in range(1, 21):
        batch = torch.arange(16) + 16 * (step % 4)
        losses = []
        for model, optimizer in ((masked_model, masked_optimizer), (csr_model, csr_optimizer)):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        topology.apply_masks()
        assert losses[0] == pytest.approx(losses[1], rel=1e-12, abs=1e-12)
        if step % 4 == 0:
            for masked_view, csr_view in zip(masked_layer_views, csr_layer_views):
                changed += set_update(masked_view, 0.3, masked_generator, "normal", grow_std=0.05)
                set_update(csr_view, 0.3, csr_generator, "normal", grow_std=0.05)
            topology.check()
    assert changed > 0
    for layer, csr_layer in zip(topology.layers, csr_linears):
        assert torch.equal(layer.mask, csr_topology.dense_mask_for_tests(csr_layer))
        torch.testing.assert_close(layer.weight.detach(), csr_layer.to_dense_weight())


def test_a_layer_too_large_for_any_dense_tensor_trains_and_evolves():
    """200,000 x 200,000 positions (160 GB as a dense float32 matrix): every step must stay O(nnz)."""
    generator = torch.Generator().manual_seed(6)
    side, nnz = 200_000, 5000
    positions = sample_absent(torch.zeros(0, dtype=torch.int64), side * side, nnz, generator)
    layer = CsrLinear.from_positions((side, side), positions, torch.randn(nnz, generator=generator), torch.zeros(side))
    optimizer = torch.optim.Adam(layer.parameters())
    layer(torch.randn(3, side, generator=generator)).pow(2).sum().backward()
    optimizer.step()
    view = CsrLayerView(layer, optimizer)
    assert set_update(view, 0.3, generator, "normal") == 2 * 1500
    csr_topology.check(layer)
    assert layer.nnz == nnz and optimizer.state[layer.values]["exp_avg"].shape == (nnz,)
    assert view.contains(view.active_positions()).all()
