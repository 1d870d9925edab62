import pytest
import torch
from torch.nn import functional as F

import evosparse
from conftest import small_mlp
from evosparse.errors import UsageError
from support import assert_resume_is_exact, batches, pruned_on_digits, small_conv, train_steps


def gmp(model, total_steps, **params):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return evosparse.sparsify(model, optimizer, "gmp", density=0.1, total_steps=total_steps, **params)


@pytest.mark.parametrize(
    "total_steps, interval, until, end_step",
    [
        (100, 10, 0.75, 70),  # the last multiple of 10 below 75
        (100, 10, 0.8, 70),  # 80 itself is not below 0.8 · 100: no update there
        (100, 5, 0.55, 55),  # 0.55 · 100 = 55.00000000000001, so step 55 still updates
    ],
)
def test_density_follows_the_cubic_schedule_and_hits_the_target_at_the_last_update(
    total_steps, interval, until, end_step
):
    model = small_mlp()
    sparsifier = gmp(model, total_steps, update_interval=interval, update_until=until, prune_begin=0.1)
    layers, budgets = sparsifier.topology.layers, sparsifier.plan.budgets
    begin = 0.1 * total_steps
    history, update_steps = [], []
    for step, batch in enumerate(batches(total_steps), 1):
        previous = [layer.mask.clone() for layer in layers]
        train_steps(model, sparsifier, [batch])
        if sparsifier.take_stats().updates:
            update_steps.append(step)
            for layer, budget in zip(layers, budgets):
                progress = min(max((step - begin) / (end_step - begin), 0.0), 1.0)
                sparsity = (1 - budget / layer.numel) * (1 - (1 - progress) ** 3)  # Zhu & Gupta eq. 1, s_i = 0
                assert layer.active == layer.numel - round(sparsity * layer.numel)
        assert all(not (layer.mask & ~old).any() for layer, old in zip(layers, previous))  # nothing regrown
        history.append(sparsifier.density())
    assert update_steps[-1] == end_step
    assert [layer.active for layer in layers] == list(budgets)
    assert sparsifier.topology.active == round(0.1 * sparsifier.topology.total)
    assert history[: interval - 1] == [1.0] * (interval - 1)
    assert all(a >= b for a, b in zip(history, history[1:]))
    assert history[end_step - 1 :] == [history[-1]] * (total_steps - end_step + 1)


def test_each_pruning_step_removes_the_smallest_magnitudes():
    model = small_mlp()
    sparsifier = gmp(model, 40, update_interval=4)
    layers = sparsifier.topology.layers
    train_steps(model, sparsifier, batches(3))
    x, y = batches(1, seed=1)[0]
    optimizer = sparsifier.optimizer
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    before = [(layer.mask.clone(), layer.weight.detach().abs().clone()) for layer in layers]
    sparsifier.step()  # step 4: the first pruning step
    for layer, (mask, magnitude) in zip(layers, before):
        pruned = mask & ~layer.mask
        assert pruned.any()
        assert magnitude[pruned].max() < magnitude[layer.mask].min()
        assert layer.budget == layer.active


@pytest.mark.parametrize("build, input_shape", [(small_mlp, (20,)), (small_conv, (1, 6, 6))])
def test_every_layer_reaches_its_own_budget_on_linear_and_convolution_layers(build, input_shape):
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sparsifier = evosparse.sparsify(
        model, optimizer, "gmp", density=0.2, distribution="erk", total_steps=24, update_interval=3
    )
    layers = sparsifier.topology.layers
    assert all(layer.active == layer.numel for layer in layers)  # dense start
    train_steps(model, sparsifier, batches(24, input_shape))
    assert [layer.active for layer in layers] == list(sparsifier.plan.budgets)
    assert sparsifier.topology.active == round(0.2 * sparsifier.topology.total)
    assert all(not layer.weight.detach()[~layer.mask].any() for layer in layers)


@pytest.mark.parametrize("initial_density", [1.0, 0.4])
def test_a_resumed_run_prunes_the_same_connections(initial_density):
    def fresh(seed):
        torch.manual_seed(seed)
        model = small_mlp()
        return model, gmp(model, 40, update_interval=4, seed=seed, initial_density=initial_density)

    assert_resume_is_exact(fresh, batches(40), cut=14)  # between the pruning steps at 12 and 16


