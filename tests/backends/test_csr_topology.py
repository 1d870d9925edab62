"""Topology operations on CsrLinear: queries, uniform sampling, rewiring and optimizer-state alignment."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from backend_pairs import F64, masked_linear, masked_topology, random_mask
from evosparse.backends import csr_topology
from evosparse.backends.csr_layer import CsrLinear
from evosparse.backends.csr_model import CsrLayer
from evosparse.errors import InvariantError, UsageError
from evosparse.topology.positions import complement, sample_absent


def csr_layer(in_features: int, out_features: int, density: float, seed: int) -> tuple[CsrLinear, torch.Tensor]:
    """A random CsrLinear and its dense mask."""
    linear, mask = masked_linear(in_features, out_features, density, seed)
    return CsrLinear.from_linear(linear, mask), mask


def sample_inactive(layer: CsrLinear, count: int, generator: torch.Generator, exclude=None) -> torch.Tensor:
    """The csr layer's uniform growth draw, through the SparseLayer protocol."""
    return CsrLayer("layer", layer, layer.nnz).sample_inactive(count, generator, exclude)


# -- queries --------------------------------------------------------------------------------------


def test_active_positions_and_values_match_the_dense_mask():
    linear, mask = masked_linear(9, 7, 0.4, seed=1)
    layer = CsrLinear.from_linear(linear, mask)
    positions = csr_topology.active_positions(layer)
    assert positions.dtype == torch.int64
    assert torch.equal(positions, mask.reshape(-1).nonzero().squeeze(1))
    assert torch.equal(csr_topology.active_values(layer), linear.weight.detach().reshape(-1)[positions])
    assert torch.equal(csr_topology.dense_mask_for_tests(layer), mask)


