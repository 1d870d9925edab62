import pytest
import torch
from torch.nn import functional as F

import evosparse
from conftest import small_mlp
from evosparse.criteria.magnitude import set_prune_selection


def test_set_removes_zeta_of_each_sign_closest_to_zero():
    weight = torch.tensor([[0.5, -0.1, 0.2, -0.9, 0.0], [0.05, -0.3, 0.7, -0.02, 0.4]])
    mask = weight != 0
    mask[0, 4] = True  # an active exact zero counts as positive
    chosen = set_prune_selection(weight, mask, zeta=0.4).tolist()
    # positives (incl. the zero): 0.0, 0.05, 0.2, 0.4, 0.5, 0.7 -> 2 removed: 0.0 and 0.05
    # negatives: -0.02, -0.1, -0.3, -0.9 -> 2 removed: -0.02 and -0.1
    assert sorted(chosen) == sorted([4, 5, 1, 8])


def test_set_selection_matches_brute_force_on_random_weights():
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        weight = torch.randn(7, 9, generator=generator)
        mask = torch.rand(7, 9, generator=generator) < 0.6
        chosen = set(set_prune_selection(weight, mask, 0.3).tolist())
        flat, active = weight.view(-1), mask.view(-1)
        expected = set()
        for sign in (1, -1):
            side = [i for i in range(63) if active[i] and (flat[i] >= 0 if sign == 1 else flat[i] < 0)]
            side.sort(key=lambda i: abs(flat[i].item()))
            expected |= set(side[: round(0.3 * len(side))])
        assert chosen == expected


def run_updates(model, sparsifier, updates=3):
    x, y = torch.randn(32, 20), torch.randint(0, 5, (32,))
    optimizer = sparsifier.topology.optimizer
    for _ in range(updates):
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            sparsifier.step()
        sparsifier.end_epoch()


def test_set_update_changes_connections_keeps_budgets_and_never_regrows_pruned(mlp):
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
    assert stats.connections_changed == flipped


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
