"""Method path_weight against brute force on small nets: |F_k|, weak paths, removal, growth, δ, state."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch import nn
from torch.nn import functional as F

import evosparse
from conftest import small_mlp
from evosparse.criteria.path_weight import MAX_EXACT_PATHS
from evosparse.criteria.time_varying import TimeVaryingRule
from evosparse.errors import UsageError
from evosparse.methods.path_weight import smallest_within_capacity
from support import DEVICES, batches, digits_accuracies, run_on_device, saved_and_loaded


def linear_inputs(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every nn.Linear of a Sequential MLP for batch x, computed layer by layer."""
    inputs = []
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                inputs.append(x)
            x = module(x)
    return inputs


def train_steps(model, sparsifier, steps: int, generator: torch.Generator):
    """SGD steps on random data; returns the brute-force |F_k| (mean input norm over the samples)."""
    optimizer = sparsifier.optimizer
    sums, count = None, 0
    for _ in range(steps):
        x = torch.randn(16, model[0].in_features, generator=generator)
        y = torch.randint(0, model[-1].out_features, (16,), generator=generator)
        norms = [inp.double().norm(dim=1).sum() for inp in linear_inputs(model, x)]
        sums = norms if sums is None else [a + b for a, b in zip(sums, norms)]
        count += 16
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        sparsifier.step()
    return [float(s) / count for s in sums]


