"""Topology invariants under long random sequences of optimizer steps and prune/grow updates."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import evosparse
from conftest import small_mlp

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01),
}

actions = st.lists(st.sampled_from(["step", "step", "step", "update", "random_rewire"]), min_size=5, max_size=40)


def masked_reference_output(model, sparsifier, x):
    """The model's output recomputed with weights explicitly multiplied by their masks."""
    params = dict(model.named_parameters())
    for layer in sparsifier.topology.layers:
        params[layer.name] = layer.weight * layer.mask
    return torch.func.functional_call(model, params, (x,))


def assert_invariants(model, sparsifier, budgets, x):
    topology = sparsifier.topology
    for layer, budget in zip(topology.layers, budgets):
        assert int(layer.mask.sum()) == budget
        assert not layer.weight.detach()[~layer.mask].any()
    assert torch.equal(model(x), masked_reference_output(model, sparsifier, x))


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@settings(max_examples=15, deadline=None)
@given(sequence=actions, seed=st.integers(0, 2**16), density=st.floats(0.05, 0.6))
def test_invariants_hold_through_random_training(optimizer_name, sequence, seed, density):
    torch.manual_seed(seed)
    model = small_mlp((12, 10, 8, 3))
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    sparsifier = evosparse.sparsify(model, optimizer, "set", density=density, seed=seed, zeta=0.4)
    budgets = [layer.budget for layer in sparsifier.topology.layers]
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 12, generator=generator), torch.randint(0, 3, (16,), generator=generator)
    for action in sequence:
        if action == "step":
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            for layer in sparsifier.topology.layers:
                assert not layer.weight.grad[~layer.mask].any(), "masked gradients reach the optimizer"
            optimizer.step()
            sparsifier.step()
        else:
            before = [layer.mask.clone() for layer in sparsifier.topology.layers]
            if action == "update":
                changed = sparsifier.method.update()
            else:
                layer = sparsifier.topology.layers[0]
                flat = layer.mask.view(-1)
                active, free = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
                k = min(active.numel(), free.numel(), 3)
                changed = layer.rewire(
                    active[torch.randperm(active.numel())[:k]], free[torch.randperm(free.numel())[:k]], torch.randn(k)
                )
            flipped_in_all = 0
            for old, layer in zip(before, sparsifier.topology.layers):
                flipped = (old ^ layer.mask).view(-1).nonzero().squeeze(1)
                flipped_in_all += flipped.numel()
                for value in optimizer.state.get(layer.weight, {}).values():
                    if torch.is_tensor(value) and value.shape == layer.weight.shape:
                        assert not value.view(-1)[flipped].any(), "optimizer state survives a rewiring"
            # Growth onto an active position, or regrowth of a position pruned in the same update, would
            # change fewer positions than the update reports.
            assert flipped_in_all == changed, "a rewiring grew an active or a just-pruned position"
        assert_invariants(model, sparsifier, budgets, x)
