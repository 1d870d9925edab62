"""Csr layers drawn sparse directly, for models on the meta device (no dense weight anywhere)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evosparse import sparsify
from evosparse.backends import csr_build, csr_model
from evosparse.backends.csr_build import build_csr_layer, direct_draw_applies, random_positions
from evosparse.backends.csr_layer import CsrLinear
from evosparse.engine import loop
from evosparse.engine.config import build_config
from evosparse.errors import UsageError
from evosparse.topology.budget import fan_in_split


@pytest.mark.parametrize("shape, count", [((7, 5), 7), ((7, 5), 35), ((7, 5), 3), ((1000, 10**9), 5000)])
def test_random_positions_are_distinct_sorted_and_cover_every_row(shape, count):
    positions = random_positions(shape, count, torch.Generator().manual_seed(0))
    assert positions.numel() == count
    assert (
        bool((positions[1:] > positions[:-1]).all())
        and 0 <= int(positions[0])
        and int(positions[-1]) < shape[0] * shape[1]
    )
    if count >= shape[0]:
        assert torch.unique(positions // shape[1]).numel() == shape[0]
    with pytest.raises(UsageError, match="cannot place"):
        random_positions(shape, shape[0] * shape[1] + 1, torch.Generator())


def test_direct_layer_has_sparse_kaiming_values_and_a_default_range_bias():
    with torch.device("meta"):
        linear = nn.Linear(400, 300)
    layer = build_csr_layer(linear, 12_000, "sparse_kaiming", torch.Generator().manual_seed(1))
    assert layer.nnz == 12_000 and layer.shape == (300, 400)
    assert layer.values.std().item() == pytest.approx((2 / 40) ** 0.5, rel=0.05)
    assert layer.bias is not None and layer.bias.abs().max().item() <= 1 / 20
    with pytest.raises(UsageError, match="meta device has none"):
        build_csr_layer(linear, 10, "keep", torch.Generator())


@pytest.mark.parametrize("shape, count", [((300, 400), 12_000), ((7, 5), 9), ((7, 5), 30), ((3, 100_000), 8)])
def test_a_constant_fan_in_direct_layer_splits_its_budget_evenly_over_units(shape, count):
    with torch.device("meta"):
        linear = nn.Linear(shape[1], shape[0])
    layer = build_csr_layer(linear, count, "sparse_kaiming", torch.Generator().manual_seed(2), constant_fan_in=True)
    assert layer.nnz == count and layer.shape == shape
    assert torch.equal(torch.diff(layer.structure.crow_indices), fan_in_split(count, shape[0]))


@pytest.mark.parametrize("method, options", [("srigl", {"total_steps": 10}), ("set", {"per_neuron": True})])
def test_a_meta_model_is_drawn_with_a_constant_fan_in_for_the_methods_that_keep_one(method, options):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    sparsifier = sparsify(model, None, method, density=0.3, seed=0, backend="csr", **options)
    for layer, budget in zip(sparsifier.topology.layers, sparsifier.plan.budgets, strict=True):
        units = layer.unit_of(layer.active_positions()).bincount(minlength=layer.fan_out_axis_size)
        assert torch.equal(units, fan_in_split(budget, layer.fan_out_axis_size))


def test_sparsifier_builds_a_meta_model_sparse_and_trains_it():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(20, 50_000), nn.ReLU(), nn.Linear(50_000, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = sparsify(model, optimizer, "set", epsilon=1.0, seed=0, backend="csr")
    assert all(not p.is_meta for p in model.parameters())
    assert isinstance(model[0], CsrLinear) and isinstance(model[2], CsrLinear)
    assert [layer.active for layer in sparsifier.topology.layers] == list(sparsifier.plan.budgets)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters()}
    x, y = torch.randn(8, 20), torch.randint(0, 5, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    sparsifier.step()
    sparsifier.end_epoch()  # a SET update on the csr structure
    sparsifier.topology.check()


def test_a_meta_model_needs_the_csr_backend():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(UsageError, match="only --backend csr can build them"):
        sparsify(model, None, "set", density=0.5)


def test_the_engine_builds_huge_csr_models_directly(tmp_path, monkeypatch):
    monkeypatch.setattr(csr_build, "DIRECT_BUILD_ENTRIES", 1000)
    settings = {
        "epochs": 2,
        "hidden": "48,24",
        "density": 0.2,
        "batch_size": 64,
        "backend": "csr",
        "out": str(tmp_path),
    }
    result = loop.train(build_config(None, settings), progress=False)
    assert result["backend"] == "csr"
    assert result["epochs"][1]["train_loss"] < result["epochs"][0]["train_loss"]
    assert result["final_test_acc"] > 0.5


@pytest.mark.parametrize("huge", [False, True])
def test_a_csr_model_is_never_built_dense_on_the_target_device(monkeypatch, huge):
    """The meta device stands for a GPU here: the masked model lands there, the csr model never does (it is
    made sparse on the CPU, or on the meta device when huge, and moved once sparse)."""
    if huge:
        monkeypatch.setattr(csr_build, "DIRECT_BUILD_ENTRIES", 10)
    target = torch.device("meta")

    def build():
        return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))

    masked = csr_build.build_for_backend("masked", build, target)
    assert all(p.device == target for p in masked.parameters())
    csr = csr_build.build_for_backend("csr", build, target)
    assert all(p.device == torch.device("meta" if huge else "cpu") for p in csr.parameters())
    if not huge:  # the same random draws as the masked model's, made on the CPU
        torch.manual_seed(4)
        reference = build()
        torch.manual_seed(4)
        again = csr_build.build_for_backend("csr", build, target)
        for one, other in zip(reference.parameters(), again.parameters(), strict=True):
            assert torch.equal(one, other)


def small_relu_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_a_direct_draw_needs_fresh_values_and_only_sparse_linear_parameters():
    with torch.device("meta"):
        mlp = small_relu_mlp()
        normed = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    assert direct_draw_applies(mlp, "sparse_kaiming")
    assert not direct_draw_applies(mlp, "keep")  # needs the model's own values
    assert not direct_draw_applies(mlp, "sparse_kaiming", exclude=["2.weight"])  # a dense linear layer
    assert not direct_draw_applies(normed, "sparse_kaiming")  # a norm's parameters


def test_above_the_conversion_size_a_csr_model_is_drawn_directly_when_it_can_be(monkeypatch):
    monkeypatch.setattr(csr_build, "CONVERSION_ENTRIES", 40)  # the MLP has 45 weight entries
    cpu = torch.device("cpu")
    drawable = csr_build.build_for_backend("csr", small_relu_mlp, cpu, direct=lambda s: True)
    assert all(p.is_meta for p in drawable.parameters())
    refused = csr_build.build_for_backend("csr", small_relu_mlp, cpu, direct=lambda s: False)
    assert not any(p.is_meta for p in refused.parameters())
    monkeypatch.setattr(csr_build, "CONVERSION_ENTRIES", 45)
    at_the_limit = csr_build.build_for_backend("csr", small_relu_mlp, cpu, direct=lambda s: True)
    assert not any(p.is_meta for p in at_the_limit.parameters())


@pytest.mark.parametrize(
    "settings, direct",
    [({}, True), ({"init": "keep"}, False), ({"method": "srigl"}, True)],
)
def test_the_engine_draws_csr_models_directly_where_it_can_and_converts_otherwise(
    tmp_path, monkeypatch, settings, direct
):
    """Above the conversion size: drawn directly from scratch (a random or a constant fan-in start);
    converted (as the masked backend draws) for kept values."""
    monkeypatch.setattr(csr_build, "CONVERSION_ENTRIES", 1000)
    drawn: list[int] = []
    real = csr_model.build_csr_layer
    monkeypatch.setattr(
        csr_model, "build_csr_layer", lambda linear, count, *rest: drawn.append(count) or real(linear, count, *rest)
    )
    config = {"epochs": 1, "hidden": "48,24", "density": 0.2, "batch_size": 64, "backend": "csr", "out": str(tmp_path)}
    result = loop.train(build_config(None, config | settings), progress=False)
    assert bool(drawn) == direct
    assert result["backend"] == "csr" and result["epochs"][0]["train_loss"] < 10