@settings(derandomize=True, max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 99),
)
def test_contains_matches_brute_force(shape, density, seed):
    layer, mask = csr_layer(shape[1], shape[0], density, seed)
    queries = torch.randint(0, mask.numel(), (20,), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(csr_topology.contains(layer, queries), mask.reshape(-1)[queries])


def test_complement_enumerates_the_gaps():
    assert complement(torch.tensor([0, 3, 4, 9]), 10).tolist() == [1, 2, 5, 6, 7, 8]
    assert complement(torch.tensor([], dtype=torch.int64), 3).tolist() == [0, 1, 2]
    assert complement(torch.tensor([0, 1, 2]), 3).tolist() == []


# -- sampling -------------------------------------------------------------------------------------


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    density=st.sampled_from([0.0, 0.05, 0.3, 0.7, 0.95]),
    exclude_count=st.integers(0, 10),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_sample_inactive_returns_distinct_free_positions(shape, density, exclude_count, fraction, seed):
    layer, mask = csr_layer(shape[1], shape[0], density, seed)
    generator = torch.Generator().manual_seed(seed)
    exclude = torch.randint(0, mask.numel(), (exclude_count,), generator=generator)
    blocked = mask.reshape(-1).clone()
    blocked[exclude] = True
    free = int((~blocked).sum())
    count = int(fraction * free)
    drawn = sample_inactive(layer, count, generator, exclude=exclude)
    assert drawn.numel() == count and drawn.dtype == torch.int64
    assert drawn.unique().numel() == count
    assert not blocked[drawn].any()
    with pytest.raises(UsageError, match="free"):
        sample_inactive(layer, free + 1, generator, exclude=exclude)
    with pytest.raises(UsageError, match="excluded positions"):
        sample_inactive(layer, 0, generator, exclude=torch.tensor([mask.numel()]))


@pytest.mark.parametrize(
    ("present", "exclude", "total", "count"),
    [
        ([2, 5, 11, 17], [0, 5, 15], 40, 6),  # 2·(6 blocked + 6) < 40: rejection sampling
        ([2, 5, 11, 17], [0, 5, 15], 20, 6),  # 2·(6 blocked + 6) ≥ 20: exact enumeration
    ],
)
def test_sample_absent_is_uniform_over_subsets_and_orders(present, exclude, total, count):
    """Every free position equally likely in every slot of the draw (chi-square, fixed seed)."""
    generator = torch.Generator().manual_seed(0)
    present_t, exclude_t = torch.tensor(present), torch.tensor(exclude)
    free = sorted(set(range(total)) - set(present) - set(exclude))
    trials = 3000
    slot_counts = torch.zeros(count, total)
    for _ in range(trials):
        drawn = sample_absent(present_t, total, count, generator, exclude=exclude_t)
        slot_counts[torch.arange(count), drawn] += 1
    assert slot_counts[:, [p for p in range(total) if p not in free]].sum() == 0
    for slot in range(count):
        assert chisquare(slot_counts[slot, free].numpy()).pvalue > 1e-3


def test_sample_absent_gives_uniform_ordered_pairs_by_rejection():
    generator = torch.Generator().manual_seed(1)
    present, total = torch.tensor([4]), 12  # 2·(1 + 2) < 12: rejection sampling
    free = [p for p in range(total) if p != 4]
    pairs = {pair: 0 for pair in itertools.permutations(free, 2)}
    for _ in range(11_000):
        first, second = sample_absent(present, total, 2, generator).tolist()
        pairs[(first, second)] += 1
    assert chisquare(list(pairs.values())).pvalue > 1e-3


def test_sample_absent_handles_large_layers_without_enumerating_them():
    generator = torch.Generator().manual_seed(2)
    total = 10**12  # a 10⁶ x 10⁶ layer: any dense pass would not fit in memory
    present = torch.sort(torch.randint(0, total, (1000,), generator=generator)).values.unique()
    drawn = sample_absent(present, total, 5000, generator)
    assert drawn.unique().numel() == 5000 and not torch.isin(drawn, present).any()


# -- rewiring ---------------------------------------------------------------------------------------


def test_rewire_gives_the_mask_update_and_keeps_values():
    linear, mask = masked_linear(8, 6, 0.5, seed=3)
    layer = CsrLinear.from_linear(linear, mask)
    generator = torch.Generator().manual_seed(3)
    active = mask.reshape(-1).nonzero().squeeze(1)
    prune = active[torch.randperm(active.numel(), generator=generator)[:4]]
    grow = sample_inactive(layer, 6, generator)
    grow_values = torch.arange(1.0, 7.0, dtype=F64)

    assert csr_topology.rewire(layer, prune, grow, grow_values) == 10
    csr_topology.check(layer)
    expected = linear.weight.detach().clone().reshape(-1)
    expected[prune] = 0.0
    expected[grow] = grow_values
    expected_mask = mask.reshape(-1).clone()
    expected_mask[prune], expected_mask[grow] = False, True
    assert torch.equal(layer.to_dense_weight().reshape(-1), expected)
    assert torch.equal(csr_topology.dense_mask_for_tests(layer).reshape(-1), expected_mask)
    assert layer.nnz == int(mask.sum()) + 2


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("prune_inactive", "pruning an inactive"),
        ("grow_active", "growing an active"),
        ("duplicate", "duplicate"),
        ("duplicate_prune", "duplicate"),
        ("outside", "outside"),
        ("value_count", "grow values"),
    ],
)
def test_rewire_refuses_what_the_masked_backend_refuses(case, message):
    layer, mask = csr_layer(5, 4, 0.5, seed=4)
    flat = mask.reshape(-1)
    active, inactive = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
    prune, grow, values = active[:1], inactive[:1], 0.0
    if case == "prune_inactive":
        prune = inactive[:1]
    elif case == "grow_active":
        grow = active[1:2]
    elif case == "duplicate":
        grow = inactive[[0, 0]]
    elif case == "duplicate_prune":
        prune = active[[1, 1]]
    elif case == "outside":
        grow = torch.tensor([flat.numel()])
    else:
        values = torch.zeros(2)
    before = csr_topology.active_positions(layer).clone()
    with pytest.raises(InvariantError, match=message):
        csr_topology.rewire(layer, prune, grow, values)
    assert torch.equal(csr_topology.active_positions(layer), before)


def test_rewire_with_nothing_to_do_and_to_an_empty_layer():
    layer, mask = csr_layer(5, 4, 0.5, seed=5)
    empty = torch.zeros(0, dtype=torch.int64)
    assert csr_topology.rewire(layer, empty, empty) == 0
    assert torch.equal(csr_topology.dense_mask_for_tests(layer), mask)
    csr_topology.rewire(layer, csr_topology.active_positions(layer), empty)
    assert layer.nnz == 0
    csr_topology.check(layer)
    with pytest.raises(InvariantError, match="pruning an inactive"):
        csr_topology.rewire(layer, torch.tensor([3]), empty)
    assert torch.equal(layer(torch.ones(2, 5, dtype=F64)), layer.bias.detach().expand(2, 4))


