"""The SparseLayer protocol on every backend: the same answers, the same draws, the same rewiring, the same gradients.

Every test runs through :class:`~evosparse.topology.layer.SparseLayer` alone (a masked layer and a csr or
condensed layer of the same weights), so a method written once against the protocol makes the same choices
on all of them. The masks here are uneven; a condensed layer pads its rows to the fullest one.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend_pairs import (
    BACKEND_NAMES,
    F64,
    dense_weight,
    layer_on,
    masked_linear,
    masked_topology,
    method_on,
    twin_layers,
    twin_mlp,
)
from evosparse.backends import csr_topology
from evosparse.backends.csr_layer import CsrLinear
from evosparse.backends.csr_model import CsrLayer
from evosparse.criteria.magnitude import set_prune_positions, set_prune_selection, weakest_of
from evosparse.errors import InvariantError, UsageError
from evosparse.topology.masks import MaskedLayer
from evosparse.topology.positions import sample_absent


def sgd(parameters):
    return torch.optim.SGD(parameters, lr=0.1, momentum=0.9)


#: The backends storing sparse linear modules, each tested against a masked twin.
SPARSE_LINEAR = ("csr", "condensed")


def assert_same_topology(masked: MaskedLayer, csr: CsrLayer) -> None:
    """Same active positions and the same weights (zeros elsewhere)."""
    assert torch.equal(masked.active_positions(), csr.active_positions())
    assert torch.equal(masked.weight.detach(), csr.module.to_dense_weight())


def set_same_weights(masked: MaskedLayer, csr: CsrLayer, generator: torch.Generator) -> None:
    """Give both backends the same new weights, coarsely rounded so that equal magnitudes (ties) abound."""
    draws = torch.round(torch.randn(masked.shape, generator=generator, dtype=F64) * 4) / 4
    with torch.no_grad():
        masked.weight.copy_(draws * masked.mask)
        csr.module.set_active_values(draws.reshape(-1)[csr.active_positions()])


def brute_force_set_prune(weight: torch.Tensor, mask: torch.Tensor, zeta: float) -> list[int]:
    """SET's removal set by enumeration: ζ of the positive (≥ 0) and ζ of the negative active weights closest to
    zero (ties to the smaller position), positives first, then the weakest of them (stable) up to the free count."""
    flat_weight, flat_mask = weight.reshape(-1).tolist(), mask.reshape(-1).tolist()
    active = [p for p, on in enumerate(flat_mask) if on]
    chosen: list[int] = []
    for side in (lambda v: v >= 0, lambda v: v < 0):
        members = sorted((abs(flat_weight[p]), p) for p in active if side(flat_weight[p]))
        chosen += [p for _, p in members[: int(round(zeta * len(members)))]]
    free = len(flat_mask) - len(active)
    if len(chosen) > free:
        ranked = sorted(range(len(chosen)), key=lambda k: (abs(flat_weight[chosen[k]]), k))
        chosen = [chosen[k] for k in ranked[:free]]
    return chosen


# -- queries ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", SPARSE_LINEAR)
def test_both_backends_answer_queries_alike(backend):
    masked, csr = twin_layers(11, 7, 0.3, seed=1, backend=backend)
    for layer in (masked, csr):
        assert layer.shape == (7, 11) and layer.numel == 77 and layer.fan_out_axis_size == 7
        assert layer.is_linear and layer.dtype == F64 and layer.device == torch.device("cpu")
        assert layer.active_positions().dtype == torch.int64
    assert masked.active == csr.active == int(masked.mask.sum()) > 0
    assert torch.equal(masked.active_positions(), masked.mask.reshape(-1).nonzero().squeeze(1))
    assert torch.equal(masked.active_positions(), csr.active_positions())
    assert torch.equal(masked.active_values(), csr.active_values())
    assert torch.equal(masked.active_values(), masked.weight.detach().reshape(-1)[masked.active_positions()])
    queries = torch.arange(77)
    assert torch.equal(masked.contains(queries), masked.mask.reshape(-1))
    assert torch.equal(csr.contains(queries), masked.mask.reshape(-1))
    assert torch.equal(masked.free_per_source(), csr.free_per_source())
    assert torch.equal(masked.free_per_source(), (~masked.mask).sum(dim=0))


@pytest.mark.parametrize("density", [0.1, 0.8])  # rejection sampling / exact enumeration
@pytest.mark.parametrize("backend", SPARSE_LINEAR)
def test_both_backends_draw_the_same_inactive_positions(density, backend):
    masked, csr = twin_layers(20, 15, density, seed=2, backend=backend)
    exclude = torch.tensor([0, 7, 299])
    count = 40 if density < 0.5 else 20
    drawn_masked = masked.sample_inactive(count, torch.Generator().manual_seed(5), exclude)
    drawn_csr = csr.sample_inactive(count, torch.Generator().manual_seed(5), exclude)
    assert torch.equal(drawn_masked, drawn_csr)
    assert drawn_masked.unique().numel() == count
    assert not masked.contains(drawn_masked).any() and not torch.isin(drawn_masked, exclude).any()
    weights = torch.arange(1.0, 21.0)
    by_source_masked = masked.sample_inactive_by_source(10, weights, torch.Generator().manual_seed(6))
    by_source_csr = csr.sample_inactive_by_source(10, weights, torch.Generator().manual_seed(6))
    assert torch.equal(by_source_masked, by_source_csr) and not masked.contains(by_source_masked).any()


@pytest.mark.parametrize("backend", SPARSE_LINEAR)
def test_both_backends_initialise_the_same_values_from_the_same_generator(backend):
    masked, csr = twin_layers(14, 9, 0.3, seed=10, backend=backend)
    kept = masked.active_values().clone()
    for layer in (masked, csr):
        layer.initialise("keep", torch.Generator().manual_seed(7))
        assert torch.equal(layer.active_values(), kept)
        layer.initialise("sparse_kaiming", torch.Generator().manual_seed(7))
    assert torch.equal(masked.active_values(), csr.active_values())
    assert not torch.equal(masked.active_values(), kept)
    draws = torch.randn(masked.shape, generator=torch.Generator().manual_seed(7))  # one dense draw, then the mask
    std = 2**0.5 / max(1.0, masked.active / masked.fan_out_axis_size) ** 0.5
    torch.testing.assert_close(masked.active_values(), (draws * std).to(F64).reshape(-1)[masked.active_positions()])
    masked.check()
    with pytest.raises(UsageError, match="unknown init 'magic'"):
        csr.initialise("magic", torch.Generator())


# -- SET written once -------------------------------------------------------------------------------


@pytest.mark.parametrize(("density", "zeta"), [(0.2, 0.3), (0.9, 0.5)])  # the second is capped by free positions
@pytest.mark.parametrize("backend", SPARSE_LINEAR)
def test_set_prunes_the_brute_force_positions_on_both_backends(density, zeta, backend):
    masked, csr = twin_layers(16, 12, density, seed=3, backend=backend)
    set_same_weights(masked, csr, torch.Generator().manual_seed(3))
    reference = brute_force_set_prune(masked.weight.detach(), masked.mask, zeta)
    assert len(reference) > 0
    for layer in (masked, csr):
        chosen = set_prune_positions(layer.active_positions(), layer.active_values(), layer.numel - layer.active, zeta)
        assert chosen.tolist() == reference  # same positions in the same order: ties broken alike
    if density > 0.5:  # the cap binds: the selection alone is larger than the free positions
        values = masked.active_values()
        assert set_prune_selection(values, zeta).numel() > masked.numel - masked.active
        capped = weakest_of(values, set_prune_selection(values, zeta), masked.numel - masked.active)
        assert masked.active_positions()[capped].tolist() == reference


@pytest.mark.parametrize("grow_init", ["zero", "normal", "kaiming"])
@pytest.mark.parametrize("backend", SPARSE_LINEAR)
def test_set_evolve_on_both_backends_gives_identical_topologies(grow_init, backend):
    masked, csr = twin_layers(30, 20, 0.15, seed=4, optimizer_factory=sgd, backend=backend)
    weights = torch.Generator().manual_seed(4)
    on_masked = method_on(
        "set", [masked], torch.Generator().manual_seed(9), zeta=0.3, grow_init=grow_init, grow_std=0.05
    )
    on_csr = method_on("set", [csr], torch.Generator().manual_seed(9), zeta=0.3, grow_init=grow_init, grow_std=0.05)
    before = masked.active_positions()
    for _ in range(5):
        set_same_weights(masked, csr, weights)
        was_active = masked.active_positions()
        prune = set_prune_positions(was_active, masked.active_values(), masked.numel - masked.active, 0.3)
        changed_masked, changed_csr = on_masked.evolve(masked), on_csr.evolve(csr)
        assert changed_masked == changed_csr == 2 * prune.numel() > 0
        grown = masked.active_positions()[~torch.isin(masked.active_positions(), was_active)]
        assert grown.numel() == prune.numel()  # as many grown as pruned, none of them active before ...
        assert not torch.isin(prune, masked.active_positions()).any()  # ... and nothing pruned now regrown now
        assert_same_topology(masked, csr)
        masked.check()
        csr.check()
    assert masked.active == before.numel() == masked.budget
    assert not torch.equal(masked.active_positions(), before)


def test_training_with_set_gives_the_same_losses_and_topologies_on_both_backends():
    """A small MLP trained with SGD + momentum and a SET update every 4 steps, masked vs csr."""
    masked_model, masks, csr_model = twin_mlp((24, 32, 16, 5), density=0.25, seed=5)
    masked_linears = [m for m in masked_model if isinstance(m, torch.nn.Linear)]
    csr_linears = [m for m in csr_model if isinstance(m, CsrLinear)]
    masked_optimizer = torch.optim.SGD(masked_model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    csr_optimizer = torch.optim.SGD(csr_model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    topology = masked_topology(masked_linears, masks, masked_optimizer)
    csr_layers = [
        CsrLayer(f"layer{index}", linear, linear.nnz, csr_optimizer) for index, linear in enumerate(csr_linears)
    ]
    params = {"zeta": 0.3, "grow_init": "normal", "grow_std": 0.05}
    on_masked = method_on("set", topology.layers, torch.Generator().manual_seed(1), **params)
    on_csr = method_on("set", csr_layers, torch.Generator().manual_seed(1), **params)
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
            changed_now = on_masked.update()
            assert on_csr.update() == changed_now
            changed += changed_now
            topology.check()
    assert changed > 0
    for layer, csr_layer in zip(topology.layers, csr_layers):
        assert torch.equal(layer.active_positions(), csr_layer.active_positions())
        assert torch.equal(layer.mask, csr_topology.dense_mask_for_tests(csr_layer.module))
        torch.testing.assert_close(layer.weight.detach(), csr_layer.module.to_dense_weight())


def test_a_layer_too_large_for_any_dense_tensor_trains_and_evolves():
    """200,000 x 200,000 positions (160 GB as a dense float32 matrix): every step must stay O(nnz)."""
    generator = torch.Generator().manual_seed(6)
    side, nnz = 200_000, 5000
    positions = sample_absent(torch.zeros(0, dtype=torch.int64), side * side, nnz, generator)
    module = CsrLinear.from_positions((side, side), positions, torch.randn(nnz, generator=generator), torch.zeros(side))
    optimizer = torch.optim.Adam(module.parameters())
    module(torch.randn(3, side, generator=generator)).pow(2).sum().backward()
    optimizer.step()
    layer = CsrLayer("big", module, nnz, optimizer)
    method = method_on("set", [layer], generator, zeta=0.3, grow_init="normal")
    assert method.evolve(layer) == 2 * 1500
    layer.check()
    assert module.nnz == nnz and optimizer.state[module.values]["exp_avg"].shape == (nnz,)
    assert layer.contains(layer.active_positions()).all()


# -- rewiring preconditions -------------------------------------------------------------------------


REWIRE_CASES = {
    "prune_inactive": "pruning an inactive",
    "prune_outside": "pruning an inactive",
    "grow_active": "growing an active",
    "regrow_pruned": "growing an active",
    "grow_outside": "outside",
    "grow_negative": "outside",
    "duplicate_grow": "duplicate",
    "duplicate_prune": "duplicate",
    "value_count": "grow values",
}


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("case", sorted(REWIRE_CASES))
def test_rewire_refuses_a_violated_precondition_and_changes_nothing(backend, case):
    linear, mask = masked_linear(5, 4, 0.5, seed=4)
    layer = layer_on(backend, linear, mask, sgd)
    flat = mask.reshape(-1)
    active, inactive = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
    prune, grow, values = active[:1], inactive[:1], torch.tensor(0.5)
    if case == "prune_inactive":
        prune = inactive[1:2]
    elif case == "prune_outside":
        prune = torch.tensor([flat.numel()])
    elif case == "grow_active":
        grow = active[1:2]
    elif case == "regrow_pruned":
        prune, grow = active[:2], active[:2]
    elif case == "grow_outside":
        grow = torch.tensor([flat.numel()])
    elif case == "grow_negative":
        grow = torch.tensor([-1])
    elif case == "duplicate_grow":
        grow = inactive[[0, 0]]
    elif case == "duplicate_prune":
        prune = active[[1, 1]]
    else:
        values = torch.zeros(2)
    positions, weights = layer.active_positions().clone(), dense_weight(layer).clone()
    with pytest.raises(InvariantError, match=REWIRE_CASES[case]):
        layer.rewire(prune, grow, values)
    assert torch.equal(layer.active_positions(), positions)
    assert torch.equal(dense_weight(layer), weights)
    layer.check()


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_check_catches_a_drifted_budget(backend):
    linear, mask = masked_linear(6, 5, 0.5, seed=8)
    layer = layer_on(backend, linear, mask)
    layer.check()
    layer.budget += 1
    with pytest.raises(InvariantError, match="budget"):
        layer.check()
    layer.check(fixed_budget=False)


def test_check_catches_nonzero_masked_weights():
    linear, mask = masked_linear(6, 5, 0.5, seed=8)
    layer = layer_on("masked", linear, mask)
    with torch.no_grad():
        linear.weight[~mask] = 1.0
    with pytest.raises(InvariantError, match="not zero"):
        layer.check()


# -- gradients --------------------------------------------------------------------------------------


def dense_gradient(layer, x: torch.Tensor) -> torch.Tensor:
    """∂L/∂W of ``loss`` at every position, by autograd through a dense copy of the layer's weight (brute force)."""
    weight = dense_weight(layer).detach().requires_grad_()
    (gradient,) = torch.autograd.grad(loss(F.linear(x, weight, layer.module.bias)), [weight])
    return gradient.reshape(-1)


