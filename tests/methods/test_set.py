import pytest
import torch
from torch.nn import functional as F

import evosparse
from conftest import small_mlp
from evosparse.criteria.magnitude import set_prune_positions, set_prune_selection


def active_of(weight, mask):
    """(active positions, active values) of a dense weight and its mask, as a sparse layer lists them."""
    positions = mask.reshape(-1).nonzero().squeeze(1)
    return positions, weight.reshape(-1)[positions]


def test_set_removes_zeta_of_each_sign_closest_to_zero():
    weight = torch.tensor([[0.5, -0.1, 0.2, -0.9, 0.0], [0.05, -0.3, 0.7, -0.02, 0.4]])
    mask = weight != 0
    mask[0, 4] = True  # an active exact zero counts as positive
    positions, values = active_of(weight, mask)
    chosen = positions[set_prune_selection(values, zeta=0.4)].tolist()
    # positives (incl. the zero): 0.0, 0.05, 0.2, 0.4, 0.5, 0.7 -> 2 removed: 0.0 and 0.05
    # negatives: -0.02, -0.1, -0.3, -0.9 -> 2 removed: -0.02 and -0.1
    assert sorted(chosen) == sorted([4, 5, 1, 8])
    assert sorted(set_prune_positions(positions, values, free=100, zeta=0.4).tolist()) == [1, 4, 5, 8]
    # Capped at the free positions: the weakest of the selection by |w| (0.0, then -0.02).
    assert sorted(set_prune_positions(positions, values, free=2, zeta=0.4).tolist()) == [4, 8]


def test_set_selection_matches_brute_force_on_random_weights():
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        weight = torch.randn(7, 9, generator=generator)
        mask = torch.rand(7, 9, generator=generator) < 0.6
        positions, values = active_of(weight, mask)
        chosen = set(positions[set_prune_selection(values, 0.3)].tolist())
        flat, active = weight.view(-1), mask.view(-1)
        expected = set()
        for sign in (1, -1):
            side = [i for i in range(63) if active[i] and (flat[i] >= 0 if sign == 1 else flat[i] < 0)]
            side.sort(key=lambda i: abs(flat[i].item()))
            expected |= set(side[: round(0.3 * len(side))])
        assert chosen == expected
        free = int((~mask).sum())
        for limit in (free, len(expected) // 2):
            capped = set(set_prune_positions(positions, values, limit, 0.3).tolist())
            weakest = sorted(expected, key=lambda i: abs(flat[i].item()))[: min(limit, len(expected))]
            assert capped == set(weakest)


def run_updates(model, sparsifier, updates=3):
    x, y = torch.randn(32, 20), torch.randint(0, 5, (32,))
    optimizer = sparsifier.optimizer
    for _ in range(updates):
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            sparsifier.step()
        sparsifier.end_epoch()


def test_set_update_swaps_connections_keeps_budgets_and_counts_each_real_change(mlp):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
    sparsifier = evosparse.sparsify(mlp, optimizer, "set", density=0.3, zeta=0.3)
    before = [layer.mask.clone() for layer in sparsifier.topology.layers]
    run_updates(mlp, sparsifier, updates=1)
    stats = sparsifier.take_stats()
    assert stats.updates == 1
    flipped = 0
    for old, layer in zip(before, sparsifier.topology.layers):
        removed, added = (old & ~layer.mask).sum().item(), (layer.mask & ~old).sum().item()
        assert removed == added and removed > 0
        assert layer.active == layer.budget
        flipped += removed + added
    # A position pruned and regrown in the same update would be counted as changed without flipping.
    assert stats.connections_changed == flipped


def test_set_never_regrows_a_connection_it_prunes_in_the_same_update(monkeypatch):
    model = small_mlp((20, 12, 5))  # the last layer is small: regrowing there at random would often hit a pruned one
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(model, optimizer, "set", density=0.5, distribution="uniform", zeta=0.5)
    calls = []
    for layer in sparsifier.topology.layers:
        real = layer.rewire

        def recording(prune, grow, values=0.0, real=real, layer=layer):
            calls.append((layer.name, prune.clone(), grow.clone(), layer.active_positions().clone()))
            return real(prune, grow, values)

        monkeypatch.setattr(layer, "rewire", recording)
    for _ in range(5):
        sparsifier.method.update()
    assert len(calls) == 5 * len(sparsifier.topology.layers)
    for name, prune, grow, active in calls:
        assert prune.numel() == grow.numel() > 0, name
        assert torch.isin(prune, active).all() and not torch.isin(grow, active).any(), name
        assert not torch.isin(grow, prune).any(), name


@pytest.mark.parametrize(
    "grow_init, check",
    [
        ("zero", lambda v, std: (v == 0).all()),
        ("normal", lambda v, std: (v != 0).all() and v.abs().max() < 0.1),
        ("kaiming", lambda v, std: (v != 0).all() and 0.3 * std < v.std() < 3 * std),
    ],
)
def test_grown_weights_take_the_requested_initialisation(grow_init, check):
    model = small_mlp((200, 100, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sparsifier = evosparse.sparsify(model, optimizer, "set", density=0.2, grow_init=grow_init, grow_std=0.01)
    layer = sparsifier.topology.layers[0]
    old = layer.mask.clone()
    sparsifier.method.update()
    grown = layer.mask & ~old
    assert grown.any()
    std = (2.0 / (layer.active / layer.shape[0])) ** 0.5
    assert check(layer.weight.detach()[grown], std)


def test_dense_layers_are_left_alone_by_set():
    model = small_mlp((50, 40, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sparsifier = evosparse.sparsify(model, optimizer, "set", density=0.5, distribution="erk")
    last = sparsifier.topology.layers[-1]
    assert last.active == last.numel
    before = last.mask.clone()
    sparsifier.method.update()
    assert torch.equal(before, last.mask)


def test_step_schedule_updates_every_interval_and_stops_at_update_until(mlp):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.01)
    sparsifier = evosparse.sparsify(
        mlp, optimizer, "set", density=0.3, update_unit="step", update_interval=2, update_until=0.5, total_steps=12
    )
    run_updates(mlp, sparsifier, updates=4)  # 12 steps: updates at steps 2 and 4 only (step < 6)
    assert sparsifier.take_stats().updates == 2


def test_epoch_schedule_never_updates_after_the_final_epoch(mlp):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.01)
    sparsifier = evosparse.sparsify(mlp, optimizer, "set", density=0.3, total_steps=9)
    run_updates(mlp, sparsifier, updates=3)  # 3 epochs of 3 steps
    assert sparsifier.take_stats().updates == 2
