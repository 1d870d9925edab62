import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import evosparse
from conftest import small_mlp
from evosparse.engine import loop
from evosparse.engine.config import build_config
from evosparse.errors import UsageError
from evosparse.methods.adaptive import (
    AdaptiveWeightSparsity,
    activation_probability,
    largest_with_random_ties,
    prune_probability,
)
from support import assert_resume_is_exact_over_epochs, batches, killed_then_resumed, saved_and_loaded


def adaptive(model, **params):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    params = {"density": 0.3, "distribution": "uniform", "seed": 2, **params}
    return evosparse.sparsify(model, optimizer, "adaptive", **params)


def train_step(model, sparsifier, seed=0):
    """One optimizer step on a random batch; returns the dense gradient of every sparse weight (computed
    independently of the method)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(32, model[0].in_features, generator=generator)
    y = torch.randint(0, model[-1].out_features, (32,), generator=generator)
    weights = [layer.weight for layer in sparsifier.topology.layers]
    loss = F.cross_entropy(model(x), y)
    dense = [g.clone() for g in torch.autograd.grad(loss, weights, retain_graph=True)]
    optimizer = sparsifier.optimizer
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    sparsifier.step()
    return dense


def one_over_one_plus_exp(z):
    """1 / (1 + e^z), the form the paper writes both probabilities in."""
    return 1 / (1 + math.exp(z)) if z < 700 else 0.0


finite = st.floats(min_value=0.0, max_value=5.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(finite, min_size=1, max_size=6),
    st.floats(0.01, 3.0),
    st.floats(0.05, 2.0),
    st.floats(0.0, 30.0),
    st.floats(0.0, 20.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_probabilities_are_the_papers_sigmoids(values, mean, scale, g, s, a, alpha):
    magnitudes = torch.tensor(values, dtype=torch.float64)
    pruned = prune_probability(magnitudes, mean, scale, g, s, a, alpha)
    grown = activation_probability(magnitudes, mean, scale, g, s, a, alpha)
    for value, p, q in zip(values, pruned.tolist(), grown.tolist()):
        exponent = g * (value / (scale * mean) - 1 - s * (a - alpha))
        assert p == pytest.approx(one_over_one_plus_exp(exponent), abs=1e-12)
        assert q == pytest.approx(one_over_one_plus_exp(-exponent), abs=1e-12)


def test_the_method_evaluates_the_formulas_on_its_samples():
    model = small_mlp((10, 16, 4))
    sparsifier = adaptive(model, mode="stochastic", beta0=0.4, beta1=0.6, g=3.0, s=4.0, k=0.5, l=2.0, alpha=0.25)
    dense = train_step(model, sparsifier)
    method = sparsifier.method
    candidates = method.growth_candidates()
    for index, layer in enumerate(sparsifier.topology.layers):
        bias = 4.0 * (layer.active / layer.numel - 0.25)  # s(a - α)
        pruning, growth = method.pruning_stage(index), method.growth_stage(index, candidates[index])
        flat_mask, flat_w = layer.mask.view(-1), layer.weight.detach().view(-1)
        assert flat_mask[pruning.positions].all() and pruning.positions.unique().numel() == round(0.6 * layer.active)
        inactive = layer.numel - layer.active
        assert not flat_mask[growth.positions].any() and growth.positions.unique().numel() == round(0.4 * inactive)
        w_bar = flat_w[pruning.positions].abs().double().mean().item()
        for position, p in zip(pruning.positions.tolist(), pruning.probabilities.tolist()):
            expected = one_over_one_plus_exp(3.0 * (abs(flat_w[position].item()) / (0.5 * w_bar) - 1 - bias))
            assert p == pytest.approx(expected, rel=1e-6)
        grads = dense[index].view(-1)
        torch.testing.assert_close(growth.gradients, grads[growth.positions])
        v_bar = grads[growth.positions].abs().double().mean().item()
        for position, q in zip(growth.positions.tolist(), growth.probabilities.tolist()):
            expected = one_over_one_plus_exp(-3.0 * (abs(grads[position].item()) / (2.0 * v_bar) - 1 - bias))
            assert q == pytest.approx(expected, rel=1e-6, abs=1e-12)


def brute_force_deterministic(weight, mask, grad, k):
    """The g→∞, s→∞ limit by hand: prune |w| < k·W̄ (weakest first, at most the free positions), then
    activate as many inactive positions, largest |gradient| first."""
    flat_w, flat_m, flat_g = weight.view(-1).tolist(), mask.view(-1).tolist(), grad.view(-1).tolist()
    active = [i for i, on in enumerate(flat_m) if on]
    inactive = [i for i, on in enumerate(flat_m) if not on]
    w_bar = sum(abs(flat_w[i]) for i in active) / len(active)
    prune = sorted((i for i in active if abs(flat_w[i]) < k * w_bar), key=lambda i: abs(flat_w[i]))
    prune = prune[: len(inactive)]
    grow = sorted(inactive, key=lambda i: -abs(flat_g[i]))[: len(prune)]
    return set(prune), set(grow), w_bar


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [0.25, 0.5, 1.5])
def test_the_deterministic_preset_prunes_and_grows_exactly_what_the_limit_implies(seed, k):
    model = small_mlp((12, 9, 4))
    sparsifier = adaptive(model, density=0.6 if k > 1 else 0.3, seed=seed, k=k)
    dense = train_step(model, sparsifier, seed=seed)
    layers = sparsifier.topology.layers
    masks = [layer.mask.clone() for layer in layers]
    expected = [brute_force_deterministic(layer.weight.detach(), layer.mask, g, k) for layer, g in zip(layers, dense)]
    sparsifier.method.update()
    sparsifier.topology.check(fixed_budget=True)
    for old_m, layer, (prune, grow, w_bar) in zip(masks, layers, expected):
        now = layer.mask.view(-1)
        assert set((old_m.view(-1) & ~now).nonzero().squeeze(1).tolist()) == prune
        assert set((now & ~old_m.view(-1)).nonzero().squeeze(1).tolist()) == grow
        assert layer.active == layer.budget
        grown = layer.weight.detach().view(-1)[sorted(grow)]
        assert (grown.abs() <= 2 * k * w_bar).all()  # C_g = 0, r = 2kW̄


def test_the_preset_is_the_large_g_limit_of_the_pruning_formula():
    magnitudes = torch.tensor([0.1, 0.2, 0.29, 0.31, 0.5, 1.0], dtype=torch.float64)
    mean = 0.6  # threshold k·W̄ = 0.3 with k = 0.5
    probability = prune_probability(magnitudes, mean, 0.5, 1e6, 0.0, 0.2, 0.2)
    assert probability.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_growth_takes_the_largest_gradients_and_breaks_ties_at_the_cut_uniformly():
    scores = torch.tensor([3.0, 1.0, 0.0, 1.0, 1.0, 2.0, 1.0])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(7)
    for _ in range(2000):
        chosen = largest_with_random_ties(scores, 4, generator)
        assert chosen.unique().numel() == 4
        counts[chosen] += 1
    assert counts[0] == counts[5] == 2000 and counts[2] == 0
    assert ((counts[[1, 3, 4, 6]] - 1000).abs() < 4 * math.sqrt(2000 * 0.25)).all()  # 2 of the 4 tied, each 1/2
    assert largest_with_random_ties(scores, 0, generator).numel() == 0


def test_grown_weights_follow_c_g_times_the_gradient_plus_noise_of_radius_r():
    model = small_mlp((12, 9, 4))
    sparsifier = adaptive(model, k=1.0, c_g=-0.5, r=0.0)
    dense = train_step(model, sparsifier)
    masks = [layer.mask.clone() for layer in sparsifier.topology.layers]
    sparsifier.method.update()
    for old, layer, grad in zip(masks, sparsifier.topology.layers, dense):
        grown = layer.mask & ~old
        assert grown.any()
        torch.testing.assert_close(layer.weight.detach()[grown], -0.5 * grad[grown])


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_stochastic_mode_moves_the_active_fraction_toward_alpha(alpha):
    model = small_mlp((20, 40, 30, 5))
    sparsifier = adaptive(model, mode="stochastic", alpha=alpha, s=2.0, seed=3)
    method, layers = sparsifier.method, sparsifier.topology.layers
    assert not method.fixed_budget and AdaptiveWeightSparsity.fixed_budget
    train_step(model, sparsifier)
    candidates = method.growth_candidates()
    for index in range(len(layers)):
        growth = method.growth_stage(index, candidates[index])
        drift = growth.probabilities.sum() - method.pruning_stage(index).probabilities.sum()
        assert drift * (alpha - 0.3) > 0  # expected change in active count points toward α
    for update in range(4):
        sparsifier.end_epoch()
        train_step(model, sparsifier, seed=update + 1)
    for layer in layers:
        assert abs(layer.active / layer.numel - alpha) < 0.2 - 0.05


def test_gradients_are_read_only_at_sampled_candidates_and_recorded_only_when_needed(monkeypatch):
    model = small_mlp((20, 40, 5))
    sparsifier = adaptive(model, mode="stochastic", beta0=0.25, update_unit="step", update_interval=3)
    layers, reads = sparsifier.topology.layers, []
    for layer in layers:
        real = layer.gradient_at

        def reading(positions, real=real, layer=layer):
            reads.append((layer.name, positions.numel(), bool(layer.contains(positions).any())))
            return real(positions)

        monkeypatch.setattr(layer, "gradient_at", reading)
    expected = [(layer.name, round(0.25 * (layer.numel - layer.active)), False) for layer in layers]
    for step in range(1, 4):
        generator = torch.Generator().manual_seed(step)
        x, y = torch.randn(32, 20, generator=generator), torch.randint(0, 5, (32,), generator=generator)
        optimizer = sparsifier.optimizer
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for layer in layers:
            if step < 3:  # steps 1 and 2 are not followed by an update: nothing is recorded
                with pytest.raises(UsageError, match="no gradient"):
                    layer.gradient_at(layer.active_positions()[:0])
        reads.clear()
        optimizer.step()
        sparsifier.step()
        # Only step 3 is followed by an update; it reads the gradient at round(β₀ · free) inactive candidates.
        assert reads == (expected if step == 3 else [])
        assert sparsifier.take_stats().updates == (step == 3)
    for layer in layers:  # the update's gradient is dropped with the topology it belonged to
        with pytest.raises(UsageError, match="no gradient"):
            layer.gradient_at(layer.active_positions()[:0])


@pytest.mark.parametrize("mode", ["deterministic", "stochastic"])
def test_an_update_before_any_gradient_is_a_clean_error(mode):
    sparsifier = adaptive(small_mlp(), mode=mode)
    before = [layer.active_positions().clone() for layer in sparsifier.topology.layers]
    with pytest.raises(UsageError, match="no gradient of 0.weight was recorded for this topology update"):
        sparsifier.method.update()
    for layer, positions in zip(sparsifier.topology.layers, before):  # nothing half-done
        assert torch.equal(layer.active_positions(), positions)


def test_the_deterministic_preset_refuses_parameters_it_would_ignore():
    with pytest.raises(UsageError, match="parameter g has no effect in deterministic mode"):
        adaptive(small_mlp(), g=50.0)
    assert adaptive(small_mlp(), mode="stochastic", g=50.0).method.hparams["g"] == 50.0


def test_state_dict_round_trips_and_foreign_state_is_refused():
    sparsifier = adaptive(small_mlp())
    state = saved_and_loaded(sparsifier.state_dict())
    other = adaptive(small_mlp(), seed=9)
    other.load_state_dict(state)
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(sparsifier.topology.layers, other.topology.layers))
    state["method_state"] = {"unexpected": 1}
    with pytest.raises(UsageError):
        other.load_state_dict(state)


@pytest.mark.parametrize("backend", ["masked", "csr"])
@pytest.mark.parametrize("cut", [(1, 0), (1, 2), (3, 1)])
def test_stochastic_growth_resumed_inside_an_update_interval_is_exact(backend, cut):
    """β₀ < 1 draws growth candidates at each update: a state saved between updates must carry nothing
    half-drawn, and the resumed run must make the uninterrupted run's draws."""

    def fresh(seed):
        torch.manual_seed(seed)
        model = small_mlp((20, 24, 5))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sparsifier = evosparse.sparsify(
            model, optimizer, "adaptive", density=0.3, seed=seed, backend=backend,
            mode="stochastic", beta0=0.5, update_interval=2, s=2.0,
        )  # fmt: skip
        return model, sparsifier

    epochs = [batches(3, seed=epoch) for epoch in range(6)]  # updates at the ends of epochs 2, 4 and 6
    uninterrupted = assert_resume_is_exact_over_epochs(fresh, epochs, cut)
    stats = uninterrupted.take_stats()
    assert stats.updates == 3 and stats.connections_changed > 0
    assert uninterrupted.topology.active != sum(uninterrupted.plan.budgets)  # the stochastic form moved it


@pytest.mark.parametrize("pairs", [[], ["mode=stochastic", "beta0=0.5", "beta1=0.5"]])
def test_learns_on_digits_and_resumes_exactly(tmp_path, monkeypatch, pairs):
    def config(out):
        overrides = {"method": "adaptive", "epochs": 4, "hidden": "32", "density": 0.2, "out": str(out)}
        return build_config(None, overrides, pairs)

    reference = loop.train(config(tmp_path / "full"), progress=False)
    assert reference["final_test_acc"] > 0.8
    assert sum(e["connections_changed"] for e in reference["epochs"]) > 0
    resumed = killed_then_resumed(lambda: config(tmp_path / "cut"), monkeypatch, kill_after_epoch=2)
    keys = ("test_loss", "density", "connections_changed")
    assert [[e[k] for k in keys] for e in resumed["epochs"]] == [[e[k] for k in keys] for e in reference["epochs"]]
