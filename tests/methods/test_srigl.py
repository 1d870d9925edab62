"""SRigL (Lasby et al. 2023): constant fan-in topology, per-neuron regrowth and neuron ablation, against
brute force on small layers, on the masked and csr backends, linear and convolution layers."""

import functools
import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import evosparse
from backend_pairs import BACKEND_NAMES, F64, dense_weight, layer_on, masked_linear, method_on
from conftest import small_mlp
from evosparse.cli import main
from evosparse.criteria.growth import first_per_unit, top_gradient_per_unit
from evosparse.criteria.schedules import cosine_update_fraction
from evosparse.errors import UsageError
from evosparse.topology.budget import fan_in_split
from evosparse.topology.masks import MaskedLayer, fan_in_mask
from support import assert_learns_digits_at_a_constant_density, assert_resume_is_exact, batches, small_conv, train_steps


def fan_ins(layer) -> list[int]:
    """Active inputs of each output unit of ``layer``."""
    return torch.bincount(layer.unit_of(layer.active_positions()), minlength=layer.fan_out_axis_size).tolist()


def assert_constant_fan_in(layer, budget: int) -> None:
    """Every unit holds k or k + 1 inputs (k + 1 on the lowest-indexed live units), ablated units none."""
    counts = fan_ins(layer)
    live = [u for u, c in enumerate(counts) if c]
    assert sum(counts) == budget == layer.active
    assert counts == [0 if c == 0 else fan_in_split(budget, len(live))[live.index(u)] for u, c in enumerate(counts)]


# -- the even split and the initial topology -----------------------------------------------------------


def test_fan_in_split_is_exact_and_gives_the_remainder_to_the_first_units():
    for budget in range(0, 40):
        for units in range(1, 9):
            counts = fan_in_split(budget, units).tolist()
            q, r = divmod(budget, units)
            assert counts == [q + 1] * r + [q] * (units - r) and sum(counts) == budget
    with pytest.raises(UsageError):
        fan_in_split(3, 0)


@pytest.mark.parametrize("shape, axis", [((6, 9), 0), ((9, 6), 1), ((5, 3, 2, 2), 0)])
def test_fan_in_masks_give_every_unit_its_share_random_or_largest_brute_force(shape, axis):
    units, fan_in = shape[axis], math.prod(shape) // shape[axis]
    generator = torch.Generator().manual_seed(3)
    weight = (torch.randint(-3, 4, shape, generator=generator) / 4).to(F64)  # many ties
    for count in (0, 1, units - 1, units, 2 * units + 3, units * fan_in - 2, units * fan_in):
        masks = [fan_in_mask(shape, count, generator, output_axis=axis)]
        masks.append(fan_in_mask(shape, count, generator, weight=weight, output_axis=axis))
        for mask in masks:
            per_unit = mask.movedim(axis, 0).reshape(units, -1).sum(1)
            assert per_unit.tolist() == fan_in_split(count, units).tolist()
        rows = weight.movedim(axis, 0).reshape(units, -1)
        for unit, row in enumerate(rows.tolist()):  # largest |w| first, ties to the lower position
            best = sorted(range(fan_in), key=lambda i: (-abs(row[i]), i))[: int(fan_in_split(count, units)[unit])]
            chosen = masks[1].movedim(axis, 0).reshape(units, -1)[unit]
            assert sorted(chosen.nonzero().squeeze(1).tolist()) == sorted(best)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("method, options", [("srigl", {"total_steps": 10}), ("set", {"per_neuron": True})])