def loss(y: torch.Tensor) -> torch.Tensor:
    return torch.tanh(y).pow(2).sum() + y.sum()


def backward(layer, x: torch.Tensor) -> None:
    layer.module.zero_grad()
    loss(layer.module(x)).backward()


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_gradient_at_is_the_dense_gradient_of_the_last_recorded_pass(backend):
    linear, mask = masked_linear(9, 6, 0.4, seed=3)
    layer = layer_on(backend, linear, mask)
    inputs = torch.randn(2, 5, 9, generator=torch.Generator().manual_seed(3), dtype=F64)
    everywhere = torch.arange(layer.numel)
    with pytest.raises(UsageError, match="no gradient of layer0 was recorded") as info:
        layer.gradient_at(everywhere)
    assert "\n" not in str(info.value)
    backward(layer, inputs[0])  # not recording yet
    with pytest.raises(UsageError, match="no gradient of layer0 was recorded"):
        layer.gradient_at(everywhere)
    layer.record_gradients(True)
    for x in inputs:  # the last pass is the one kept
        backward(layer, x)
    expected = dense_gradient(layer, inputs[1])
    assert not torch.allclose(expected, dense_gradient(layer, inputs[0]))
    torch.testing.assert_close(layer.gradient_at(everywhere), expected, rtol=1e-12, atol=1e-14)
    shuffled = torch.randperm(layer.numel, generator=torch.Generator().manual_seed(0))[:20]
    torch.testing.assert_close(layer.gradient_at(shuffled), expected[shuffled], rtol=1e-12, atol=1e-14)
    layer.forget_gradients()
    with pytest.raises(UsageError, match="no gradient"):
        layer.gradient_at(everywhere)
    backward(layer, inputs[0])
    torch.testing.assert_close(layer.gradient_at(everywhere), dense_gradient(layer, inputs[0]))
    layer.record_gradients(False)
    with pytest.raises(UsageError, match="no gradient"):
        layer.gradient_at(everywhere)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("block_positions", [1, 7, 40, 1 << 20])
