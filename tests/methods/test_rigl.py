import pytest
import torch
from torch.nn import functional as F

import evosparse
from backend_pairs import BACKEND_NAMES, F64, dense_weight, layer_on, masked_linear, method_on
from conftest import small_mlp
from evosparse.criteria.growth import top_gradient_positions
from evosparse.criteria.schedules import cosine_update_fraction
from evosparse.errors import UsageError
from evosparse.methods.rigl import SWAP_RULES
from support import (
    DEVICES,
    assert_learns_digits_at_a_constant_density,
    assert_resume_is_exact,
    batches,
    run_on_device,
    small_conv,
    train_steps,
)


def flat_set(mask):
    return set(mask.reshape(-1).nonzero().squeeze(1).tolist())


def blocks_of(positions, gradients, sizes):
    """``positions`` and their ``gradients`` cut into consecutive blocks of the given ``sizes`` (cycled)."""
    blocks, start, index = [], 0, 0
    while start < positions.numel():
        stop = start + sizes[index % len(sizes)]
        blocks.append((positions[start:stop], gradients[start:stop]))
        start, index = stop, index + 1
    return blocks


def test_top_gradient_positions_over_blocks_equals_brute_force_with_ties_to_the_smaller_position():
    generator = torch.Generator().manual_seed(0)
    for trial in range(30):
        numel = int(torch.randint(1, 80, (1,), generator=generator))
        positions = torch.randperm(numel, generator=generator)[: max(1, numel // 2)].sort().values
        # Few distinct magnitudes of both signs: many ties, inside one block and across blocks.
        gradients = torch.randint(-3, 4, (positions.numel(),), generator=generator).float() / 4
        sizes = [int(s) for s in torch.randint(1, 9, (3,), generator=generator)]
        if trial % 2:  # blocks in any order, as a caller might give them
            order = torch.randperm(positions.numel(), generator=generator)
            positions, gradients = positions[order], gradients[order]
        listed = list(zip(positions.tolist(), gradients.abs().tolist()))
        best = [p for p, _ in sorted(listed, key=lambda pair: (-pair[1], pair[0]))]
        for count in sorted({0, 1, positions.numel() // 2, positions.numel()}):
            chosen = top_gradient_positions(blocks_of(positions, gradients, sizes), count)
            assert chosen.dtype == torch.int64 and chosen.numel() == count
            assert sorted(chosen.tolist()) == sorted(best[:count]), (trial, count)
        with pytest.raises(UsageError, match="only"):
            top_gradient_positions(blocks_of(positions, gradients, sizes), positions.numel() + 1)
    assert top_gradient_positions([], 0).numel() == 0
    with pytest.raises(UsageError, match="only 0"):
        top_gradient_positions([], 1)


def test_inactive_gradient_blocks_list_every_inactive_position_once_with_its_gradient():
    model = small_mlp((12, 10, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(model, optimizer, "rigl", density=0.4, total_steps=10, update_interval=1)
    x, y = batches(1, (12,), 4)[0]
    layers = sparsifier.topology.layers
    loss = F.cross_entropy(model(x), y)
    dense_grads = torch.autograd.grad(loss, [layer.weight for layer in layers], retain_graph=True)
    loss.backward()  # step 1 is followed by an update: the layers record it
    for layer, grad in zip(layers, dense_grads):
        for block in (1, 7, layer.shape[1], 10**6):
            listed = list(layer.inactive_gradient_blocks(block))
            positions = torch.cat([p for p, _ in listed])
            assert torch.equal(positions, (~layer.mask).reshape(-1).nonzero().squeeze(1))
            assert torch.equal(torch.cat([g for _, g in listed]), grad.reshape(-1)[positions])
            assert all(p.numel() <= max(block, layer.shape[1]) for p, _ in listed)


def reference_update(mask, weight, gradient, fraction):
    """RigL's mask update as its authors' code makes it, ported to flat lists: (mask, weights) after it.

    google-research/rigl, ``sparse_optimizers.py``: ``SparseRigLOptimizer.generic_mask_update`` scores the
    drop by |mask·w| and the growth by the dense |gradient|, and ``_get_update_op`` (``reinit_when_same``
    False) prunes ``int(n_ones · drop_fraction)``, keeps the rest, ranks every position not kept for
    growth, and gives the grow init (zeros) only to grown positions that were inactive before. The
    reference breaks ties with N(0, 1e-5) noise on the drop scores; here equal |w| drop the smaller
    position first and equal |gradient| grow the smaller position first.
    """
    n = len(mask)
    n_ones = sum(mask)
    n_prune = int(n_ones * fraction)
    drop_score = [abs(w) if m else 0.0 for m, w in zip(mask, weight)]
    kept = set(sorted(range(n), key=lambda i: (-drop_score[i], -i))[: n_ones - n_prune])
    floor = min(abs(g) for g in gradient) - 1
    grow_score = [floor if i in kept else abs(gradient[i]) for i in range(n)]
    grown = set(sorted(range(n), key=lambda i: (-grow_score[i], i))[:n_prune])
    new_mask = [i in kept or i in grown for i in range(n)]
    new_weight = [0.0 if i in grown and not mask[i] else weight[i] for i in range(n)]
    return new_mask, [w if m else 0.0 for m, w in zip(new_mask, new_weight)]  # the weights the network sees


def tied_layer(backend, seed):
    """A random small layer of ``backend`` whose active weights and recorded gradient take few distinct
    values (many ties), all exact in float64; returns the layer, its flat mask, weights and dense gradient."""
    generator = torch.Generator().manual_seed(seed)
    n_out, n_in = (int(v) for v in torch.randint(3, 9, (2,), generator=generator))
    linear, mask = masked_linear(n_in, n_out, float(torch.empty(1).uniform_(0.2, 0.8, generator=generator)), seed)
    with torch.no_grad():  # ±1/8 .. ±4/8: active weights tie but are never zero
        magnitudes = torch.randint(1, 5, mask.shape, generator=generator) / 8
        linear.weight.copy_(torch.where(torch.rand(mask.shape, generator=generator) < 0.5, -1, 1) * magnitudes * mask)
    layer = layer_on(backend, linear, mask)
    x = torch.randint(-2, 3, (3, n_in), generator=generator).to(F64)
    outer = torch.randint(-2, 3, (3, n_out), generator=generator).to(F64)
    layer.record_gradients(True)
    (layer.module(x) * outer).sum().backward()
    gradient = (outer.T @ x).reshape(-1)  # ∂/∂W of Σ outer ⊙ (x Wᵀ + b)
    return layer, mask.reshape(-1).tolist(), linear.weight.detach().reshape(-1).tolist(), gradient.tolist()


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_the_default_swap_is_the_reference_update_on_fixed_inputs(backend):
    fractions = (0.0, 0.04, 0.1, 0.25, 1 / 3, 0.5, 0.9, 1.0)
    regrown, truncated = 0, 0
    for seed in range(25):
        for fraction in fractions:
            layer, mask, weight, gradient = tied_layer(backend, seed)
            expected_mask, expected_weight = reference_update(mask, weight, gradient, fraction)
            method = method_on("rigl", [layer], torch.Generator(), total_steps=100)
            changed = method.swap(layer, fraction)
            positions = layer.active_positions().tolist()
            assert positions == [i for i, m in enumerate(expected_mask) if m], (seed, fraction)
            assert dense_weight(layer).reshape(-1).tolist() == expected_weight, (seed, fraction)
            assert layer.active == sum(mask)  # the budget is exact
            assert changed == sum(a != b for a, b in zip(mask, expected_mask))
            count = int(sum(mask) * fraction)
            regrown += count - changed // 2
            truncated += count != round(sum(mask) * fraction)
    assert regrown > 0 and truncated > 0  # the inputs exercised both departures from the disjoint rule


@pytest.mark.parametrize("swap_rule", SWAP_RULES)
def test_candidates_covering_every_free_position_choose_as_the_exhaustive_search(swap_rule):
    chosen, changed = [], []
    for candidates in (0, 10**6):
        linear, mask = masked_linear(9, 7, 0.5, seed=2)  # Gaussian weights and gradients: no ties
        layer = layer_on("masked", linear, mask)
        layer.record_gradients(True)
        layer.module(torch.randn(4, 9, generator=torch.Generator().manual_seed(1), dtype=F64)).pow(2).sum().backward()
        method = method_on("rigl", [layer], torch.Generator(), 9, swap_rule=swap_rule, candidates=candidates)
        changed.append(method.swap(layer, 0.9))
        chosen.append(layer.active_positions())
    assert torch.equal(chosen[0], chosen[1]) and changed[0] == changed[1]


@pytest.mark.parametrize("swap_rule", SWAP_RULES)
def test_update_drops_the_weakest_and_grows_the_steepest(swap_rule):
    model = small_mlp((12, 10, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = evosparse.sparsify(
        model, optimizer, "rigl", density=0.4, distribution="uniform", total_steps=40,
        alpha=0.5, update_interval=1, update_until=1.0, swap_rule=swap_rule,
    )  # fmt: skip
    layers = sparsifier.topology.layers
    train_steps(model, sparsifier, batches(3, (12,), 4))  # momentum state, so that its reset shows
    x, y = batches(1, (12,), 4, seed=1)[0]
    loss = F.cross_entropy(model(x), y)
    dense_grads = torch.autograd.grad(loss, [layer.weight for layer in layers], retain_graph=True)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    before = [
        (layer.mask.clone(), layer.weight.detach().clone(), optimizer.state[layer.weight]["momentum_buffer"].clone())
        for layer in layers
    ]
    sparsifier.step()  # step 4: an update with fraction f(4)

    fraction = cosine_update_fraction(4, 0.5, 40)
    for layer, (mask, weight, momentum), grad in zip(layers, before, dense_grads):
        active, inactive = sorted(flat_set(mask)), sorted(flat_set(~mask))
        by_weight = sorted(active, key=lambda i: abs(weight.reshape(-1)[i].item()))
        if swap_rule == "reference":
            count = int(fraction * len(active))
            candidates = inactive + by_weight[:count]
        else:
            count = min(round(fraction * len(active)), len(inactive))
            candidates = inactive
        by_gradient = sorted(candidates, key=lambda i: -abs(grad.reshape(-1)[i].item()))
        gaps = abs(grad.reshape(-1)[by_gradient[count - 1]]) - abs(grad.reshape(-1)[by_gradient[count]])
        assert count > 0 and gaps > 0  # the brute-force answer is unique
        dropped, grown = set(by_weight[:count]), set(by_gradient[:count])
        assert flat_set(layer.mask) == (set(active) - dropped) | grown
        assert layer.active == layer.budget == len(active)
        new, gone, stayed = grown - set(active), dropped - grown, sorted(flat_set(layer.mask) - (grown - set(active)))
        assert (layer.weight.detach().reshape(-1)[sorted(new)] == 0).all()
        now = optimizer.state[layer.weight]["momentum_buffer"].reshape(-1)
        assert (now[sorted(new | gone)] == 0).all()
        # Everything else, a dropped connection regrown at once included, keeps its weight and momentum.
        assert torch.equal(layer.weight.detach().reshape(-1)[stayed], weight.reshape(-1)[stayed])
        assert torch.equal(now[stayed], momentum.reshape(-1)[stayed]) and now[stayed].abs().sum() > 0


def test_only_an_update_step_keeps_a_gradient_and_it_is_the_dense_one():
    model = small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sparsifier = evosparse.sparsify(
        model, optimizer, "rigl", density=0.3, total_steps=12, update_interval=3, update_until=1.0
    )
    layers = sparsifier.topology.layers
    for step, (x, y) in enumerate(batches(10), 1):
        loss = F.cross_entropy(model(x), y)
        dense_grads = torch.autograd.grad(loss, [layer.weight for layer in layers], retain_graph=True)
        optimizer.zero_grad()
        loss.backward()
        for layer, grad in zip(layers, dense_grads):
            every = torch.arange(layer.numel)
            if step % 3:
                with pytest.raises(UsageError, match=f"no gradient of {layer.name} was recorded"):
                    layer.gradient_at(every)
            else:
                assert torch.equal(layer.gradient_at(every), grad.reshape(-1))
                assert layer.gradient_at(every)[~layer.mask.reshape(-1)].any()  # not the masked gradient
        optimizer.step()
        sparsifier.step()
        for layer in layers:  # released by the update (and never kept on other steps)
            with pytest.raises(UsageError, match="no gradient"):
                layer.gradient_at(torch.arange(layer.numel))


def test_each_update_swaps_the_cosine_decayed_fraction_until_t_end():
    model = small_mlp((30, 20, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sparsifier = evosparse.sparsify(
        model, optimizer, "rigl", density=0.3, total_steps=40, update_interval=5, update_until=0.75,
        swap_rule="disjoint",
    )  # fmt: skip
    layers = sparsifier.topology.layers
    update_steps = []
    for step, batch in enumerate(batches(40, (30,)), 1):
        counts = [min(round(cosine_update_fraction(step, 0.3, 30) * layer.active), layer.numel - layer.active)
                  for layer in layers]  # fmt: skip
        train_steps(model, sparsifier, [batch])
        stats = sparsifier.take_stats()
        if stats.updates:
            update_steps.append(step)
            assert stats.connections_changed == 2 * sum(counts)
        else:
            assert stats.connections_changed == 0
    assert update_steps == [5, 10, 15, 20, 25]  # T_end = 0.75 · 40 = 30


@pytest.mark.parametrize("build, input_shape", [(small_mlp, (20,)), (small_conv, (1, 6, 6))])
def test_budgets_stay_exact_on_linear_and_convolution_layers(build, input_shape):
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = evosparse.sparsify(
        model, optimizer, "rigl", density=0.3, distribution="erk", total_steps=20, update_interval=2
    )
    layers = sparsifier.topology.layers
    initial = [layer.mask.clone() for layer in layers]
    train_steps(model, sparsifier, batches(20, input_shape))
    assert sparsifier.take_stats().updates == 7  # steps 2..14 (< 0.75 · 20)
    for layer, budget, mask in zip(layers, sparsifier.plan.budgets, initial):
        assert layer.active == budget
        assert not layer.weight.detach()[~layer.mask].any()
        if budget < layer.numel:
            assert not torch.equal(layer.mask, mask)


def test_a_resumed_run_makes_the_same_updates():
    def fresh(seed):
        torch.manual_seed(seed)
        model = small_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sparsifier = evosparse.sparsify(
            model, optimizer, "rigl", density=0.3, total_steps=30, update_interval=4, seed=seed
        )
        return model, sparsifier

    assert_resume_is_exact(fresh, batches(30), cut=14)  # between the updates at steps 12 and 16


@pytest.mark.parametrize("backend", ["masked", "csr"])
@pytest.mark.parametrize("device", DEVICES)
def test_rigl_updates_on_every_device_from_the_cpus_initial_topology(device, backend):
    kwargs = {"density": 0.3, "total_steps": 8, "update_interval": 2, "update_until": 1.0}
    data = batches(8)
    cpu_initial, _ = run_on_device("rigl", "cpu", backend, data, **kwargs)
    initial, sparsifier = run_on_device("rigl", device, backend, data, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(initial, cpu_initial))  # draws are made on the CPU
    stats = sparsifier.take_stats()
    assert stats.updates == 3 and stats.connections_changed > 0  # steps 2, 4, 6 (< T_end = 8)
    sparsifier.topology.check(fixed_budget=True)
    for layer in sparsifier.topology.layers:
        assert layer.active_positions().device.type == device == layer.active_values().device.type


def test_rigl_refuses_what_it_cannot_schedule(mlp):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.05)
    with pytest.raises(UsageError, match="total_steps"):
        evosparse.sparsify(mlp, optimizer, "rigl", density=0.3)
    with pytest.raises(UsageError, match="update_unit must be one of step"):
        evosparse.sparsify(mlp, optimizer, "rigl", density=0.3, total_steps=10, update_unit="epoch")
    sparsifier = evosparse.sparsify(mlp, optimizer, "rigl", density=0.3, total_steps=10)
    with pytest.raises(UsageError, match="no gradient"):
        sparsifier.method.update()


def test_rigl_learns_digits(tmp_path):
    assert_learns_digits_at_a_constant_density(tmp_path, "rigl")
