import itertools
import math

import pytest
import torch
from scipy.stats import chisquare
from torch import nn
from torch.nn import functional as F

import evosparse
from conftest import small_mlp
from evosparse.engine import loop
from evosparse.engine.config import build_config
from evosparse.errors import UsageError
from evosparse.methods.liset import SKIP_INIT_SCALE, source_preference
from support import killed_then_resumed, saved_and_loaded


def liset(model, optimizer=None, **params):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    params = {"density": 0.3, "seed": 1, **params}
    return evosparse.sparsify(model, optimizer, "liset", **params)


def train_steps(model, sparsifier, steps=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 20, generator=generator), torch.randint(0, 5, (16,), generator=generator)
    optimizer = sparsifier.optimizer
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        sparsifier.step()


def layer_inputs(model, x):
    """The input of each linear layer of a ``small_mlp`` (what the skip layers read)."""
    inputs = []
    for module in model:
        if isinstance(module, nn.Linear):
            inputs.append(x)
        x = module(x)
    return inputs


def test_skip_layers_never_affect_evaluation_or_the_saved_model(mlp):
    keys = set(mlp.state_dict())
    sparsifier = liset(mlp, skip_dropout=0.0)
    train_steps(mlp, sparsifier)
    assert all(skip.weight.abs().sum() > 0 for skip in sparsifier.method.skip_layers)
    x = torch.randn(8, 20)
    mlp.eval()
    with_hooks = mlp(x)
    sparsifier.method.remove_hooks()
    assert torch.equal(with_hooks, mlp(x))
    assert set(mlp.state_dict()) == keys


def test_training_output_is_main_output_plus_every_skip_layer(mlp):
    sparsifier = liset(mlp, skip_dropout=0.0)
    train_steps(mlp, sparsifier)
    x = torch.randn(8, 20)
    mlp.train()
    full = mlp(x)
    with torch.no_grad():
        skips = sum(skip(h) for skip, h in zip(sparsifier.method.skip_layers, layer_inputs(mlp, x)))
    sparsifier.method.remove_hooks()
    main = mlp(x)
    assert not torch.allclose(full, main)
    torch.testing.assert_close(full, main + skips)


def test_shadow_skip_layers_learn_without_changing_how_the_main_network_trains():
    def trained(**params):
        torch.manual_seed(0)
        model = small_mlp()
        sparsifier = liset(model, **params)
        train_steps(model, sparsifier, steps=6)
        return model, sparsifier.method.skip_layers

    alone, untrained = trained(skip_dropout=1.0)  # skip layers never join: the main network trains alone
    shadowed, skips = trained(skip_dropout=0.0, skip_mode="shadow")
    added, _ = trained(skip_dropout=0.0)
    for key, value in alone.state_dict().items():
        assert torch.equal(shadowed.state_dict()[key], value), key
    assert any(not torch.equal(added.state_dict()[key], value) for key, value in alone.state_dict().items())
    bound = SKIP_INIT_SCALE / math.sqrt(20)
    assert untrained[0].weight.abs().max() <= bound < skips[0].weight.abs().max()  # the skip layers learnt


def test_whole_skip_layers_are_dropped_at_the_requested_rate(mlp):
    rate, forwards = 0.3, 600
    sparsifier = liset(mlp, skip_dropout=rate)
    with torch.no_grad():
        for skip in sparsifier.method.skip_layers:
            skip.weight.normal_()
    x = torch.randn(4, 20)
    with torch.no_grad():
        parts = [skip(h) for skip, h in zip(sparsifier.method.skip_layers, layer_inputs(mlp, x))]
        mlp.eval()
        main = mlp(x)
        mlp.train()
        kept_counts = torch.zeros(len(parts))
        for _ in range(forwards):
            extra = mlp(x) - main
            subsets = list(itertools.product([0, 1], repeat=len(parts)))
            errors = [(extra - sum(b * p for b, p in zip(bits, parts))).abs().max() for bits in subsets]
            best = min(range(len(subsets)), key=lambda i: errors[i])
            assert errors[best] < 1e-4  # each forward adds a whole subset of skip outputs, nothing else
            kept_counts += torch.tensor(subsets[best], dtype=torch.float)
    expected, sigma = forwards * (1 - rate), math.sqrt(forwards * rate * (1 - rate))
    assert ((kept_counts - expected).abs() < 4 * sigma).all(), kept_counts