def test_inactive_gradient_blocks_cover_every_inactive_position_in_order_with_the_dense_gradient(
    backend, block_positions
):
    linear, mask = masked_linear(7, 8, 0.3, seed=4)
    layer = layer_on(backend, linear, mask)
    with pytest.raises(UsageError, match="no gradient"):
        next(layer.inactive_gradient_blocks(block_positions))
    layer.record_gradients(True)
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(4), dtype=F64)
    backward(layer, x)
    blocks = list(layer.inactive_gradient_blocks(block_positions))
    positions = torch.cat([positions for positions, _ in blocks])
    assert len(blocks) > (1 if block_positions < 56 else 0)
    assert all(p.numel() == g.numel() for p, g in blocks)
    assert torch.equal(positions, (~mask).reshape(-1).nonzero().squeeze(1))
    expected = dense_gradient(layer, x)[positions]
    torch.testing.assert_close(torch.cat([g for _, g in blocks]), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_gradient_hooks_receive_the_gradient_at_the_active_positions_after_every_backward(backend):
    linear, mask = masked_linear(9, 6, 0.4, seed=5)
    layer = layer_on(backend, linear, mask)
    received: list[torch.Tensor] = []
    handle = layer.register_gradient_hook(lambda gradient: received.append(gradient.clone()))
    inputs = torch.randn(3, 4, 9, generator=torch.Generator().manual_seed(5), dtype=F64)
    for x in inputs[:2]:
        backward(layer, x)
    assert len(received) == 2
    for gradient, x in zip(received, inputs[:2]):
        assert gradient.shape == (layer.active,)
        torch.testing.assert_close(gradient, dense_gradient(layer, x)[layer.active_positions()], rtol=1e-12, atol=1e-14)
    handle.remove()
    backward(layer, inputs[2])
    assert len(received) == 2


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_training_keeps_inactive_weights_at_zero_once_hooks_are_installed(backend):
    linear, mask = masked_linear(9, 6, 0.4, seed=6)
    layer = layer_on(backend, linear, mask, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1))
    optimizer = layer.optimizer
    positions = layer.active_positions().clone()
    for step in range(3):
        x = torch.randn(4, 9, generator=torch.Generator().manual_seed(step), dtype=F64)
        optimizer.zero_grad()
        loss(layer.module(x)).backward()
        optimizer.step()
        layer.apply_mask()
    assert torch.equal(layer.active_positions(), positions)
    assert not dense_weight(layer).reshape(-1)[~torch.isin(torch.arange(layer.numel), positions)].any()
    layer.check()
    if backend == "masked":  # the masked gradient hook zeroed the gradient off the mask before the step
        assert not linear.weight.grad[~mask].any() and linear.weight.grad[mask].any()