def test_sparsify_starts_fan_in_keeping_methods_from_a_constant_fan_in_with_exact_budgets(backend, method, options):
    model = small_mlp((20, 16, 12, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(model, optimizer, method, density=0.3, backend=backend, **options)
    for layer, budget in zip(sparsifier.topology.layers, sparsifier.plan.budgets, strict=True):
        assert_constant_fan_in(layer, budget)
        assert all(fan_ins(layer))  # nothing ablated at the start


# -- the per-unit selections ---------------------------------------------------------------------------


def test_first_per_unit_and_per_unit_top_gradients_equal_brute_force_with_ties():
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        units, fan_in = (int(v) for v in torch.randint(1, 6, (2,), generator=generator))
        numel = units * fan_in
        positions = torch.randperm(numel, generator=generator)[: int(torch.randint(1, numel + 1, (1,)))]
        gradients = torch.randint(-2, 3, (positions.numel(),), generator=generator).to(F64)
        unit_of = functools.partial(torch.floor_divide, other=fan_in)
        limits = torch.randint(0, fan_in + 1, (units,), generator=generator)
        available = torch.bincount(unit_of(positions), minlength=units)
        need = torch.minimum(limits, available)
        listed = sorted(zip(positions.tolist(), gradients.abs().tolist()), key=lambda pair: (-pair[1], pair[0]))
        expected = [p for u in range(units) for p in [p for p, _ in listed if p // fan_in == u][: int(need[u])]]
        order = torch.tensor([p for p, _ in listed])
        chosen = order[first_per_unit(order // fan_in, need)]
        assert sorted(chosen.tolist()) == sorted(expected)
        for size in (1, 3, numel):  # any cut into blocks gives the same answer
            blocks = [(positions[i : i + size], gradients[i : i + size]) for i in range(0, positions.numel(), size)]
            grown = top_gradient_per_unit(blocks, unit_of, need)
            assert sorted(grown.tolist()) == sorted(expected)
        if bool((limits > available).any()):
            with pytest.raises(UsageError, match="only"):
                top_gradient_per_unit([(positions, gradients)], unit_of, limits)


# -- one update against brute force -----------------------------------------------------------------------


def reference_update(mask, weight, gradient, fan_in, fraction, gamma, ablate):
    """SRigL's update on flat lists (unit of position i: i // fan_in): (mask, weights) after it.

    Written from the rule (class docstring of ``SRigL``, after the authors' ``_rigl_step``): salient =
    the n_keep largest |w| of the layer ∪ the n_drop largest |gradient| of the layer; units below
    τ = max(1, ⌊γ·⌊n/units⌋⌋) ablated, τ lowered so that ⌈n/fan_in⌉ units stay; the budget split
    k or k + 1 over the live units; keep the n_keep largest |w| of live units, at most a unit's share;
    grow each live unit to its share by |gradient| among its positions not kept. Equal |w|: the smaller
    position is dropped; equal |gradient|: the smaller position grows.
    """
    n, units = len(mask), len(mask) // fan_in
    active = [i for i in range(n) if mask[i]]
    budget = len(active)
    n_drop = int(budget * fraction)
    n_keep = budget - n_drop
    by_strength = sorted(active, key=lambda i: (-abs(weight[i]), -i))
    by_gradient = sorted(range(n), key=lambda i: (-abs(gradient[i]), i))
    salient = set(by_strength[:n_keep]) | set(by_gradient[:n_drop])
    salience = [sum(1 for i in salient if i // fan_in == u) for u in range(units)]
    live = list(range(units))
    if ablate and gamma > 0:
        threshold = max(1, math.floor(gamma * (budget // units)))
        fewest = max(1, math.ceil(budget / fan_in))
        ranked = sorted(range(units), key=lambda u: (-salience[u], u))
        threshold = min(threshold, salience[ranked[fewest - 1]])
        live = [u for u in range(units) if salience[u] >= threshold]
    q, r = divmod(budget, len(live))
    share = {u: 0 for u in range(units)} | {u: q + (1 if index < r else 0) for index, u in enumerate(live)}
    kept, held = set(), [0] * units
    for i in [i for i in by_strength if i // fan_in in live][:n_keep]:
        if held[i // fan_in] < share[i // fan_in]:
            kept.add(i)
            held[i // fan_in] += 1
    grown = set()
    for u in live:
        free = sorted((i for i in range(u * fan_in, (u + 1) * fan_in) if i not in kept), key=by_gradient.index)
        grown |= set(free[: share[u] - held[u]])
    new_mask = [i in kept or i in grown for i in range(n)]
    new_weight = [(0.0 if i in grown and not mask[i] else weight[i]) if new_mask[i] else 0.0 for i in range(n)]
    return new_mask, new_weight, len(live)


def tied_layer(backend, seed, conv=False):
    """A small layer (linear on ``backend``, or a masked conv) with few distinct |w| and |gradient| values,
    exact in float64, and a recorded gradient: (layer, flat mask, weights, gradient, fan-in)."""
    generator = torch.Generator().manual_seed(seed)
    if conv:
        module = nn.Conv2d(2, int(torch.randint(2, 6, (1,), generator=generator)), 2, dtype=F64)
        mask = torch.rand(module.weight.shape, generator=generator) < 0.5
    else:
        n_out, n_in = (int(v) for v in torch.randint(3, 9, (2,), generator=generator))
        module, mask = masked_linear(n_in, n_out, float(torch.empty(1).uniform_(0.2, 0.8, generator=generator)), seed)
    with torch.no_grad():  # ±1/8 .. ±4/8: active weights tie but are never zero
        magnitudes = torch.randint(1, 5, mask.shape, generator=generator) / 8
        module.weight.copy_(torch.where(torch.rand(mask.shape, generator=generator) < 0.5, -1, 1) * magnitudes * mask)
    if conv:
        layer = MaskedLayer("conv", module, "weight", mask.clone(), int(mask.sum()))
        layer.install_hooks()
        x = torch.randint(-2, 3, (2, 2, 3, 3), generator=generator).to(F64)
    else:
        layer = layer_on(backend, module, mask)
        x = torch.randint(-2, 3, (3, module.in_features), generator=generator).to(F64)
    layer.record_gradients(True)
    output = layer.module(x)
    (output * torch.randint(-2, 3, output.shape, generator=generator).to(F64)).sum().backward()
    gradient = layer.gradient_at(torch.arange(layer.numel)).tolist()
    return layer, mask.reshape(-1).tolist(), module.weight.detach().reshape(-1).tolist(), gradient, layer.fan_in


@pytest.mark.parametrize("case", [*BACKEND_NAMES, "masked conv"])
def test_an_update_is_the_brute_force_rule_on_fixed_inputs(case):
    backend = case.split()[0]
    ablated = regrown = 0
    for seed in range(20):
        for fraction in (0.0, 0.1, 0.3, 0.5, 1.0):
            for gamma, ablate in ((0.3, True), (0.9, True), (0.9, False), (0.0, True)):
                layer, mask, weight, gradient, fan_in = tied_layer(backend, seed, conv=case.endswith("conv"))
                expected, weights, live = reference_update(mask, weight, gradient, fan_in, fraction, gamma, ablate)
                method = method_on("srigl", [layer], torch.Generator(), total_steps=100, gamma_sal=gamma)
                changed = method.swap(layer, fraction, ablate=ablate)
                where = (seed, fraction, gamma, ablate)
                assert layer.active_positions().tolist() == [i for i, m in enumerate(expected) if m], where
                assert dense_weight(layer).reshape(-1).tolist() == weights, where
                assert changed == sum(a != b for a, b in zip(mask, expected)), where
                assert_constant_fan_in(layer, sum(mask))
                ablated += live < layer.fan_out_axis_size
                regrown += any(m and e and w == 0 for m, e, w in zip(mask, expected, weights)) or changed < 2 * int(
                    sum(mask) * fraction
                )
    assert ablated > 0 and regrown > 0  # the inputs exercised ablation and regrowth of dropped connections


def test_a_neuron_with_few_salient_weights_is_ablated_and_its_budget_goes_to_the_others():
    """4 units of fan-in 8 with 4 inputs each; unit 2 has the weakest weights and no gradient: ablated."""
    linear = nn.Linear(8, 4, dtype=F64)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:, :4] = True
    with torch.no_grad():
        linear.weight.copy_(torch.full((4, 8), 1.0, dtype=F64) * mask)
        linear.weight[2, :4] = 0.01
    layer = layer_on("masked", linear, mask)
    layer.record_gradients(True)
    x = torch.ones(1, 8, dtype=F64)
    (linear(x) * torch.tensor([[1.0, 2.0, 0.0, 3.0]], dtype=F64)).sum().backward()
    method = method_on("srigl", [layer], torch.Generator(), total_steps=100)
    # f = 0.25: n_keep = 12 (every weight but unit 2's), n_drop = 4 (the gradient of unit 3's free inputs).
    # Salience 4, 4, 0, 8 against τ = max(1, ⌊0.3·4⌋) = 1: unit 2 goes, 16 connections over 3 units: 6, 5, 5.
    method.swap(layer, 0.25)
    assert fan_ins(layer) == [6, 5, 0, 5]
    assert layer.active == 16
    grown = set(layer.active_positions().tolist()) - set(mask.reshape(-1).nonzero().squeeze(1).tolist())
    assert grown == {4, 5, 12, 28}  # each unit's steepest free inputs, ties to the smaller position
    assert (dense_weight(layer)[2] == 0).all()


def test_at_least_the_units_that_can_hold_the_budget_survive():
    """Budget 8, fan-in 4: two units must stay, however few salient weights the second one has."""
    linear = nn.Linear(4, 4, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0], [0.1], [0.1], [0.1]], dtype=F64) * mask)
    layer = layer_on("masked", linear, mask)
    layer.record_gradients(True)
    x = torch.tensor([[1.0, 0.5, 0.5, 0.5]], dtype=F64)
    (linear(x) * torch.tensor([[3.0, 2.0, 0.0, 0.0]], dtype=F64)).sum().backward()
    # f = 0.5: keep unit 0's four weights; the four steepest gradients are 3, 2, 1.5, 1.5 at (0,0), (1,0),
    # (0,1), (0,2). Salience 4, 1, 0, 0 against τ = ⌊1.0·⌊8/4⌋⌋ = 2, lowered to 1 so that ⌈8/4⌉ = 2 units stay.
    method_on("srigl", [layer], torch.Generator(), total_steps=100, gamma_sal=1.0).swap(layer, 0.5)
    assert fan_ins(layer) == [4, 4, 0, 0]
    # Unit 1's dropped weights win their places back and keep their values; its new inputs start at 0.
    assert dense_weight(layer)[:2].tolist() == [[1.0] * 4, [0.1, 0.1, 0.0, 0.0]]


# -- training ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build, input_shape", [(small_mlp, (20,)), (small_conv, (1, 6, 6))])
def test_fan_ins_stay_constant_and_budgets_exact_after_every_update(build, input_shape):
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = evosparse.sparsify(
        model, optimizer, "srigl", density=0.3, distribution="erk", total_steps=40, update_interval=2,
        gamma_sal=0.9, alpha=0.5,
    )  # fmt: skip
    layers = sparsifier.topology.layers
    ablated = 0
    for batch in batches(40, input_shape):
        train_steps(model, sparsifier, [batch])
        if sparsifier.take_stats().updates:
            for layer, budget in zip(layers, sparsifier.plan.budgets, strict=True):
                assert_constant_fan_in(layer, budget)
                assert not layer.weight.detach()[~layer.mask].any()
            ablated += sum(c == 0 for layer in layers[:-1] for c in fan_ins(layer))
            assert all(fan_ins(layers[-1]))  # the output layer is never ablated
    assert ablated > 0


def test_each_update_swaps_at_most_the_cosine_decayed_fraction_until_t_end():
    model = small_mlp((30, 20, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sparsifier = evosparse.sparsify(
        model, optimizer, "srigl", density=0.3, total_steps=40, update_interval=5, update_until=0.75, gamma_sal=0.0
    )
    update_steps = []
    for step, batch in enumerate(batches(40, (30,)), 1):
        fraction = cosine_update_fraction(step, 0.3, 30)
        bound = sum(2 * math.floor(fraction * layer.active) for layer in sparsifier.topology.layers)
        train_steps(model, sparsifier, [batch])
        stats = sparsifier.take_stats()
        if stats.updates:
            update_steps.append(step)
            assert 0 < stats.connections_changed <= bound
    assert update_steps == [5, 10, 15, 20, 25]  # T_end = 0.75 · 40 = 30


def test_a_resumed_run_makes_the_same_updates():
    def fresh(seed):
        torch.manual_seed(seed)
        model = small_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sparsifier = evosparse.sparsify(
            model, optimizer, "srigl", density=0.3, total_steps=30, update_interval=4, seed=seed, gamma_sal=0.9
        )
        return model, sparsifier

    assert_resume_is_exact(fresh, batches(30), cut=14)


def test_srigl_refuses_what_it_cannot_schedule(mlp):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.05)
    with pytest.raises(UsageError, match="total_steps") as info:
        evosparse.sparsify(mlp, optimizer, "srigl", density=0.3)
    assert "\n" not in str(info.value)


def test_srigl_learns_digits(tmp_path):
    assert_learns_digits_at_a_constant_density(tmp_path, "srigl")


def test_the_cli_lists_srigl_and_trains_it_at_density_0_1(tmp_path, capsys):
    assert main(["methods"]) == 0
    assert "srigl" in capsys.readouterr().out
    out = tmp_path / "run"
    args = ["train", "--method", "srigl", "--density", "0.1", "--epochs", "3", "--hidden", "64,32"]
    assert main([*args, "--out", str(out), "--no-progress", "--param", "update_interval=20"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["final_test_acc"] > 0.6  # chance is 0.1
    assert result["density_final"] == pytest.approx(0.1, abs=1e-3)
    assert sum(e["connections_changed"] for e in result["epochs"]) > 0


def test_gradients_are_read_only_before_updates(mlp):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.05)
    sparsifier = evosparse.sparsify(mlp, optimizer, "srigl", density=0.3, total_steps=12, update_interval=3)
    assert sparsifier.method.gradient_recording() == "before_update"
    with pytest.raises(UsageError, match="no gradient"):
        sparsifier.method.update()
    x, y = batches(1)[0]
    F.cross_entropy(mlp(x), y).backward()  # step 1 is followed by no update: nothing recorded
    with pytest.raises(UsageError, match="no gradient"):
        sparsifier.topology.layers[0].gradient_at(torch.arange(3))
