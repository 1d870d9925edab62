"""The Python API a researcher drops into their own loop (the README example)."""

import copy

import pytest
import torch
from torch import nn

import evosparse
from evosparse.errors import UsageError
from support import digits_accuracies


def train_digits(method: str, epochs: int = 6, **kwargs) -> list[float]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return digits_accuracies(model, method, epochs, lr=0.02, **kwargs)[0]


@pytest.mark.parametrize("method", ["set", "static", "dense"])
def test_every_foundation_method_learns_digits(method):
    accuracies = train_digits(method, density=0.1)
    assert accuracies[0] < accuracies[-1] or accuracies[0] > 0.9
    assert accuracies[-1] > 0.9


def test_state_dict_restores_masks_counters_and_growth_generator():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    s = evosparse.sparsify(model, optimizer, "set", density=0.4, seed=1)
    s.end_epoch()
    state = s.state_dict()
    clone = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    clone.load_state_dict(model.state_dict())
    restored = evosparse.sparsify(clone, torch.optim.SGD(clone.parameters(), lr=0.1), "set", density=0.4, seed=99)
    restored.load_state_dict(state)
    clone.load_state_dict(model.state_dict())
    assert restored.epoch == 1 and restored.density() == s.density()
    s.method.update()
    restored.method.update()
    for a, b in zip(s.topology.layers, restored.topology.layers):
        assert torch.equal(a.mask, b.mask), "the same generator state must grow the same connections"


