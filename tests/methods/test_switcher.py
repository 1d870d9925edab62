import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import evosparse
from conftest import small_mlp
from evosparse.engine.config import build_config
from evosparse.engine.loop import train
from evosparse.errors import UsageError
from evosparse.methods.switcher_net import SwitcherNet
from evosparse.topology.distributions import layer_densities
from support import saved_and_loaded


class FixedGates(nn.Module):
    """Stands in for a switcher: always outputs the given gates (a parameter, so it can be 'trained')."""

    def __init__(self, gates: torch.Tensor) -> None:
        super().__init__()
        self.gates = nn.Parameter(gates.clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return F.relu(self.gates)


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def manual_forward(model: nn.Module, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """The small MLP's forward pass with the given effective weights, without any hook."""
    for index, (layer, weight) in enumerate(zip(linear_layers(model), weights)):
        x = F.linear(x, weight, layer.bias)
        if index < len(weights) - 1:
            x = F.relu(x)
    return x


def setup(mode="connection", optimizer="sgd", sizes=(20, 16, 12, 5), **params):
    """A small MLP under the switcher; the paper's phase order and step interval unless given otherwise,
    and a ``target_density`` split uniformly (every layer keeps that fraction) unless ``distribution`` is given."""
    params.setdefault("first_phase", "switcher")
    params.setdefault("distribution", "uniform")
    params.setdefault("switcher_interval", 1)  # a switcher step after every batch, as in the paper
    model = small_mlp(sizes)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    sparsifier = evosparse.sparsify(model, opt, "switcher", density=1.0, mode=mode, seed=0, **params)
    return model, opt, sparsifier


def train_steps(model, opt, sparsifier, steps=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n_in = linear_layers(model)[0].in_features
    n_out = linear_layers(model)[-1].out_features
    for _ in range(steps):
        x = torch.randn(16, n_in, generator=generator)
        y = torch.randint(0, n_out, (16,), generator=generator)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sparsifier.step()


def random_gates(shape, generator, zero_fraction=0.5):
    gates = torch.rand(shape, generator=generator) * 2
    return torch.where(torch.rand(shape, generator=generator) < zero_fraction, torch.zeros(shape), gates)


def per_connection(gates, mode, shape):
    """Gates as one entry per connection: neuron gates repeated down the columns of a (out, in) matrix."""
    return gates if mode == "connection" else gates[None, :].expand(shape)


def fix_gates(method, gates):
    """Replace every switcher of ``method`` by one that outputs the given gates; return the gates."""
    for slot, values in enumerate(gates):
        method.switchers[slot] = FixedGates(values)
    return gates


def fix_random_gates(method, generator):
    """Replace every switcher by one that outputs random gates (half of them 0); return the gates."""
    return fix_gates(method, [random_gates(method.gate_shape(slot), generator) for slot in range(len(method.gated))])


def clone_state(optimizer):
    return {
        id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for p, s in optimizer.state.items()
    }


def assert_same_state(before, optimizer):
    after = clone_state(optimizer)
    assert before.keys() == after.keys()
    for key in before:
        for name, value in before[key].items():
            other = after[key][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


# -- the switcher network ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(300, 784), (100, 300), (10, 100), (7, 65), (65, 7), (1, 1), (3, 5), (2, 9)])
@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_switcher_output_shapes_and_initial_gates_near_one(shape, mode):
    weight = torch.randn(shape)
    net = SwitcherNet(*shape, mode, generator=torch.Generator().manual_seed(0))
    gates = net(weight)
    assert gates.shape == (shape if mode == "connection" else shape[1:])
    assert (gates >= 0).all()
    assert (gates - 1).abs().max() < 0.5  # dense-like start: every gate about 1
    gates.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_switcher_refuses_the_wrong_matrix_and_bad_sizes():
    net = SwitcherNet(4, 6)
    with pytest.raises(UsageError, match="reads"):
        net(torch.randn(6, 4))
    with pytest.raises(UsageError, match="odd"):
        SwitcherNet(4, 6, kernel=2)
    with pytest.raises(UsageError, match="mode"):
        SwitcherNet(4, 6, mode="row")


def test_switcher_init_is_seeded_by_the_generator():
    a = SwitcherNet(9, 13, generator=torch.Generator().manual_seed(5))
    b = SwitcherNet(9, 13, generator=torch.Generator().manual_seed(5))
    c = SwitcherNet(9, 13, generator=torch.Generator().manual_seed(6))
    weight = torch.randn(9, 13)
    assert torch.equal(a(weight), b(weight))
    assert not torch.equal(a(weight), c(weight))


# -- the gated forward pass ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_zero_gates_remove_exactly_those_connections(mode):
    model, _, sparsifier = setup(mode)
    method = sparsifier.method
    generator = torch.Generator().manual_seed(1)
    gates = fix_random_gates(method, generator)
    x = torch.randn(8, 20, generator=generator)
    model.eval()
    gated = model(x)
    effective = [
        layer.weight.detach() * per_connection(z, mode, layer.weight.shape)
        for layer, z in zip(linear_layers(model), gates)
    ]
    assert torch.allclose(gated, manual_forward(model, x, effective), atol=1e-6)
    # whatever the weights at switched-off positions are, they do not reach the output
    with torch.no_grad():
        for layer, z in zip(linear_layers(model), gates):
            off = per_connection(z == 0, mode, layer.weight.shape)
            layer.weight[off] = torch.randn(int(off.sum()), generator=generator) * 100
    assert torch.allclose(model(x), gated, atol=1e-6)


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_masks_and_density_follow_the_gates_after_a_switcher_epoch(mode):
    model, opt, sparsifier = setup(mode)
    method = sparsifier.method
    generator = torch.Generator().manual_seed(2)
    gates = fix_random_gates(method, generator)
    train_steps(model, opt, sparsifier)
    expected_masks = [per_connection(z != 0, mode, layer.shape) for layer, z in zip(sparsifier.topology.layers, gates)]
    active = sum(int(mask.sum()) for mask in expected_masks)
    assert sparsifier.topology.active == sparsifier.topology.total  # masks move only when the epoch ends
    assert sparsifier.density() == pytest.approx(active / sparsifier.topology.total)  # the gates' density
    sparsifier.end_epoch()
    for layer, expected in zip(sparsifier.topology.layers, expected_masks):
        assert torch.equal(layer.mask, expected)
        assert not layer.weight[~layer.mask].any()
    assert sparsifier.density() == pytest.approx(active / sparsifier.topology.total)
    assert method.active_connections() == sparsifier.topology.active
    assert sparsifier.take_stats().connections_changed == sparsifier.topology.total - active


def test_a_connection_switched_off_and_on_again_gets_its_weight_back():
    model, opt, sparsifier = setup("connection")
    method = sparsifier.method
    generator = torch.Generator().manual_seed(3)
    gates = random_gates(method.gate_shape(0), generator)
    method.switchers[0] = FixedGates(gates)
    weight_before = sparsifier.topology.layers[0].weight.detach().clone()
    sparsifier.end_epoch()  # switcher epoch 0 ends: switched-off weights become dormant
    off = gates == 0
    assert not sparsifier.topology.layers[0].weight[off].any()
    assert torch.equal(method.dormant[0][off], weight_before[off])
    sparsifier.end_epoch()  # task epoch 1 (no steps) ends
    method.switchers[0] = FixedGates(torch.ones_like(gates))
    sparsifier.end_epoch()  # switcher epoch 2 turns everything on again
    assert torch.equal(sparsifier.topology.layers[0].weight.detach(), weight_before)
    assert not method.dormant[0].any()


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_switcher_epochs_compute_with_the_switched_off_weights(mode):
    """A gate turned on again in a switcher epoch acts with the weight its connection had (W + D)."""
    model, _, sparsifier = setup(mode)
    method = sparsifier.method
    generator = torch.Generator().manual_seed(5)
    original = [layer.weight.detach().clone() for layer in linear_layers(model)]
    fix_random_gates(method, generator)
    sparsifier.end_epoch()  # switcher epoch 0 ends: masks follow the gates, weights become dormant
    sparsifier.end_epoch()  # task epoch 1 (no steps) ends
    assert sparsifier.topology.active < sparsifier.topology.total
    fix_gates(method, [torch.ones(method.gate_shape(slot)) for slot in range(len(method.gated))])
    x = torch.randn(8, 20, generator=generator)
    model.eval()
    assert torch.allclose(model(x), manual_forward(model, x, original), atol=1e-6)


def test_gates_first_computed_under_inference_mode_can_still_be_trained():
    model, opt, sparsifier = setup()
    with torch.inference_mode():
        model(torch.randn(4, 20))
    before = [p.detach().clone() for p in sparsifier.method.switchers.parameters()]
    train_steps(model, opt, sparsifier, steps=1)
    assert any(not torch.equal(a, b) for a, b in zip(before, sparsifier.method.switchers.parameters()))


# -- alternating training -----------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_switcher_epochs_leave_the_task_network_and_its_optimizer_state_unchanged(optimizer, mode):
    model, opt, sparsifier = setup(mode, optimizer)
    for epoch in range(2):  # a switcher epoch, then a task epoch that builds momentum / Adam moments
        train_steps(model, opt, sparsifier, seed=epoch)
        sparsifier.end_epoch()
    assert sparsifier.method.in_switcher_phase() and opt.state
    params = [p.detach().clone() for p in model.parameters()]
    state = clone_state(opt)
    switchers = [p.detach().clone() for p in sparsifier.method.switchers.parameters()]
    train_steps(model, opt, sparsifier, steps=4, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert_same_state(state, opt)
    assert any(not torch.equal(a, b) for a, b in zip(switchers, sparsifier.method.switchers.parameters()))


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_task_epochs_leave_the_switchers_their_state_and_the_gates_unchanged(mode):
    model, opt, sparsifier = setup(mode, switcher_momentum=0.9)
    method = sparsifier.method
    train_steps(model, opt, sparsifier)  # switcher epoch: builds the switchers' momentum
    sparsifier.end_epoch()
    assert not method.in_switcher_phase()
    switchers = [p.detach().clone() for p in method.switchers.parameters()]
    state = clone_state(method.switcher_optimizer)
    gates = [method.gate(slot).clone() for slot in range(len(method.gated))]
    params = [p.detach().clone() for p in model.parameters()]
    train_steps(model, opt, sparsifier, steps=4, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(switchers, method.switchers.parameters()))
    assert_same_state(state, method.switcher_optimizer)
    assert all(torch.equal(a, method.gate(slot)) for slot, a in enumerate(gates))
    assert all(not torch.equal(a, b) for a, b in zip(params, model.parameters()))


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_by_default_the_task_network_trains_first_then_the_switchers(mode):
    model, opt, sparsifier = setup(mode, first_phase="task")
    method = sparsifier.method
    for epoch, trained in enumerate(["task", "switchers", "task"]):
        params = [p.detach().clone() for p in model.parameters()]
        switchers = [p.detach().clone() for p in method.switchers.parameters()]
        train_steps(model, opt, sparsifier, seed=epoch)
        task_moved = any(not torch.equal(a, b) for a, b in zip(params, model.parameters()))
        switchers_moved = any(not torch.equal(a, b) for a, b in zip(switchers, method.switchers.parameters()))
        assert (task_moved, switchers_moved) == (trained == "task", trained == "switchers")
        sparsifier.end_epoch()


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_a_first_task_epoch_trains_under_the_budget_from_its_first_step(mode):
    _, _, sparsifier = setup(mode, first_phase="task", target_density=0.3)
    method = sparsifier.method
    for slot, layer in enumerate(sparsifier.topology.layers):
        assert torch.equal(layer.mask, method.connection_gates(slot) != 0)
        assert int((method.gate(slot) != 0).sum()) == round(0.3 * method.gate(slot).numel())
    assert sparsifier.density() == pytest.approx(sparsifier.topology.active / sparsifier.topology.total)


def test_by_default_the_switchers_step_once_every_32_batches():
    model, opt, sparsifier = setup(switcher_interval=32)
    assert evosparse.methods.resolve_params(type(sparsifier.method), {})["switcher_interval"] == 32
    before = [p.detach().clone() for p in sparsifier.method.switchers.parameters()]
    train_steps(model, opt, sparsifier, steps=31)
    assert all(torch.equal(a, b) for a, b in zip(before, sparsifier.method.switchers.parameters()))
    train_steps(model, opt, sparsifier, steps=1, seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(before, sparsifier.method.switchers.parameters()))


def test_accumulated_switcher_steps_equal_one_step_on_the_joined_batch():
    """switcher_interval=2 on batches A, B gives the same switchers as interval 1 on A∪B (mean loss)."""
    generator = torch.Generator().manual_seed(4)
    x, y = torch.randn(32, 20, generator=generator), torch.randint(0, 5, (32,), generator=generator)
    results = []
    for interval, batches in ((2, [slice(0, 16), slice(16, 32)]), (1, [slice(0, 32)])):
        torch.manual_seed(0)
        model, opt, sparsifier = setup(switcher_interval=interval)
        for batch in batches:
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
            sparsifier.step()
        results.append([p.detach().clone() for p in sparsifier.method.switchers.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*results))


# -- budget ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_target_density_keeps_exactly_the_budget_of_largest_gates(mode):
    model, opt, sparsifier = setup(mode, target_density=0.3)
    method = sparsifier.method
    train_steps(model, opt, sparsifier, steps=1)
    raw = [method.switchers[slot](method.full_weight(slot)).detach() for slot in range(len(method.gated))]
    sparsifier.end_epoch()
    assert sparsifier.density_target == 0.3
    for slot, layer in enumerate(sparsifier.topology.layers):
        budget = round(0.3 * raw[slot].numel())
        kept = method.gate(slot) != 0
        assert int(kept.sum()) == budget
        assert raw[slot][kept].min() >= raw[slot][~kept].max()  # the largest gates are the kept ones
        connections_per_gate = layer.shape[0] if mode == "neuron" else 1
        assert layer.active == budget * connections_per_gate


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_a_budgeted_switcher_epoch_trains_the_gates_of_its_selection_only(mode):
    model, opt, sparsifier = setup(mode, target_density=0.3, switcher_lr=0.2)  # a switcher epoch first
    method = sparsifier.method
    masks = [layer.mask.clone() for layer in sparsifier.topology.layers]
    assert sparsifier.density() == pytest.approx(0.3, abs=0.05)
    train_steps(model, opt, sparsifier, steps=4)  # switcher steps move the gates
    for slot, mask in enumerate(masks):
        assert torch.equal(sparsifier.topology.layers[slot].mask, mask)
        assert not ((method.connection_gates(slot) != 0) & ~mask).any()  # only the selection computes
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    F.cross_entropy(model(x), y).backward()
    for slot, mask in enumerate(masks):
        selected = mask.any(dim=0) if mode == "neuron" else mask
        grad = method._gates[slot].grad
        assert not grad[~selected].any() and grad[selected].any()
    sparsifier.end_epoch()
    assert sum(int((a != b.mask).sum()) for a, b in zip(masks, sparsifier.topology.layers)) > 0  # reselected


# -- export and persistence -------------------------------------------------------------------------


@pytest.mark.parametrize("epochs", [1, 2])
@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_exported_model_gives_the_gated_outputs_with_exact_zeros(mode, epochs):
    model, opt, sparsifier = setup(mode, target_density=0.5)
    for epoch in range(epochs):
        train_steps(model, opt, sparsifier, seed=epoch)
        sparsifier.end_epoch()
    train_steps(model, opt, sparsifier, seed=9)  # in the middle of an epoch
    plain, masks = sparsifier.method.export_model()
    x = torch.randn(10, 20)
    model.eval()
    plain.eval()
    assert torch.allclose(plain(x), model(x), atol=1e-6)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in plain.modules())
    for slot, layer in enumerate(linear_layers(plain)):
        off = sparsifier.method.connection_gates(slot) == 0
        assert off.any() and not layer.weight[off].any()
    assert any(m._forward_hooks or m._forward_pre_hooks for m in linear_layers(model))  # still gated


def test_extra_parameters_count_the_switchers():
    _, _, sparsifier = setup()
    expected = sum(p.numel() for net in sparsifier.method.switchers for p in net.parameters())
    assert sparsifier.method.extra_parameters() == expected > 0


@pytest.mark.parametrize("saved_in", ["switcher epoch", "task epoch"])
def test_state_dict_round_trip_resumes_exactly(saved_in):
    def build():
        torch.manual_seed(0)
        return setup("connection", switcher_interval=3, switcher_momentum=0.9)

    model, opt, sparsifier = build()
    epochs_before = 2 if saved_in == "switcher epoch" else 1
    for epoch in range(epochs_before):
        train_steps(model, opt, sparsifier, steps=3, seed=epoch)
        sparsifier.end_epoch()
    train_steps(model, opt, sparsifier, steps=2, seed=5)  # mid-epoch (switcher: 2 of 3 batches accumulated)
    saved = saved_and_loaded({"model": model.state_dict(), "opt": opt.state_dict(), "s": sparsifier.state_dict()})
    model2, opt2, sparsifier2 = build()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sparsifier2.load_state_dict(saved["s"])
    for m, o, s in ((model, opt, sparsifier), (model2, opt2, sparsifier2)):
        train_steps(m, o, s, steps=2, seed=6)
        s.end_epoch()
        train_steps(m, o, s, steps=4, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    pairs = zip(sparsifier.method.switchers.parameters(), sparsifier2.method.switchers.parameters())
    assert all(torch.equal(a, b) for a, b in pairs)
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(sparsifier.topology.layers, sparsifier2.topology.layers))


def test_a_state_from_another_model_is_refused():
    _, _, sparsifier = setup()
    _, _, other = setup(sizes=(20, 8, 5))
    with pytest.raises(UsageError, match="switcher"):
        sparsifier.method.load_state_dict(other.method.state_dict())
    with pytest.raises(UsageError, match="lacks"):
        sparsifier.method.load_state_dict({"switchers": {}})


# -- usage errors -----------------------------------------------------------------------------------


def test_bad_usage_is_refused_with_one_line():
    with pytest.raises(UsageError, match="optimizer"):
        evosparse.sparsify(small_mlp(), None, "switcher", density=1.0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(UsageError, match="nn.Linear"):
        evosparse.sparsify(conv, torch.optim.SGD(conv.parameters(), lr=0.1), "switcher", density=1.0)
    with pytest.raises(UsageError, match="odd"):
        setup(kernel=4)
    with pytest.raises(UsageError, match="update_unit"):
        setup(update_unit="step")


# -- learning, through the engine -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_both_modes_learn_digits_through_the_engine(mode, tmp_path):
    config = build_config(
        None,
        {"method": "switcher", "dataset": "digits", "epochs": 4, "hidden": [64], "out": str(tmp_path / mode)},
        [f"mode={mode}"],
    )
    result = train(config, progress=False)
    assert result["final_test_acc"] > 0.6  # chance is 0.1
    saved = json.loads((tmp_path / mode / "result.json").read_text())
    assert saved["density_target"] is None
    assert saved["epochs"][0]["density"] == 1.0  # starts dense
    assert 0 < saved["density_final"] <= 1.0
    assert saved["params_extra_training"] > 0


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_the_budget_is_split_over_the_layers_by_the_distribution(mode):
    _, _, sparsifier = setup(mode, sizes=(40, 30, 20, 5), target_density=0.3, distribution="erdos_renyi")
    shapes = [tuple(layer.shape) for layer in sparsifier.topology.layers]
    targets = layer_densities(shapes, distribution="erdos_renyi", density=0.3)
    assert list(sparsifier.plan.densities) == list(targets) and len(set(targets)) == 3
    for slot, (layer, target) in enumerate(zip(sparsifier.topology.layers, targets)):
        gates = layer.shape[1] if mode == "neuron" else layer.numel
        assert int((sparsifier.method.gate(slot) != 0).sum()) == max(1, round(target * gates))


def test_the_run_density_is_the_switchers_budget_and_conflicts_are_refused():
    model = small_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(model, opt, "switcher", density=0.3)
    assert sparsifier.method.target_density == 0.3 and sparsifier.density_target == 0.3
    for kwargs, message in [
        ({"density": 0.3, "target_density": 0.5}, "give one of them"),
        ({"epsilon": 5.0}, "not --epsilon"),
    ]:
        model = small_mlp()
        with pytest.raises(UsageError, match=message):
            evosparse.sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), "switcher", **kwargs)