def build(sizes=(6, 5, 4, 3), density=0.6, seed=0, **params):
    torch.manual_seed(seed)
    model = small_mlp(sizes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = evosparse.sparsify(model, optimizer, "path_weight", density=density, seed=seed, **params)
    return model, sparsifier


def all_paths(mats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every input-to-output path (node indices) of the layered net and its importance (eq. 2)."""
    widths = [mats[0].shape[0]] + [m.shape[1] for m in mats]
    nodes = np.array(list(itertools.product(*map(range, widths))))
    along = np.stack([m[nodes[:, k], nodes[:, k + 1]] for k, m in enumerate(mats)], axis=1)
    real = (along > 0).all(axis=1)
    return nodes[real], along[real].prod(axis=1)


def normalised(sparsifier, norms) -> list[np.ndarray]:
    """A_k = |W_k|ᵀ / |F_k| by the definition (eq. 3), as numpy (in, out) matrices."""
    return [
        layer.weight.detach().double().abs().t().numpy() / norm
        for layer, norm in zip(sparsifier.topology.layers, norms)
    ]


def masks_of(sparsifier) -> list[torch.Tensor]:
    return [layer.mask.clone() for layer in sparsifier.topology.layers]


@pytest.mark.parametrize("seed, lam, zeta", [(0, 0.5, 0.5), (1, 0.8, 0.3), (2, 0.3, 1.0), (3, 1.0, 0.2), (4, 0.2, 1.0)])
def test_removal_is_exactly_the_zeta_weakest_of_the_connections_on_weak_paths_only(seed, lam, zeta):
    model, sparsifier = build(seed=seed, lam=lam, zeta=zeta, samples=MAX_EXACT_PATHS, criteria="connection")
    norms = train_steps(model, sparsifier, 5, torch.Generator().manual_seed(seed))
    mats = normalised(sparsifier, norms)
    paths, importance = all_paths(mats)
    q = np.sort(importance)[max(1, math.ceil(lam * importance.size)) - 1]
    before = masks_of(sparsifier)
    candidates = []  # (normalised weight, layer, out, in) of active connections whose paths are all < q
    for k, (mask, a) in enumerate(zip(before, mats)):
        for o, i in mask.nonzero().tolist():
            through = importance[(paths[:, k] == i) & (paths[:, k + 1] == o)]
            if through.size == 0 or through.max() < q:
                candidates.append((a[i, o], k, o, i))
    expected = sorted(candidates)[: round(zeta * len(candidates))]
    assert expected, "the case must remove something"
    sparsifier.method.update()
    removed = {
        (k, o, i)
        for k, (old, layer) in enumerate(zip(before, sparsifier.topology.layers))
        for o, i in (old & ~layer.mask).nonzero().tolist()
    }
    assert removed == {(k, o, i) for _, k, o, i in expected}
    for k, o, i in removed:  # the property itself: no path stronger than q lost a connection
        assert not (importance[(paths[:, k] == i) & (paths[:, k + 1] == o)] > q).any()
    # Eq. 7-8, connection reading: the mean normalised weight of all active connections / of the removed ones.
    every = np.concatenate([a.T[mask.numpy()] for mask, a in zip(before, mats)])
    logged = sparsifier.method.trajectory[-1]
    assert (logged["c_prim"], logged["c_sec"]) == pytest.approx((every.mean(), np.mean([w for w, *_ in expected])))


def test_smallest_within_capacity_fills_from_the_next_layer_when_one_is_full():
    scores = [torch.tensor([0.1, 0.3, 0.2]), torch.tensor([0.25, 0.05])]
    chosen = smallest_within_capacity(scores, 3, capacity=[1, 5])
    assert [c.tolist() for c in chosen] == [[0], [1, 0]]
    chosen = smallest_within_capacity(scores, 4, capacity=[5, 0])
    assert [c.tolist() for c in chosen] == [[0, 2, 1], []]


def test_feature_norms_are_the_mean_input_norm_over_the_epochs_training_batches():
    model, sparsifier = build(sizes=(10, 8, 6, 4), density=0.5)
    generator = torch.Generator().manual_seed(5)
    expected = train_steps(model, sparsifier, 7, generator)
    model.eval()
    model(torch.randn(50, 10) * 100)  # evaluation passes are not training features
    model.train()
    with torch.no_grad():
        model(torch.randn(50, 10) * 100)
    assert sparsifier.method.feature_norms.means() == pytest.approx(expected, rel=1e-9)
    sparsifier.end_epoch()  # the update consumes them: the next epoch starts afresh
    expected = train_steps(model, sparsifier, 3, generator)
    assert sparsifier.method.feature_norms.means() == pytest.approx(expected, rel=1e-9)


def test_node_importance_for_growth_is_eq_4_and_grown_sources_follow_it():
    # The 40 -> 1 layer is dense (no free position), so every removal and growth happens in layer 0.
    model, sparsifier = build(sizes=(5, 40, 1), density=0.4, lam=1.0, zeta=0.03, samples=MAX_EXACT_PATHS)
    norms = train_steps(model, sparsifier, 4, torch.Generator().manual_seed(6))
    method = sparsifier.method
    paths, importance = all_paths(normalised(sparsifier, norms))
    eq4 = np.bincount(paths[:, 0], weights=importance, minlength=5)
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    saved_masks, saved_norms = sparsifier.topology.state_dict(), method.feature_norms.state_dict()
    assert method.select().node_importance[0].numpy() == pytest.approx(eq4, rel=1e-9)
    grown_sources = []
    for _ in range(500):  # the same state each time; only the growth generator moves on
        model.load_state_dict(saved_weights)
        sparsifier.topology.load_state_dict(saved_masks)
        method.feature_norms.load_state_dict(saved_norms)
        before = sparsifier.topology.layers[0].mask.clone()
        method.update()
        grown_sources += (sparsifier.topology.layers[0].mask & ~before).nonzero()[:, 1].tolist()
    counts = np.bincount(grown_sources, minlength=5)
    assert counts.sum() == 1500
    assert chisquare(counts, counts.sum() * eq4 / eq4.sum()).pvalue > 0.001
    assert chisquare(counts).pvalue < 1e-6, "growth must not look uniform over sources"


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_delta_scales_growth_per_layer_and_only_delta_one_keeps_budgets(delta):
    model, sparsifier = build(sizes=(12, 10, 8, 4), density=0.3, lam=1.0, zeta=0.4, delta=delta)
    train_steps(model, sparsifier, 3, torch.Generator().manual_seed(7))
    before = masks_of(sparsifier)
    sparsifier.end_epoch()  # runs the update and the Sparsifier's invariant check
    for old, layer in zip(before, sparsifier.topology.layers):
        removed, grown = int((old & ~layer.mask).sum()), int((layer.mask & ~old).sum())
        free = int((~old).sum())
        assert grown == min(round(delta * removed), free)
        assert removed > 0
    assert sparsifier.method.fixed_budget is (delta == 1.0)
    if delta == 1.0:
        assert all(layer.active == layer.budget for layer in sparsifier.topology.layers)
    else:
        assert sparsifier.topology.active != sum(layer.budget for layer in sparsifier.topology.layers)
    assert type(sparsifier.method).fixed_budget is True  # the class flag is untouched


def test_time_varying_parameters_follow_eq_9_and_are_logged_per_update():
    model, sparsifier = build(
        sizes=(12, 10, 8, 4), density=0.3, lam=0.9, zeta=0.5, time_varying=True, criteria="node"
    )  # the reading that moves the parameters on this small net
    generator = torch.Generator().manual_seed(8)
    for _ in range(4):
        train_steps(model, sparsifier, 3, generator)
        sparsifier.end_epoch()
    trajectory = sparsifier.method.trajectory
    assert [entry["epoch"] for entry in trajectory] == [1, 2, 3, 4]
    assert (trajectory[0]["lam"], trajectory[0]["zeta"], trajectory[0]["delta"]) == (0.9, 0.5, 1.0)
    rule, start = TimeVaryingRule(), {"lam": 0.9, "zeta": 0.5, "delta": 1.0}
    for now, after in itertools.pairwise(trajectory):
        expected = rule.next_values({n: now[n] for n in start}, start, now["c_prim"], now["c_sec"])
        assert {n: after[n] for n in start} == pytest.approx(expected)
    assert any(entry["lam"] != 0.9 for entry in trajectory), "the rule must have moved the parameters"
    assert not sparsifier.method.fixed_budget


def test_a_network_without_paths_treats_every_connection_as_weak():
    model, sparsifier = build(sizes=(6, 5, 4, 3), density=0.5, zeta=0.5)
    with torch.no_grad():
        sparsifier.topology.layers[1].weight.zero_()  # active but zero: no input reaches the output
    active = sparsifier.topology.active
    before = masks_of(sparsifier)
    sparsifier.method.update()
    removed = sum(int((old & ~layer.mask).sum()) for old, layer in zip(before, sparsifier.topology.layers))
    assert removed == round(0.5 * active)
    assert not (before[1] & sparsifier.topology.layers[1].mask).any(), "the zero weights go first"


def assert_same_evolution(original, restored):
    """Restored time-varying values and trajectory, and the same masks after the next update of both."""
    assert restored.method.values == original.method.values
    assert restored.method.trajectory == original.method.trajectory
    original.method.update()
    restored.method.update()
    for a, b in zip(original.topology.layers, restored.topology.layers):
        assert torch.equal(a.mask, b.mask)


def test_state_dict_round_trip_restores_values_trajectory_and_epoch_statistics():
    model, sparsifier = build(sizes=(10, 8, 6, 4), density=0.4, time_varying=True, lam=0.8)
    generator = torch.Generator().manual_seed(9)
    train_steps(model, sparsifier, 3, generator)
    sparsifier.end_epoch()
    train_steps(model, sparsifier, 2, generator)  # mid-epoch: feature sums are part of the state
    state = saved_and_loaded(sparsifier.state_dict())
    clone, restored = build(sizes=(10, 8, 6, 4), density=0.4, seed=3, time_varying=True, lam=0.8)
    clone.load_state_dict(model.state_dict())
    restored.load_state_dict(state)
    assert restored.method.feature_norms.means() == sparsifier.method.feature_norms.means()
    assert_same_evolution(sparsifier, restored)
    with pytest.raises(UsageError, match="does not belong"):
        restored.method.load_state_dict({"values": {"zeta": 0.1, "delta": 1.0}, "trajectory": []})


def test_models_without_a_chain_of_linear_layers_are_refused_in_one_line():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    with pytest.raises(UsageError, match="Conv2d; sparsify only the fully connected part"):
        evosparse.sparsify(conv, None, "path_weight", density=0.5)
    two_heads = nn.ModuleDict({"a": nn.Linear(8, 6), "b": nn.Linear(8, 6)})
    with pytest.raises(UsageError, match="takes 8 inputs"):
        evosparse.sparsify(two_heads, None, "path_weight", density=0.5)
    with pytest.raises(UsageError, match="lam must be ≤ 1"):
        evosparse.sparsify(small_mlp(), None, "path_weight", density=0.5, lam=1.5)


def test_a_refusal_leaves_the_model_and_optimizer_untouched_and_the_model_sparsifiable():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    before = {name: value.clone() for name, value in conv.state_dict().items()}
    groups = [list(group["params"]) for group in optimizer.param_groups]
    x = torch.randn(3, 1, 8, 8)
    output = conv(x)
    with pytest.raises(UsageError, match="Conv2d"):
        evosparse.sparsify(conv, optimizer, "path_weight", density=0.5)
    for name, value in conv.state_dict().items():
        assert torch.equal(value, before[name]), name  # bit-identical: no weight drawn, none masked
    assert [list(group["params"]) for group in optimizer.param_groups] == groups and not optimizer.state
    assert torch.equal(conv(x), output)
    for module in conv.modules():  # no hook left behind
        assert not module._forward_hooks and not module._forward_pre_hooks
        for param in module.parameters(recurse=False):
            assert not param._post_accumulate_grad_hooks
    sparsifier = evosparse.sparsify(conv, optimizer, "path_weight", density=0.5, exclude=["0.weight"])
    assert [layer.name for layer in sparsifier.topology.layers] == ["3.weight"]
    assert torch.equal(conv[0].weight, before["0.weight"])


@pytest.mark.parametrize("backend", ["masked", "csr"])
@pytest.mark.parametrize("device", DEVICES)
def test_path_weight_updates_on_every_device_from_the_cpus_initial_topology(device, backend):
    kwargs = {"density": 0.3, "update_unit": "step", "update_interval": 2, "zeta": 0.5}
    data = batches(6)
    cpu_initial, _ = run_on_device("path_weight", "cpu", backend, data, **kwargs)
    initial, sparsifier = run_on_device("path_weight", device, backend, data, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(initial, cpu_initial))  # draws are made on the CPU
    stats = sparsifier.take_stats()
    assert stats.updates == 3 and stats.connections_changed > 0
    sparsifier.topology.check(fixed_budget=True)
    for layer in sparsifier.topology.layers:
        assert layer.active_positions().device.type == device == layer.active_values().device.type


def train_digits(method: str, epochs: int, **params) -> list[float]:
    """Test accuracy after each epoch of a 64-128-64-10 sparse MLP on digits (evaluation before update)."""
    torch.manual_seed(0)
    accuracies, sparsifier = digits_accuracies(
        small_mlp((64, 128, 64, 10)), method, epochs, lr=0.05, density=0.15, **params
    )
    assert sparsifier.take_stats().connections_changed > 0
    return accuracies


def assert_learns(accuracies: list[float]) -> None:
    """Clearly above chance (10 classes) at the end, and better late than after the first epoch."""
    assert accuracies[-1] > 0.8
    assert max(accuracies[-3:]) > accuracies[0] + 0.02


@pytest.mark.parametrize("time_varying", [False, True])
def test_path_weight_learns_digits(time_varying):
    accuracies = train_digits("path_weight", 6, time_varying=time_varying)
    assert_learns(accuracies)