def test_gmp_refuses_a_schedule_without_a_pruning_step(mlp):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.05)
    with pytest.raises(UsageError, match="total_steps"):
        evosparse.sparsify(mlp, optimizer, "gmp", density=0.1)
    with pytest.raises(UsageError, match="no pruning step"):
        evosparse.sparsify(mlp, optimizer, "gmp", density=0.1, total_steps=100, prune_begin=0.7)
    with pytest.raises(UsageError, match="no pruning step"):
        evosparse.sparsify(mlp, optimizer, "gmp", density=0.1, total_steps=100, update_interval=80)


def test_gmp_learns_digits_and_ends_at_the_target_density(tmp_path):
    _, densities = pruned_on_digits(tmp_path, "gmp", 0.2, ["update_interval=5"])
    assert densities[0] < 1.0


def test_a_sparse_start_prunes_from_its_initial_density_on_the_cubic_schedule():
    from evosparse.topology.distributions import layer_budgets

    total_steps, interval, end_step = 100, 10, 70
    model = small_mlp()
    sparsifier = gmp(model, total_steps, initial_density=0.4, update_interval=interval)
    layers, plan = sparsifier.topology.layers, sparsifier.plan
    started = layer_budgets([layer.shape for layer in layers], distribution="erdos_renyi", density=0.4)
    assert list(plan.initial) == [max(a, b) for a, b in zip(started, plan.budgets)]
    assert [layer.active for layer in layers] == list(plan.initial)
    assert all(budget < initial < layer.numel for layer, initial, budget in zip(layers, plan.initial, plan.budgets))
    for step, batch in enumerate(batches(total_steps), 1):
        previous = [layer.mask.clone() for layer in layers]
        train_steps(model, sparsifier, [batch])
        assert all(not (layer.mask & ~old).any() for layer, old in zip(layers, previous))  # nothing regrown
        if step % interval == 0:
            for layer, initial, budget in zip(layers, plan.initial, plan.budgets):
                s_i, s_f = 1 - initial / layer.numel, 1 - budget / layer.numel
                progress = min(step / end_step, 1.0)
                sparsity = s_f + (s_i - s_f) * (1 - progress) ** 3  # Zhu & Gupta eq. 1
                assert layer.active == layer.numel - round(sparsity * layer.numel)
    assert [layer.active for layer in layers] == list(plan.budgets)


def test_a_sparse_start_at_or_below_the_target_is_refused(mlp):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.05)
    with pytest.raises(UsageError, match=r"initial_density=0.1 must be above the target density 0.1\b"):
        evosparse.sparsify(mlp, optimizer, "gmp", density=0.1, total_steps=100, initial_density=0.1)


def test_gmp_from_a_sparse_start_learns_digits_below_dense_cost(tmp_path):
    result, densities = pruned_on_digits(tmp_path, "gmp", 0.1, ["update_interval=5", "initial_density=0.3"])
    assert densities[0] < 0.3 and result["training_macs"]["relative"] < 0.3


def test_csr_takes_a_sparse_start_with_the_masked_topology_and_refuses_a_dense_one():
    runs = []
    for backend in ("masked", "csr"):
        torch.manual_seed(0)
        model = small_mlp().double()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        runs.append(
            (
                model,
                evosparse.sparsify(
                    model,
                    optimizer,
                    "gmp",
                    density=0.1,
                    total_steps=40,
                    update_interval=4,
                    initial_density=0.5,
                    backend=backend,
                    seed=2,
                ),
            )
        )
    for x, y in batches(40):
        for model, sparsifier in runs:
            train_steps(model, sparsifier, [(x.double(), y)])
        masked, csr = ([layer.active_positions() for layer in s.topology.layers] for _, s in runs)
        assert all(torch.equal(a, b) for a, b in zip(masked, csr, strict=True))
    with pytest.raises(UsageError, match="gmp starts dense; --backend csr .* initial_density below 1"):
        evosparse.sparsify(small_mlp(), None, "gmp", density=0.1, total_steps=40, backend="csr")