def test_skip_layers_are_trained_by_the_users_optimizer(mlp):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
    groups_before = len(optimizer.param_groups)
    sparsifier = liset(mlp, optimizer, skip_dropout=0.0)
    skips = [skip.weight for skip in sparsifier.method.skip_layers]
    assert len(optimizer.param_groups) == groups_before + 1
    assert optimizer.param_groups[-1]["params"] == skips
    assert sparsifier.method.extra_parameters() == (20 + 16 + 12) * 5
    before = [p.detach().clone() for p in skips]
    train_steps(mlp, sparsifier, steps=1)
    assert all(not torch.equal(old, new) for old, new in zip(before, skips))


def test_skip_layers_are_reinitialised_after_every_update(mlp):
    sparsifier = liset(mlp, skip_dropout=0.0)
    train_steps(mlp, sparsifier, steps=10)
    optimizer = sparsifier.optimizer
    skips = sparsifier.method.skip_layers
    trained = [skip.weight.detach().clone() for skip in skips]
    assert all(skip.weight in optimizer.state for skip in skips)
    assert all(w.abs().max() > SKIP_INIT_SCALE / math.sqrt(w.shape[1]) for w in trained)
    sparsifier.method.update()
    for skip, old in zip(skips, trained):
        bound = SKIP_INIT_SCALE / math.sqrt(skip.in_features)
        assert not torch.equal(skip.weight, old)
        assert skip.weight.abs().max() <= bound and skip.weight.abs().max() > 0.9 * bound
        assert skip.weight not in optimizer.state  # no stale momentum


def test_update_keeps_budgets_and_prunes_like_set(mlp):
    sparsifier = liset(mlp, zeta=0.3)
    train_steps(mlp, sparsifier)
    before = [layer.mask.clone() for layer in sparsifier.topology.layers]
    sparsifier.end_epoch()
    for old, layer in zip(before, sparsifier.topology.layers):
        removed, added = (old & ~layer.mask).sum().item(), (layer.mask & ~old).sum().item()
        assert removed == added > 0 and layer.active == layer.budget