def test_api_refuses_bad_arguments_in_one_line():
    model = nn.Sequential(nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for kwargs, message in [
        ({"method": "nope", "density": 0.1}, "unknown method"),
        ({"method": "set"}, "needs a density or an epsilon"),
        ({"method": "set", "density": 2.0}, "density must be in"),
        ({"method": "set", "density": 0.5, "zeta": "lots"}, "expects float"),
        ({"method": "set", "density": 0.5, "zeta": 1.5}, "must be ≤ 1.0"),
        ({"method": "set", "density": 0.5, "speed": 3}, "has no parameter 'speed'"),
        ({"method": "set", "density": 0.5, "update_until": 0.5}, "needs total_steps"),
        ({"method": "set", "density": 0.5, "init": "magic"}, "unknown init"),
    ]:
        with pytest.raises(UsageError, match=message) as info:
            evosparse.sparsify(model, optimizer, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="no linear or convolution weight"):
        evosparse.sparsify(nn.Sequential(nn.ReLU()), None, "set", density=0.5)


def test_a_refused_sparsify_leaves_the_model_untouched():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(UsageError):
        evosparse.sparsify(model, None, "set", density=0.2, update_until=0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_update_pending_announces_exactly_the_steps_that_update():
    model = nn.Sequential(nn.Linear(6, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    s = evosparse.sparsify(model, optimizer, "set", density=0.5, update_unit="step", update_interval=3, total_steps=12)
    announced, updated = [], []
    for _ in range(12):
        announced.append(s.update_pending())
        before = s.take_stats().updates
        model(torch.randn(2, 6)).sum().backward()
        optimizer.step()
        s.step()
        updated.append(s.take_stats().updates + before > 0)
    assert announced == updated == [False, False, True] * 3 + [False, False, False]


# -- lifecycle: sparsify once, remove or squash, then again (issue 14, item 4) ---------------------------


def mlp64(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def trained(method: str, backend: str, steps: int = 4, **kwargs):
    """A float64 MLP sparsified by ``method`` on ``backend`` after ``steps`` SGD steps and one epoch end."""
    model = mlp64()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = evosparse.sparsify(model, optimizer, method, density=0.3, backend=backend, seed=1, **kwargs)
    generator = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x = torch.randn(6, 10, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 3, (6,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        sparsifier.step()
    sparsifier.end_epoch()
    return model, optimizer, sparsifier


@pytest.mark.parametrize("backend", ["masked", "csr"])
@pytest.mark.parametrize("end", ["remove", "squash"])
def test_a_second_sparsify_is_refused_in_one_line_until_remove_or_squash(backend, end):
    model, optimizer, first = trained("set", backend)
    density = first.density()
    state = {name: value.clone() for name, value in model.state_dict().items() if torch.is_tensor(value)}
    for target in (model, model[0], nn.Sequential(model)):  # the model, one of its layers, a model holding it
        with pytest.raises(UsageError, match=r"already sparsified .*call its squash\(\) or remove\(\) first") as info:
            evosparse.sparsify(target, optimizer, "set", density=0.5, backend=backend)
        assert "\n" not in str(info.value)
    assert first.density() == density  # the refusal touched nothing
    after = model.state_dict()
    assert all(torch.equal(value, after[name]) for name, value in state.items())
    getattr(first, end)()
    if backend == "csr" and end == "remove":  # the csr layers stay in the model: nothing left to sparsify
        with pytest.raises(UsageError) as info:
            evosparse.sparsify(model, optimizer, "set", density=0.5, backend=backend)
        assert "already sparsified" not in str(info.value) and "\n" not in str(info.value)
        model = first.squash()
    second = evosparse.sparsify(model, optimizer, "set", density=0.5, backend=backend)
    assert second.density() == pytest.approx(0.5, abs=0.05)
    assert second.density() == second.topology.density()
    with pytest.raises(UsageError, match="already sparsified"):
        evosparse.sparsify(model, optimizer, "set", density=0.5, backend=backend)


def assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
        assert not module._backward_hooks and not module._backward_pre_hooks, name
    for name, parameter in model.named_parameters():
        assert not parameter._post_accumulate_grad_hooks and not parameter._backward_hooks, name


@pytest.mark.parametrize(
    ("method", "backend"), [("set", "masked"), ("set", "csr"), ("liset", "masked"), ("liset", "csr")]
)
def test_squash_returns_a_plain_model_with_the_zeros_baked_in_and_the_same_outputs(method, backend):
    model, optimizer, sparsifier = trained(method, backend)
    positions = {layer.name: layer.active_positions().clone() for layer in sparsifier.topology.layers}
    x = torch.randn(5, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    squashed = sparsifier.squash()
    assert squashed is model
    assert [type(m) for m in squashed] == [nn.Linear, nn.ReLU, nn.Linear]  # no CsrLinear left
    assert_no_hooks(squashed)
    for name, weight in ((n, p) for n, p in squashed.named_parameters() if n.endswith("weight")):
        inactive = ~torch.isin(torch.arange(weight.numel()), positions[name])
        assert weight.dtype == torch.float64 and inactive.any() and not weight.detach().reshape(-1)[inactive].any()
    with torch.no_grad():
        torch.testing.assert_close(squashed(x), expected, rtol=1e-12, atol=1e-12)
        squashed.train()  # no hook adds anything in training mode either (liset's skip layers)
        torch.testing.assert_close(squashed(x), expected, rtol=1e-12, atol=1e-12)
    # The optimizer trains the dense weights now, and nothing masks their gradient any more.
    trained_ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in squashed.parameters()} <= trained_ids
    optimizer.zero_grad()
    squashed(x).pow(2).sum().backward()
    assert all(
        bool((p.grad != 0).sum() > positions[name].numel())
        for name, p in squashed.named_parameters()
        if name in positions
    )
    optimizer.step()
    assert squashed[0].weight.count_nonzero() > positions["0.weight"].numel()


# -- state_dict: a format version, one meaning on every backend, every mismatch refused (item 4) ---------


def test_the_state_has_format_version_2_and_one_topology_form_on_both_backends():
    states = {backend: trained("set", backend)[2].state_dict() for backend in ("masked", "csr")}
    for state in states.values():
        assert state["format_version"] == 2 and "masks" not in state
        assert set(state) == {
            "format_version", "method", "hparams", "plan", "total_steps", "topology", "method_state", "global_step",
            "epoch", "generator",
        }  # fmt: skip
        assert state["plan"]["density"] == 0.3 and state["method"] == "set" and state["hparams"]["zeta"] == 0.3
        for entry in state["topology"].values():
            positions = entry["positions"]
            assert positions.dtype == torch.int64 and positions.device.type == "cpu" and positions.dim() == 1
    masked, csr = states["masked"]["topology"], states["csr"]["topology"]
    assert list(masked) == list(csr) == ["0.weight", "2.weight"]
    for name in masked:  # the same seed draws and evolves the same topology on both backends
        assert masked[name]["shape"] == csr[name]["shape"]
        assert torch.equal(masked[name]["positions"], csr[name]["positions"])


def test_a_csr_state_loads_into_a_masked_sparsifier_as_the_same_topology():
    _, _, csr = trained("set", "csr")
    state = csr.state_dict()
    model = mlp64(seed=7)
    masked = evosparse.sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), "set", density=0.3, seed=9)
    masked.load_state_dict(state)
    for layer, other in zip(masked.topology.layers, csr.topology.layers):
        assert torch.equal(layer.mask.reshape(-1).nonzero().squeeze(1), other.active_positions())
    masked.topology.check()
    assert masked.epoch == 1 and masked.global_step == 4


def refused_line(sparsifier, state) -> str:
    """The one-line UsageError with which ``sparsifier`` refuses ``state``; the sparsifier stays as it was."""
    before = sparsifier.state_dict()
    with pytest.raises(UsageError) as info:
        sparsifier.load_state_dict(state)
    message = str(info.value)
    assert "\n" not in message
    after = sparsifier.state_dict()
    assert after["global_step"] == before["global_step"] and after["epoch"] == before["epoch"]
    assert torch.equal(after["generator"], before["generator"])
    for name, entry in before["topology"].items():
        assert torch.equal(after["topology"][name]["positions"], entry["positions"])
    return message


def fresh(method="set", density=0.3, model=None, **params):
    model = model if model is not None else mlp64()
    return evosparse.sparsify(model, None, method, density=density, seed=4, **params)


def test_load_state_dict_refuses_another_method_hyper_parameters_or_budget():
    state = fresh(zeta=0.1).state_dict()
    assert "saved by method 'set', not 'static'" in refused_line(fresh("static"), state)
    assert "saved with zeta=0.1, this one has 0.5" in refused_line(fresh(zeta=0.5), state)
    dense_state = fresh(density=0.2, zeta=0.1).state_dict()
    assert "saved with density 0.2" in refused_line(fresh(density=0.5, zeta=0.1), dense_state)
    other_shapes = nn.Sequential(nn.Linear(10, 9), nn.ReLU(), nn.Linear(9, 3)).double()
    assert "saved with density 0.3 and budgets" in refused_line(fresh(model=other_shapes, zeta=0.1), state)
    fresh(zeta=0.1).load_state_dict(state)  # the same settings load


def test_load_state_dict_refuses_other_shapes_a_malformed_dict_or_another_format_version():
    sparsifier = fresh()
    good = sparsifier.state_dict()
    positions = good["topology"]["0.weight"]["positions"]

    def damaged(**changes):
        state = dict(good, topology={name: dict(entry) for name, entry in good["topology"].items()})
        for key, value in changes.items():
            if value is None:
                del state[key]
            else:
                state[key] = value
        return state

    def with_layer(entry):
        return damaged(topology={**good["topology"], "0.weight": entry})

    cases = [
        (damaged(format_version=1), "format version 1, this evosparse reads 2"),
        (damaged(format_version=None), "format version None"),
        ([("method", "set")], "a sparsifier state is a mapping, got list"),
        (damaged(topology=None), "lacks 'topology'"),
        (damaged(generator=None), "lacks 'generator'"),
        (damaged(hparams="zeta=0.3"), "hparams is not a mapping: 'zeta=0.3'"),
        (damaged(plan=[0.3]), "saved with density None"),
        (damaged(global_step="4"), "global_step is not a count"),
        (damaged(epoch=-1), "epoch is not a count"),
        (damaged(generator=torch.zeros(3)), "generator is not a generator state"),
        (damaged(topology=[positions]), "saved topology is not a mapping"),
        (with_layer({"shape": [9, 10], "positions": positions}), "0.weight has shape [9, 10], expected [8, 10]"),
        (with_layer({"shape": [8, 10], "positions": positions.float()}), "holds no int64 positions"),
        (with_layer({"shape": [8, 10], "positions": torch.tensor([3, 1])}), "not sorted, distinct and inside"),
        (with_layer({"shape": [8, 10], "positions": torch.tensor([0, 80])}), "not sorted, distinct and inside"),
        (with_layer(torch.ones(8, 10, dtype=torch.bool)), "holds no int64 positions"),
    ]
    for state, message in cases:
        assert message in refused_line(sparsifier, state), message
    sparsifier.load_state_dict(good)


def test_a_state_refused_for_its_method_state_leaves_topology_and_weights_as_they_were():
    source = evosparse.sparsify(mlp64(), None, "sensitivity", density=0.3, seed=9)  # another topology
    target = fresh("sensitivity")
    state = source.state_dict()
    state["method_state"] = {**state["method_state"], "grad_sums": []}  # another run's topology, bad method state
    positions = [layer.active_positions().clone() for layer in target.topology.layers]
    weights = [param.detach().clone() for param in target.model.parameters()]
    assert any(
        not torch.equal(mine, theirs["positions"]) for mine, theirs in zip(positions, state["topology"].values())
    )
    assert "does not belong to method sensitivity" in refused_line(target, state)
    assert all(torch.equal(layer.active_positions(), p) for layer, p in zip(target.topology.layers, positions))
    assert all(torch.equal(param, w) for param, w in zip(target.model.parameters(), weights))


# -- errors (item 5) -----------------------------------------------------------------------------------


def test_usage_errors_are_value_errors():
    assert issubclass(UsageError, ValueError)
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="unknown method"):
        evosparse.sparsify(model, None, "nope", density=0.1)


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (nn.Sequential(nn.Linear(4, 3)), {"density": "0.1"}, "density must be a number, got '0.1'"),
        (nn.Sequential(nn.Linear(4, 3)), {"epsilon": "1"}, "epsilon must be a number, got '1'"),
        (nn.Sequential(nn.Linear(4, 3)), {"density": float("nan")}, "density must be finite"),
        (nn.Sequential(nn.LazyLinear(3)), {"density": 0.5}, "uninitialised lazy module .LazyLinear.: run one forward"),
    ],
)
def test_a_string_density_or_an_uninitialised_lazy_layer_is_refused_in_one_line(model, kwargs, message):
    with pytest.raises(UsageError, match=message) as info:
        evosparse.sparsify(model, None, "set", **kwargs)
    assert "\n" not in str(info.value)


def test_a_lazy_layer_is_accepted_after_its_first_forward_pass():
    model = nn.Sequential(nn.LazyLinear(3))
    model(torch.zeros(2, 4))
    sparsifier = evosparse.sparsify(model, None, "set", density=0.5)
    assert sparsifier.topology.layers[0].shape == (3, 4) and sparsifier.topology.layers[0].active == 6


def test_defaults_paper_starts_every_parameter_not_given_from_the_papers_value():
    from evosparse.methods import METHODS, resolve_params

    for cls in METHODS.values():
        ours, papers = resolve_params(cls, {}), resolve_params(cls, {"defaults": "paper"})
        assert set(ours) == set(papers) == {p.name for p in cls.params}
        for param in cls.params:
            assert ours[param.name] == param.default
            assert papers[param.name] == (param.default if param.paper is None else param.paper)
    switcher = resolve_params(METHODS["switcher"], {"defaults": "paper", "switcher_lr": "0.05"})
    assert switcher["switcher_lr"] == 0.05 and switcher["switcher_interval"] == 1 and switcher["gate_init"] == "kaiming"
    with pytest.raises(UsageError, match="defaults must be one of evosparse, paper"):
        resolve_params(METHODS["set"], {"defaults": "papers"})


def test_defaults_paper_reaches_the_method_through_sparsify():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    sparsifier = evosparse.sparsify(model, None, "set", density=0.5, defaults="paper")
    assert sparsifier.hparams["grow_init"] == "normal"
    assert evosparse.sparsify(copy.deepcopy(model), None, "set", density=0.5).hparams["grow_init"] == "zero"


@pytest.mark.parametrize(
    "params, message",
    [
        ((evosparse.methods.Param("defaults", "x", "clash"),), "declares 'defaults'"),
        ((evosparse.methods.Param("zeta", 0.3, "bad paper value", paper="high"),), "paper value 'high' of zeta"),
        ((evosparse.methods.Param("zeta", 0.3, "out of bounds", maximum=1.0, paper=2.0),), "paper value 2.0 of zeta"),
    ],
)
def test_registering_a_method_with_a_bad_parameter_declaration_is_refused(params, message):
    from evosparse.methods import METHODS, Method, register

    registered = dict(METHODS)

    class Misdeclared(Method):
        name = "misdeclared"
        summary = "refused"

    Misdeclared.params = params
    with pytest.raises(UsageError, match=message):
        register(Misdeclared)
    assert METHODS == registered


def test_registering_a_taken_method_name_is_refused():
    from evosparse.methods import METHODS, Method, register

    registered = dict(METHODS)

    class Impostor(Method):
        name = "set"
        summary = "not SET"

    with pytest.raises(UsageError, match="a method called 'set' is already registered") as info:
        register(Impostor)
    assert "\n" not in str(info.value)
    assert METHODS == registered


INVARIANT_UNDER_O = """
import torch, evosparse
from torch import nn
from evosparse.errors import InvariantError
assert not __debug__, "not running under python -O"
model = nn.Sequential(nn.Linear(6, 4))
sparsifier = evosparse.sparsify(model, None, "set", density=0.5, backend="{backend}")
layer = sparsifier.topology.layers[0]
active = layer.active_positions()
try:
    layer.rewire(active[:0], active[:1])
except InvariantError as error:
    print("refused:", error)
layer.budget += 1
try:
    sparsifier.topology.check()
except InvariantError as error:
    print("refused:", error)
"""


@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_invariant_checks_survive_python_dash_o(backend):
    import subprocess
    import sys

    script = INVARIANT_UNDER_O.replace("{backend}", backend)
    done = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and "growing an active connection" in lines[0] and "budget" in lines[1], done.stdout


# -- from the independent review ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_a_step_scheduled_method_resumed_just_before_its_update_has_the_gradient_it_needs(backend):
    """The layers are armed to record the coming backward pass again after a load (RigL updates at step 5)."""
    from support import assert_resume_is_exact, batches

    def fresh(seed):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        params = {"update_interval": 5, "update_until": 1.0}
        return model, evosparse.sparsify(
            model, optimizer, "rigl", density=0.3, backend=backend, total_steps=12, seed=1, **params
        )

    sparsifier = assert_resume_is_exact(fresh, batches(12), cut=4)
    assert sparsifier.take_stats().updates == 2


@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_a_removed_sparsifier_refuses_to_go_on_and_ending_twice_changes_nothing(backend):
    model, _, sparsifier = trained("set", backend)
    squashed = sparsifier.squash()
    layers = [module for module in squashed.modules() if isinstance(module, nn.Linear)]
    assert sparsifier.squash() is squashed and sparsifier.remove() is None
    assert [module for module in squashed.modules() if isinstance(module, nn.Linear)] == layers
    for action, message in [
        (sparsifier.step, "cannot step"),
        (sparsifier.end_epoch, "cannot end an epoch"),
        (lambda: sparsifier.load_state_dict({}), "cannot load a state"),
    ]:
        with pytest.raises(UsageError, match=message):
            action()


def test_a_csr_refusal_for_an_untrained_weight_leaves_model_and_optimizer_untouched():
    model = mlp64()
    optimizer = torch.optim.SGD([model[0].weight, model[0].bias, model[2].bias], lr=0.1)
    with pytest.raises(UsageError, match="does not train 2.weight"):
        evosparse.sparsify(model, optimizer, "set", density=0.3, backend="csr")
    assert all(isinstance(module, nn.Linear) for module in (model[0], model[2]))
    assert optimizer.param_groups[0]["params"] == [model[0].weight, model[0].bias, model[2].bias]


def test_a_state_of_another_training_length_or_with_a_bad_generator_is_refused():
    state = fresh("rigl", total_steps=100).state_dict()
    assert "total_steps=100, this one has 1000" in refused_line(fresh("rigl", total_steps=1000), state)
    bad_generator = dict(state, generator=torch.zeros(7, dtype=torch.uint8))
    assert "generator is not a generator state" in refused_line(fresh("rigl", total_steps=100), bad_generator)


def test_a_method_state_that_breaks_inside_the_method_is_refused_in_one_line_and_nothing_changes():
    source = evosparse.sparsify(mlp64(), None, "path_weight", density=0.3, seed=9)
    target = fresh("path_weight")
    state = source.state_dict()
    state["method_state"] = {**state["method_state"], "values": {"lam": "x", "zeta": 0.3, "delta": 1.0}}
    assert "does not fit method path_weight" in refused_line(target, state)


def test_the_mask_follows_the_model_to_another_device():
    model = mlp64()
    sparsifier = evosparse.sparsify(model, None, "set", density=0.3)
    model.to("meta")
    for layer in sparsifier.topology.layers:
        assert layer.mask.device.type == "meta" and layer.weight.device.type == "meta"


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_squash_of_the_switcher_folds_its_gates_into_the_weights(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(model, optimizer, "switcher", density=0.5, mode=mode, total_steps=20)
    x = torch.randn(8, 12)
    for _epoch in range(3):  # a task epoch, a switcher epoch, a task epoch
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), torch.arange(8) % 4).backward()
            optimizer.step()
            sparsifier.step()
        sparsifier.end_epoch()
    model.eval()
    before = model(x)
    squashed = sparsifier.squash()
    torch.testing.assert_close(squashed(x), before)


def test_csr_refuses_an_optimizer_that_already_holds_state_and_leaves_the_model_as_it_was():
    model = mlp64()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(torch.randn(4, 10, dtype=torch.float64)), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    weights = [param.detach().clone() for param in model.parameters()]
    with pytest.raises(UsageError, match="before the first optimizer step"):
        evosparse.sparsify(model, optimizer, "set", density=0.3, backend="csr")
    assert all(torch.equal(param, weight) for param, weight in zip(model.parameters(), weights))
    assert isinstance(model[0], nn.Linear)


def test_a_pretrained_model_sparsified_with_keep_largest_keeps_its_weights_and_most_of_its_accuracy():
    from evosparse.data import load_dataset
    from evosparse.topology.masks import largest_mask

    data = load_dataset("digits")

    def accuracy(model):
        with torch.no_grad():
            return (model(data.x_test).argmax(1) == data.y_test).float().mean().item()

    torch.manual_seed(0)
    pretrained = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    digits_accuracies(pretrained, "dense", epochs=5, lr=0.05)
    dense_accuracy = accuracy(pretrained)
    kept = {}
    for init in ("keep_largest", "keep", "sparse_kaiming"):
        model = copy.deepcopy(pretrained)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        s = evosparse.sparsify(model, optimizer, "static", density=0.3, init=init)
        kept[init] = accuracy(model)
        if init == "keep_largest":
            for layer, original in zip(s.topology.layers, (pretrained[0].weight, pretrained[2].weight)):
                assert torch.equal(layer.mask, largest_mask(original, layer.active))  # brute-forced in test_masks
                assert torch.equal(layer.weight[layer.mask], original[layer.mask])  # values kept as they were
    assert dense_accuracy > 0.9 and kept["keep_largest"] > dense_accuracy - 0.1
    assert kept["keep_largest"] > kept["keep"] + 0.1 and kept["sparse_kaiming"] < 0.5