OPTIMIZERS = {
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd_nesterov": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
    "adam_amsgrad": lambda params: torch.optim.Adam(params, lr=0.01, amsgrad=True),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
}


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("net_change", [0, -3])
def test_training_after_rewire_matches_the_masked_backend(optimizer_name, net_change):
    """The key property: train, rewire both backends alike, train on; weights and state stay equal."""
    linear, mask = masked_linear(12, 9, 0.35, seed=6)
    layer = CsrLinear.from_linear(linear, mask)
    masked_optimizer = OPTIMIZERS[optimizer_name](linear.parameters())
    csr_optimizer = OPTIMIZERS[optimizer_name](layer.parameters())
    topology = masked_topology([linear], [mask], masked_optimizer)
    values_parameter, values_storage = layer.values, layer.values.data_ptr()
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(16, 12, generator=generator, dtype=F64)
    target = torch.randn(16, 9, generator=generator, dtype=F64)

    def train(steps: int) -> None:
        for _ in range(steps):
            for model, optimizer in ((linear, masked_optimizer), (layer, csr_optimizer)):
                optimizer.zero_grad()
                F.mse_loss(torch.tanh(model(x)), target).backward()
                optimizer.step()
            topology.apply_masks()

    for _ in range(3):
        train(3)
        current = topology.layers[0].mask.reshape(-1)
        active, inactive = current.nonzero().squeeze(1), (~current).nonzero().squeeze(1)
        prune = active[torch.randperm(active.numel(), generator=generator)[:5]]
        grow = inactive[torch.randperm(inactive.numel(), generator=generator)[: 5 + net_change]]
        values = torch.randn(grow.numel(), generator=generator, dtype=F64)
        topology.layers[0].rewire(prune, grow, values)
        csr_topology.rewire(layer, prune, grow, values, csr_optimizer)
        csr_topology.check(layer)
        assert torch.equal(csr_topology.dense_mask_for_tests(layer), topology.layers[0].mask)
    train(3)

    assert layer.values is values_parameter and csr_optimizer.param_groups[0]["params"][0] is values_parameter
    if net_change == 0:
        assert layer.values.data_ptr() == values_storage  # updated in place when nnz is unchanged
    torch.testing.assert_close(layer.to_dense_weight(), linear.weight.detach())
    torch.testing.assert_close(layer.bias, linear.bias)
    rows, cols = layer.structure.row_indices, layer.structure.col_indices
    masked_state, csr_state = masked_optimizer.state[linear.weight], csr_optimizer.state[layer.values]
    assert {k for k, v in masked_state.items() if v.dim()} == {k for k, v in csr_state.items() if v.dim()}
    for name, tensor in csr_state.items():
        if tensor.dim():
            torch.testing.assert_close(tensor, masked_state[name][rows, cols], msg=name)
            assert not masked_state[name][~topology.layers[0].mask].any(), name  # masked state is zero off the mask


def test_rewire_carries_a_pending_gradient():
    layer, mask = csr_layer(6, 5, 0.5, seed=7)
    layer(torch.randn(3, 6, dtype=F64)).sum().backward()
    grad_before = layer.values.grad.clone()
    positions = csr_topology.active_positions(layer)
    inactive = (~mask.reshape(-1)).nonzero().squeeze(1)
    csr_topology.rewire(layer, positions[:2], inactive[:1])
    expected = torch.zeros(mask.numel(), dtype=F64)
    expected[positions[2:]] = grad_before[2:]
    assert torch.equal(layer.values.grad, expected[csr_topology.active_positions(layer)])


@pytest.mark.parametrize("net_change", [-2, 3])
def test_a_rewire_that_changes_the_count_allows_backward_while_the_last_graph_is_alive(net_change):
    """A training loop keeps its last ``loss`` (and with it autograd's record of the old values' size)
    alive into the next step; the next backward pass must accept the new number of connections."""
    layer, mask = csr_layer(8, 6, 0.4, seed=10)
    hooked = []
    layer.values.register_post_accumulate_grad_hook(lambda values: hooked.append(values.grad.numel()))
    x = torch.randn(4, 8, dtype=F64, generator=torch.Generator().manual_seed(10))
    loss = layer(x).pow(2).sum()
    loss.backward()
    positions, inactive = csr_topology.active_positions(layer), (~mask.reshape(-1)).nonzero().squeeze(1)
    csr_topology.rewire(layer, positions[:3], inactive[: 3 + net_change])
    layer.values.grad = None
    loss = layer(x).pow(2).sum()
    loss.backward()
    dense = layer.to_dense_weight().requires_grad_()
    (dense_grad,) = torch.autograd.grad(F.linear(x, dense, layer.bias).pow(2).sum(), [dense])
    assert torch.allclose(layer.values.grad, dense_grad.reshape(-1)[csr_topology.active_positions(layer)])
    assert hooked == [int(mask.sum()), int(mask.sum()) + net_change]  # hooks on the values stay in place


def test_check_catches_a_misaligned_layer():
    layer, _ = csr_layer(6, 5, 0.5, seed=8)
    layer.values.data = layer.values.data[:-1]
    with pytest.raises(InvariantError, match="aligned"):
        csr_topology.check(layer)


def test_dense_mask_helper_round_trips_through_from_dense():
    generator = torch.Generator().manual_seed(9)
    mask = random_mask(5, 7, 0.4, generator)
    layer = CsrLinear.from_dense(torch.randn(5, 7, dtype=F64), mask)
    assert torch.equal(csr_topology.dense_mask_for_tests(layer), mask)