def test_source_preference_is_the_sigmoid_of_normalised_column_norms():
    weight = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.5, 0.0]])  # (outputs, inputs): w = [4, 2.5, 0]
    expected = [1 / (1 + math.exp(-(w / 4 + 0.7))) for w in (4.0, 2.5, 0.0)]
    torch.testing.assert_close(source_preference(weight, 0.7), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(source_preference(torch.zeros(2, 3), -1.0), torch.full((3,), 1 / (1 + math.e)).double())


def source_frequencies(gamma, draws=3000):
    """Sources of ``draws`` single-connection growths in a layer with skewed skip norms and uneven free counts."""
    model = small_mlp((12, 30, 5))
    sparsifier = liset(model, density=0.5, gamma=gamma)
    layer, skip = sparsifier.topology.layers[0], sparsifier.method.skip_layers[0]
    generator = torch.Generator().manual_seed(5)
    mask = torch.rand(layer.shape, generator=generator) < torch.linspace(0.05, 0.9, 12)  # source i: ~(1 - p_i) free
    layer.mask.copy_(mask)
    with torch.no_grad():
        skip.weight.copy_(torch.linspace(0.0, 3.0, 12).expand(5, 12))
    counts = torch.zeros(12)
    for _ in range(draws):
        position = sparsifier.method.growth_selection(0, 1)
        counts[position % 12] += 1
    free = (~mask).sum(dim=0).double()
    return counts, free, source_preference(skip.weight, gamma)


def test_large_gamma_growth_is_set_uniform_growth():
    counts, free, _ = source_frequencies(gamma=10.0)
    assert chisquare(counts, (free / free.sum() * counts.sum()).numpy()).pvalue > 1e-3


def test_small_gamma_growth_follows_equation_2_and_differs_from_uniform():
    counts, free, preference = source_frequencies(gamma=-20.0)
    uniform = (free / free.sum() * counts.sum()).numpy()
    weighted = free * preference
    assert chisquare(counts, uniform).pvalue < 1e-6
    assert chisquare(counts, (weighted / weighted.sum() * counts.sum()).numpy()).pvalue > 1e-3


def test_state_dict_round_trips_through_a_weights_only_checkpoint(mlp):
    sparsifier = liset(mlp)
    train_steps(mlp, sparsifier)
    state = saved_and_loaded(sparsifier.state_dict())
    other_model = small_mlp()
    other = liset(other_model, seed=7)
    other.load_state_dict(state)
    for a, b in zip(sparsifier.method.skip_layers, other.method.skip_layers):
        assert torch.equal(a.weight, b.weight)
    state["method_state"]["skip_weights"].pop()
    with pytest.raises(UsageError, match="skip layers"):
        other.load_state_dict(state)


def test_clean_errors_without_an_optimizer_or_with_convolutions():
    model = small_mlp()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(UsageError, match="optimizer"):
        evosparse.sparsify(model, None, "liset", density=0.3)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    conv_before = {name: value.clone() for name, value in conv.state_dict().items()}
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1)
    with pytest.raises(UsageError, match="linear layers only"):
        evosparse.sparsify(conv, optimizer, "liset", density=0.3)
    # Refused before anything was touched: weights bit-identical, no skip layers added, models reusable.
    for now, then in [(model.state_dict(), before), (conv.state_dict(), conv_before)]:
        assert all(torch.equal(value, then[name]) for name, value in now.items())
    assert len(optimizer.param_groups) == 1
    assert liset(model).method.skip_layers
    assert evosparse.sparsify(conv, optimizer, "set", density=0.3).topology.density() < 1


def test_a_wrong_output_size_is_reported_in_one_line(mlp):
    sparsifier = liset(mlp, output_size=7, skip_dropout=0.0)
    with pytest.raises(UsageError, match="output_size"):
        train_steps(mlp, sparsifier, steps=1)


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.05), ("adam", 0.01)])
def test_learns_on_digits_and_resumes_exactly(tmp_path, monkeypatch, optimizer, lr):
    def config(out):
        overrides = {"method": "liset", "epochs": 4, "hidden": "32", "density": 0.2, "out": str(out)}
        return build_config(None, {**overrides, "optimizer": optimizer, "lr": lr}, ["gamma=0"])

    reference = loop.train(config(tmp_path / "full"), progress=False)
    assert reference["final_test_acc"] > 0.8
    resumed = killed_then_resumed(lambda: config(tmp_path / "cut"), monkeypatch, kill_after_epoch=2)
    assert [e["test_loss"] for e in resumed["epochs"]] == [e["test_loss"] for e in reference["epochs"]]


@pytest.mark.parametrize("end", ["remove", "squash"])
def test_ending_the_run_takes_the_skip_layers_out_of_the_optimizer(mlp, end):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
    groups = len(optimizer.param_groups)
    sparsifier = liset(mlp, optimizer)
    train_steps(mlp, sparsifier)
    assert len(optimizer.param_groups) == groups + 1
    getattr(sparsifier, end)()
    assert len(optimizer.param_groups) == groups
    skip_weights = {id(skip.weight) for skip in sparsifier.method.skip_layers}
    assert not skip_weights & {id(param) for param in optimizer.state}
    mlp.train()
    x = torch.randn(4, mlp[0].in_features)
    assert torch.equal(mlp(x), mlp(x))  # no skip layer (with its dropout) adds to the output any more