# -- restoring and adopting positions -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_load_positions_restores_the_saved_positions_and_keeps_the_weights(backend):
    linear, mask = masked_linear(8, 6, 0.5, seed=7)
    layer = layer_on(backend, linear, mask, sgd)
    positions, weights = layer.active_positions().clone(), dense_weight(layer).clone()
    layer.load_positions(positions)
    assert torch.equal(layer.active_positions(), positions) and torch.equal(dense_weight(layer), weights)
    other = torch.tensor([0, 5, 17])
    if backend == "masked":  # the mask follows, the weights wait for apply_mask (so a refused load can go back)
        layer.load_positions(other)
        assert torch.equal(layer.active_positions(), other)
        assert torch.equal(layer.weight.detach(), weights)
        layer.apply_mask()
        assert torch.equal(dense_weight(layer).reshape(-1)[other], weights.reshape(-1)[other])
        layer.check(fixed_budget=False)
    else:  # the structure comes with the model's state_dict: a mismatch is refused in one line
        with pytest.raises(UsageError, match="load the model's state_dict before") as info:
            layer.load_positions(other)
        assert "\n" not in str(info.value)
        assert torch.equal(layer.active_positions(), positions)


@pytest.mark.parametrize("backend", SPARSE_LINEAR)
def test_adopt_positions_rewires_both_backends_alike_and_resets_the_optimizer_state(backend):
    masked, csr = twin_layers(8, 6, 0.5, seed=9, optimizer_factory=sgd, backend=backend)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(9), dtype=F64)
    for layer in (masked, csr):  # one step, so that both optimizers hold momentum
        layer.optimizer.zero_grad()
        loss(layer.module(x)).backward()
        layer.optimizer.step()
        layer.apply_mask()
    before = masked.active_positions()
    assert torch.equal(before, csr.active_positions())
    target = torch.sort(torch.randperm(48, generator=torch.Generator().manual_seed(1))[:20]).values
    kept, grown = target[torch.isin(target, before)], target[~torch.isin(target, before)]
    changed = int((~torch.isin(before, target)).sum()) + grown.numel()
    assert 0 < kept.numel() < target.numel() and changed > grown.numel()
    for layer in (masked, csr):
        weights = dense_weight(layer).reshape(-1).clone()
        assert layer.adopt_positions(target) == changed
        assert torch.equal(layer.active_positions(), target) and layer.budget == 20
        layer.check()
        flat = dense_weight(layer).reshape(-1)
        assert torch.equal(flat[kept], weights[kept]) and flat[kept].any()
        assert not flat[grown].any()  # new connections start at 0
    torch.testing.assert_close(masked.weight.detach(), csr.module.to_dense_weight(), rtol=1e-12, atol=1e-14)
    masked_momentum = masked.optimizer.state[masked.weight]["momentum_buffer"].reshape(-1)
    csr_momentum = csr.module.active_gradient(csr.optimizer.state[csr.module.values]["momentum_buffer"])
    assert not masked_momentum[grown].any() and masked_momentum[kept].any()
    assert not masked_momentum[~torch.isin(torch.arange(48), kept)].any()  # pruned and never-active: zero
    torch.testing.assert_close(csr_momentum, masked_momentum[target], rtol=1e-12, atol=1e-14)
