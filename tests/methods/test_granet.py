import pytest
import torch

import evosparse
from conftest import small_mlp
from evosparse.errors import UsageError
from support import assert_resume_is_exact, batches, pruned_on_digits, train_steps

TOTAL_STEPS, INTERVAL, END_STEP = 60, 5, 40  # the last multiple of 5 below 0.75 · 60 = 45


def sparsified(method, backend="masked", dtype=torch.float32, **params):
    torch.manual_seed(0)
    model = small_mlp().to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = evosparse.sparsify(
        model,
        optimizer,
        method,
        density=0.1,
        total_steps=TOTAL_STEPS,
        backend=backend,
        seed=1,
        update_interval=INTERVAL,
        **params,
    )
    return model, sparsifier


def active_positions(sparsifier):
    return [layer.active_positions().tolist() for layer in sparsifier.topology.layers]


def test_without_regrowth_granet_prunes_exactly_as_gmp_from_the_same_sparse_start():
    runs = [sparsified("gmp", initial_density=0.5), sparsified("granet", initial_density=0.5, alpha=0.0)]
    for batch in batches(TOTAL_STEPS):
        for model, sparsifier in runs:
            train_steps(model, sparsifier, [batch])
        assert active_positions(runs[0][1]) == active_positions(runs[1][1])


def test_each_update_prunes_to_the_cubic_schedule_then_swaps_and_ends_at_the_budget():
    model, sparsifier = sparsified("granet")
    layers, plan = sparsifier.topology.layers, sparsifier.plan
    assert [layer.active for layer in layers] == list(plan.initial) and plan.initial != plan.budgets
    regrown = 0
    for step, batch in enumerate(batches(TOTAL_STEPS), 1):
        before = [set(layer.active_positions().tolist()) for layer in layers]
        train_steps(model, sparsifier, [batch])
        after = [set(layer.active_positions().tolist()) for layer in layers]
        if step % INTERVAL == 0 and step <= END_STEP:
            for layer, initial, budget in zip(layers, plan.initial, plan.budgets):
                s_i, s_f = 1 - initial / layer.numel, 1 - budget / layer.numel
                sparsity = s_f + (s_i - s_f) * (1 - step / END_STEP) ** 3  # Zhu & Gupta eq. 1
                assert layer.active == layer.numel - round(sparsity * layer.numel)
            regrown += sum(len(a - b) for a, b in zip(after, before))
        else:
            assert after == before
    assert regrown > 0  # neuroregeneration grew connections that were inactive
    assert [layer.active for layer in layers] == list(plan.budgets)


def test_grown_connections_start_at_zero_where_the_gradient_was_largest():
    model, sparsifier = sparsified("granet", initial_density=0.3)
    data = batches(INTERVAL)
    train_steps(model, sparsifier, data[:-1])
    layer = sparsifier.topology.layers[0]
    before = set(layer.active_positions().tolist())
    x, y = data[-1]
    optimizer = sparsifier.optimizer
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    dense_gradient = layer.gradient_at(torch.arange(layer.numel)).abs()
    optimizer.step()
    sparsifier.step()
    grown = sorted(set(layer.active_positions().tolist()) - before)
    assert grown
    weights = dict(zip(layer.active_positions().tolist(), layer.active_values().tolist()))
    assert all(weights[p] == 0.0 for p in grown)
    inactive_before = torch.tensor(sorted(set(range(layer.numel)) - before))
    threshold = dense_gradient[torch.tensor(grown)].min()
    not_grown = inactive_before[~torch.isin(inactive_before, torch.tensor(grown))]
    assert bool((dense_gradient[not_grown] <= threshold).all())


def test_masked_and_csr_make_the_same_topology():
    runs = [sparsified("granet", backend, torch.float64) for backend in ("masked", "csr")]
    for batch in batches(TOTAL_STEPS):
        for model, sparsifier in runs:
            x, y = batch
            train_steps(model, sparsifier, [(x.double(), y)])
        assert active_positions(runs[0][1]) == active_positions(runs[1][1])


def test_a_start_at_or_below_the_target_is_refused():
    with pytest.raises(UsageError, match=r"granet: initial_density=0.1 must be above the target density 0.1\b"):
        sparsified("granet", initial_density=0.1)


def test_granet_learns_digits_sparse_from_start_to_end(tmp_path):
    result, densities = pruned_on_digits(tmp_path, "granet", 0.1, ["update_interval=5"])
    assert max(densities) < 0.5 and result["training_macs"]["relative"] < 0.5


def test_a_resumed_run_prunes_and_regrows_the_same_connections():
    def fresh(seed):
        torch.manual_seed(seed)
        model = small_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, evosparse.sparsify(
            model, optimizer, "granet", density=0.1, total_steps=TOTAL_STEPS, update_interval=INTERVAL, seed=seed
        )

    assert_resume_is_exact(fresh, batches(TOTAL_STEPS), cut=12)  # between the updates at 10 and 15


def test_a_dense_start_is_refused_on_csr_in_one_line():
    with pytest.raises(UsageError, match="granet starts dense; --backend csr holds sparse layers only") as info:
        sparsified("granet", backend="csr", initial_density=1.0)
    assert "\n" not in str(info.value)
