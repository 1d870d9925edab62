"""Wide linear layers: rates scaled by base / fan-in, the readout scaled at initialisation, sane at any width."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evosparse import sparsify
from evosparse.engine.wide_layers import BASE_FAN_IN, apply_wide_layer_rules
from evosparse.models.mlp import MLP


def group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


def test_layers_above_the_base_fan_in_get_scaled_rates_and_the_readout_a_scaled_start():
    torch.manual_seed(0)
    model = MLP(20, [3000], 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sparsifier = sparsify(model, optimizer, "static", density=0.9, seed=0)
    hidden, readout = model.layers[0], model.layers[2]
    before = readout.weight.detach().clone()
    changed = apply_wide_layer_rules(model, optimizer, sparsifier)
    fan_in = sparsifier.topology.layers[1].active / 5
    assert [(w.name, w.fan_in) for w in changed] == [("layers.2", fan_in)]
    assert group_of(optimizer, readout.weight)["lr"] == pytest.approx(0.1 * BASE_FAN_IN / fan_in)
    assert group_of(optimizer, readout.weight)["momentum"] == 0.9
    assert group_of(optimizer, readout.weight)["weight_decay"] == 1e-4
    for unchanged in (hidden.weight, hidden.bias, readout.bias):
        assert group_of(optimizer, unchanged)["lr"] == 0.1
    torch.testing.assert_close(readout.weight, before * math.sqrt(BASE_FAN_IN / fan_in))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 4


def test_a_step_moves_the_logits_alike_at_any_width():
    """One SGD step changes the logits of its batch no more at width 16 000 than at 2000 (without the rule,
    over four times more: the readout's step grows with its fan-in)."""
    x, y = torch.randn(64, 100), torch.randint(0, 10, (64,))

    def logit_change(width: int, rules: bool) -> float:
        torch.manual_seed(1)
        model = MLP(100, [width], 10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        sparsifier = sparsify(model, optimizer, "static", epsilon=20, seed=1, backend="csr")
        if rules:
            apply_wide_layer_rules(model, optimizer, sparsifier)
        before = model(x).detach()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        return (model(x).detach() - before).abs().mean().item()

    narrow, wide = logit_change(2000, True), logit_change(16_000, True)
    assert wide < 1.5 * narrow
    assert logit_change(16_000, False) / logit_change(2000, False) > 4


def test_a_csr_mlp_100000_wide_starts_with_unit_scale_activations_and_a_loss_near_ln_10():
    """784-100000-100000-10 at ε 1 (about 2 connections per hidden unit, the output layer 10% dense): every
    activation's root mean square stays O(1) layer to layer and the first loss is near ln 10."""
    with torch.device("meta"):
        model = MLP(784, [100_000, 100_000], 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = sparsify(model, optimizer, "set", epsilon=1.0, seed=0, backend="csr")
    assert sparsifier.density() < 0.002
    apply_wide_layer_rules(model, optimizer, sparsifier)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    h = x
    with torch.no_grad():
        for module in model.layers:
            h = module(h)
            assert 0.3 < h.pow(2).mean().sqrt().item() < 3, module
    assert F.cross_entropy(h, y).item() < 3
    assert abs(F.cross_entropy(h, y).item() - math.log(10)) < 0.3


def test_an_mlp_below_the_base_is_left_alone():
    model = MLP(784, [300, 100], 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = sparsify(model, optimizer, "set", density=0.05, seed=0)
    weights = [p.detach().clone() for p in model.parameters()]
    assert apply_wide_layer_rules(model, optimizer, sparsifier) == []
    assert len(optimizer.param_groups) == 1
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


@pytest.mark.parametrize(
    "method, exclude, params",
    [("set", ["2.weight"], {}), ("dense", None, {}), ("gmp", None, {}), ("granet", None, {"initial_density": 1.0})],
)
def test_dense_training_keeps_plain_rates_at_any_width(method, exclude, params):
    """A layer left out of the sparse ones, and every layer of a run that starts dense, keeps the run's rate
    and initial values however wide (a wide dense baseline trains as in any PyTorch loop)."""
    model = nn.Sequential(nn.Linear(10, 4096), nn.ReLU(), nn.Linear(4096, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = sparsify(model, optimizer, method, density=0.5, exclude=exclude, seed=0, total_steps=1000, **params)
    weights = [p.detach().clone() for p in model.parameters()]
    assert apply_wide_layer_rules(model, optimizer, sparsifier) == []
    assert [g["lr"] for g in optimizer.param_groups] == [0.1]
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


@pytest.mark.parametrize("method", ["gmp", "granet"])
def test_a_sparse_start_scales_rates_by_the_fan_in_of_its_budget(method):
    """Pruning from a sparse start, a layer trains most of the run at its budget: the rule reads that."""
    model = nn.Sequential(nn.Linear(10, 4096), nn.ReLU(), nn.Linear(4096, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = sparsify(
        model, optimizer, method, density=0.5, distribution="uniform", seed=0, total_steps=1000, initial_density=0.9
    )
    readout = sparsifier.topology.layers[1]
    assert readout.active / 3 > 3000  # starts at 0.9 of 4096 inputs per output unit
    budget_fan_in = sparsifier.plan.budgets[1] / 3
    changed = apply_wide_layer_rules(model, optimizer, sparsifier)
    assert [(w.name, w.fan_in) for w in changed] == [("2", budget_fan_in)]
    assert group_of(optimizer, model[2].weight)["lr"] == pytest.approx(0.1 * BASE_FAN_IN / budget_fan_in)


def test_a_run_records_its_wide_layers_in_result_json(tmp_path):
    from evosparse.engine.config import build_config
    from evosparse.engine.loop import train

    options = {"epochs": 1, "hidden": "2048", "epsilon": 20.0, "out": str(tmp_path / "wide")}
    result = train(build_config(None, options), progress=False)
    [wide] = result["wide_layers"]
    assert wide["name"] == "layers.2" and wide["fan_in"] > BASE_FAN_IN
    assert wide["rate_factor"] == pytest.approx(BASE_FAN_IN / wide["fan_in"])
    narrow = train(build_config(None, {"epochs": 1, "hidden": "64", "out": str(tmp_path / "narrow")}), progress=False)
    assert narrow["wide_layers"] == []
