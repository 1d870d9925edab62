"""--backend condensed: the padded layout, the layer against dense and masked twins, per-neuron SET, the
Sparsifier and the training engine (parity with masked, refusals, resume, squash)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backend_pairs import F64, dense_weight, layer_on, method_on
from evosparse import sparsify
from evosparse.analysis.snapshots import list_snapshots, load_snapshot
from evosparse.backends.condensed_layer import CondensedLinear, check, padded_layout
from evosparse.backends.condensed_model import CondensedLayer
from evosparse.engine import loop
from evosparse.engine.config import build_config
from evosparse.errors import InvariantError, UsageError
from evosparse.methods import get_method
from evosparse.topology.masks import MaskedLayer, fan_in_mask
from support import killed_then_resumed


def uneven_mask(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    """A mask whose rows hold every count from 0 to in_features (an empty row, a full row, everything between)."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, in_features + 1, (out_features,), generator=generator)
    counts[0], counts[-1] = 0, in_features
    scores = torch.rand(out_features, in_features, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < counts.unsqueeze(1)


def fan_in_linear(in_features: int, out_features: int, count: int, seed: int) -> tuple[nn.Linear, torch.Tensor]:
    """A float64 ``nn.Linear`` with ``count`` connections spread k / k + 1 per unit (SRigL's start), zeros elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features, dtype=F64)
    mask = fan_in_mask((out_features, in_features), count, generator)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=generator, dtype=F64) * mask)
    return linear, mask


# -- the padded layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_padded_layout_pads_each_row_with_its_smallest_unused_inputs(seed):
    mask = uneven_mask(9, 7, seed)
    positions = mask.reshape(-1).nonzero().squeeze(1)
    layout = padded_layout(positions, (9, 7))
    k_max = int(mask.sum(dim=1).max())
    assert layout.valid.shape == layout.structure.indices.shape == (9, k_max)
    for row in range(9):
        active = mask[row].nonzero().squeeze(1).tolist()
        unused = [col for col in range(7) if col not in active][: k_max - len(active)]
        assert layout.structure.indices[row].tolist() == sorted(active + unused)
        assert [layout.structure.indices[row, j].item() in active for j in range(k_max)] == layout.valid[row].tolist()
    assert torch.equal(layout.structure.positions()[layout.slots], positions)  # slots follow the positions' order


def test_an_empty_layer_has_one_padding_slot_per_row():
    layout = padded_layout(torch.zeros(0, dtype=torch.int64), (3, 4))
    assert layout.valid.shape == (3, 1) and not layout.valid.any()


# -- the module against a dense layer -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_forward_and_gradients_equal_the_dense_layer_and_padding_gets_none(seed):
    mask = uneven_mask(8, 6, seed)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(8, 6, generator=generator, dtype=F64) * mask
    bias = torch.randn(8, generator=generator, dtype=F64)
    layer = CondensedLinear.from_dense(weight, mask, bias)
    check(layer)
    assert layer.nnz == int(mask.sum()) and torch.equal(layer.to_dense_weight(), weight)
    x = torch.randn(2, 5, 6, generator=generator, dtype=F64, requires_grad=True)
    dense_w = weight.clone().requires_grad_()
    dense_x = x.detach().clone().requires_grad_()
    torch.tanh(layer(x)).sum().backward()
    torch.tanh(F.linear(dense_x, dense_w, bias)).sum().backward()
    torch.testing.assert_close(x.grad, dense_x.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(layer.active_gradient(layer.values.grad), dense_w.grad.reshape(-1)[layer.positions()])
    assert not layer.values.grad[~layer.valid].any()  # exactly zero at the padding


def test_state_dict_round_trip_restores_a_layer_of_another_k_max():
    first = CondensedLinear.from_dense(torch.ones(4, 5, dtype=F64), uneven_mask(4, 5, 1))
    second = CondensedLinear.from_dense(torch.ones(4, 5, dtype=F64), fan_in_mask((4, 5), 4, torch.Generator()))
    values = second.values
    assert first.k_max != second.k_max
    second.load_state_dict(first.state_dict())
    assert second.values is values and second.k_max == first.k_max
    assert torch.equal(second.positions(), first.positions()) and torch.equal(second.valid, first.valid)
    check(second)
    with pytest.raises(UsageError, match="lacks its indices"):
        second.set_extra_state({"indices": first.structure.indices})


# -- rewiring -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_rewire_moves_values_and_optimizer_state_like_the_masked_backend(optimizer):
    """Random rewirings that change row counts and k_max: same weights and optimizer state as a masked twin."""
    mask = uneven_mask(7, 9, 3)
    generator = torch.Generator().manual_seed(3)
    linear = nn.Linear(9, 7, dtype=F64)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(7, 9, generator=generator, dtype=F64) * mask)

    def make(parameters):
        if optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=0.1, momentum=0.9, weight_decay=0.01)
        return torch.optim.Adam(parameters, lr=0.01)

    masked, condensed = layer_on("masked", linear, mask, make), layer_on("condensed", linear, mask, make)
    for round_ in range(4):
        x = torch.randn(6, 9, generator=generator, dtype=F64)
        for layer in (masked, condensed):
            layer.optimizer.zero_grad()
            torch.tanh(layer.module(x)).pow(2).sum().backward()
            layer.optimizer.step()
            layer.apply_mask()
        torch.testing.assert_close(dense_weight(condensed), masked.weight.detach(), rtol=1e-12, atol=1e-14)
        active, flat = masked.active_positions(), masked.mask.reshape(-1)
        inactive = (~flat).nonzero().squeeze(1)
        prune = active[torch.randperm(active.numel(), generator=generator)[: active.numel() // 3]]
        grow = inactive[torch.randperm(inactive.numel(), generator=generator)[: inactive.numel() // 2 + round_]]
        values = torch.randn(grow.numel(), generator=generator, dtype=F64)
        assert masked.rewire(prune, grow, values) == condensed.rewire(prune, grow, values)
        condensed.check(fixed_budget=False)
        assert torch.equal(condensed.active_positions(), masked.active_positions())
        module = condensed.module
        assert isinstance(module, CondensedLinear)
        for name, tensor in masked.optimizer.state[masked.weight].items():
            if tensor.shape == masked.weight.shape:
                mine = condensed.optimizer.state[module.values][name]
                assert mine.shape == module.values.shape and not mine[~module.valid].any()
                torch.testing.assert_close(module.active_gradient(mine), tensor.reshape(-1)[masked.active_positions()])
    assert condensed.module.values.grad is not None and not condensed.module.values.grad[~condensed.module.valid].any()


def test_rewire_can_empty_a_row_and_fill_another_changing_k_max():
    linear, mask = fan_in_linear(6, 4, 12, seed=1)
    layer = layer_on("condensed", linear, mask)
    module = layer.module
    assert isinstance(module, CondensedLinear) and module.k_max == 3 and not module._padded
    row0 = layer.active_positions()[:3]
    row1_free = torch.tensor([6 + c for c in range(6) if not mask[1, c]])
    layer.rewire(row0, row1_free, 1.0)
    assert module.k_max == 6 and module.nnz == 12
    assert layer.unit_of(layer.active_positions()).bincount(minlength=4).tolist() == [0, 6, 3, 3]
    layer.check()
    y = module(torch.ones(1, 6, dtype=F64))
    torch.testing.assert_close(y, F.linear(torch.ones(1, 6, dtype=F64), dense_weight(layer), module.bias))


# -- per-neuron SET -----------------------------------------------------------------------------------


def brute_force_per_neuron_set(weight, mask, zeta, generator) -> tuple[list[int], list[int]]:
    """Per-neuron SET by enumeration: each row's ⌊ζ·k⌋ weakest (ties: the smaller column), capped by its free
    inputs; as many regrown at the row's free inputs of smallest uniform key (one key per input of every row
    that grows, drawn in one block, rows in order)."""
    rows, columns = mask.shape
    prune, counts = [], []
    for row in range(rows):
        active = [c for c in range(columns) if mask[row, c]]
        count = min(math.floor(zeta * len(active)), columns - len(active))
        ranked = sorted(active, key=lambda c: (abs(float(weight[row, c])), c))
        prune += [row * columns + c for c in ranked[:count]]
        counts.append(count)
    drawing = [row for row in range(rows) if counts[row]]
    keys = torch.rand(len(drawing), columns, generator=generator)
    grow = []
    for index, row in enumerate(drawing):
        free = sorted((float(keys[index, c]), c) for c in range(columns) if not mask[row, c])
        grow += [row * columns + c for _, c in free[: counts[row]]]
    return sorted(prune), sorted(grow)


@pytest.mark.parametrize("backend", ["masked", "csr", "condensed"])
@pytest.mark.parametrize("zeta", [0.3, 0.9])  # the second is capped by the free inputs of the fullest rows
def test_per_neuron_set_is_the_brute_force_and_keeps_every_fan_in(backend, zeta):
    mask = uneven_mask(10, 8, 5)
    generator = torch.Generator().manual_seed(5)
    linear = nn.Linear(8, 10, dtype=F64)
    with torch.no_grad():  # coarse values: equal magnitudes abound
        linear.weight.copy_(torch.round(torch.randn(10, 8, generator=generator, dtype=F64) * 2) / 2 * mask)
    layer = layer_on(backend, linear, mask)
    prune, grow = brute_force_per_neuron_set(linear.weight.detach(), mask, zeta, torch.Generator().manual_seed(8))
    assert prune and grow
    method = method_on("set", [layer], torch.Generator().manual_seed(8), zeta=zeta, per_neuron=True)
    before = layer.active_positions()
    counts = layer.unit_of(before).bincount(minlength=10)
    assert method.update() == len(prune) + len(grow)
    expected = torch.tensor(sorted(set(before.tolist()) - set(prune) | set(grow)))
    assert torch.equal(layer.active_positions(), expected)
    assert torch.equal(layer.unit_of(layer.active_positions()).bincount(minlength=10), counts)
    layer.check()


def test_per_unit_draws_number_the_inputs_of_a_weight_stored_in_by_out():
    layer = MaskedLayer("w", nn.Linear(1, 1), "weight", torch.zeros(6, 4, dtype=torch.bool), 0, output_axis=1)
    positions = torch.arange(24)
    units, inputs = layer.unit_input(positions)
    assert torch.equal(units, positions % 4) and torch.equal(inputs, positions // 4)
    assert torch.equal(layer.position_of(units, inputs), positions)
    drawn = layer.sample_inactive_per_unit(torch.tensor([0, 2, 6, 1]), torch.Generator().manual_seed(0))
    assert layer.unit_of(drawn).bincount(minlength=4).tolist() == [0, 2, 6, 1]
    with pytest.raises(UsageError, match="cannot draw 7 absent entries from row 2") as info:
        layer.sample_inactive_per_unit(torch.tensor([0, 0, 7, 0]), torch.Generator())
    assert "\n" not in str(info.value)


# -- the Sparsifier -----------------------------------------------------------------------------------


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def test_sparsifier_installs_condensed_layers_with_a_constant_fan_in_and_squashes_them_back():
    torch.manual_seed(0)
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sparsifier = sparsify(model, optimizer, "static", density=0.3, seed=2, backend="condensed")
    assert all(isinstance(model[i], CondensedLinear) for i in (0, 2))
    for layer in sparsifier.topology.layers:
        assert isinstance(layer, CondensedLayer)
        counts = layer.unit_of(layer.active_positions()).bincount(minlength=layer.fan_out_axis_size)
        assert int(counts.max() - counts.min()) <= 1 and layer.module.k_max == int(counts.max())
    x = torch.randn(16, 20)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
        sparsifier.step()
    sparsifier.topology.check()
    before = model(x).detach()
    squashed = sparsifier.squash()
    assert isinstance(squashed[0], nn.Linear) and isinstance(squashed[2], nn.Linear)
    torch.testing.assert_close(squashed(x), before, rtol=1e-5, atol=1e-6)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in squashed.parameters()}


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("rigl", {}, "method rigl changes fan-ins per layer, not per neuron; --backend condensed needs static, srigl"),
        ("set", {}, "method set changes fan-ins per layer"),
        ("switcher", {}, "method switcher has no condensed implementation"),
        ("dense", {}, "needs a sparse method"),
    ],
)
def test_condensed_refusals_are_one_line_and_leave_the_model_untouched(method, params, message):
    model = mlp()
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    with pytest.raises(UsageError, match=message) as info:
        sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), method, density=0.5, backend="condensed", **params)
    assert "\n" not in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cli_config_refuses_condensed_for_a_method_moving_connections_between_neurons():
    with pytest.raises(UsageError, match="method set changes fan-ins per layer") as info:
        build_config(None, {"method": "set", "backend": "condensed"})
    assert "\n" not in str(info.value)
    build_config(None, {"method": "set", "backend": "condensed"}, ["per_neuron=true"])
    with pytest.raises(UsageError, match="bf16 with --backend condensed"):
        loop.train(build_config(None, {"method": "static", "backend": "condensed", "precision": "bf16"}))


def test_a_condensed_layer_refuses_a_violated_rewiring_precondition():
    linear, mask = fan_in_linear(5, 4, 8, seed=2)
    layer = layer_on("condensed", linear, mask)
    with pytest.raises(InvariantError, match="growing an active"):
        layer.rewire(layer.active_positions()[:0], layer.active_positions()[:1])


# -- the training engine ------------------------------------------------------------------------------


def run(out: Path, backend: str, method: str, pairs: tuple[str, ...] = (), **overrides) -> dict:
    """A short digits run on ``backend`` (small MLP, 20% density, batch 64, 3 epochs)."""
    settings = {
        "method": method, "epochs": 3, "hidden": "48,24", "density": 0.2, "batch_size": 64, "backend": backend,
        "out": str(out), **overrides,
    }  # fmt: skip
    return loop.train(build_config(None, settings, list(pairs)), progress=False)


def snapshots(out: Path) -> list[dict[str, torch.Tensor]]:
    return [load_snapshot(path) for _, path in list_snapshots(out)]


@pytest.mark.parametrize(
    "method, pairs, optimizer",
    [
        ("static", (), "sgd"),
        ("srigl", ("gamma_sal=0.9", "update_interval=5"), "sgd"),
        ("srigl", ("gamma_sal=0.9", "update_interval=5"), "adam"),
        ("set", ("per_neuron=true", "zeta=0.3"), "adam"),
    ],
)
def test_masked_and_condensed_backends_train_identically(tmp_path, monkeypatch, method, pairs, optimizer):
    """Same losses, change counts and topologies. srigl and per-neuron SET start from a constant fan-in on
    every backend; static is told to, as the condensed backend starts it so."""
    settings = {"optimizer": optimizer, "lr": 0.01 if optimizer == "adam" else 0.1}
    condensed = run(tmp_path / "condensed", "condensed", method, pairs, **settings)
    if method == "static":
        monkeypatch.setattr(get_method(method), "starts_with_constant_fan_in", classmethod(lambda cls, hparams: True))
    masked = run(tmp_path / "masked", "masked", method, pairs, **settings)
    for a, b in zip(masked["epochs"], condensed["epochs"], strict=True):
        for key in ("train_loss", "test_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6)
        assert b["connections_changed"] == a["connections_changed"]
    first, second = snapshots(tmp_path / "masked"), snapshots(tmp_path / "condensed")
    assert len(first) == len(second) == 3
    for epoch_masked, epoch_condensed in zip(first, second):
        assert epoch_masked.keys() == epoch_condensed.keys()
        assert all(torch.equal(epoch_masked[name], epoch_condensed[name]) for name in epoch_masked)
    if method != "static":
        assert sum(record["connections_changed"] for record in condensed["epochs"]) > 0


def test_srigl_ablation_empties_rows_of_a_condensed_layer(tmp_path):
    """γ_sal high enough to ablate: some neurons lose every input, the others grow to hold the budget."""
    pairs = ("gamma_sal=1.0", "update_interval=2", "alpha=0.5")
    run(tmp_path, "condensed", "srigl", pairs, epochs=1)
    masks = snapshots(tmp_path)[-1]
    counts = next(iter(masks.values())).sum(dim=1)  # the first layer: not the output, so it may ablate
    assert int(counts.min()) == 0 and int(counts[counts > 0].max() - counts[counts > 0].min()) <= 1


def test_condensed_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    pairs = ["gamma_sal=0.9", "update_interval=5"]
    settings = {
        "method": "srigl", "epochs": 3, "hidden": "48,24", "density": 0.2, "batch_size": 64,
        "backend": "condensed", "optimizer": "adam", "lr": 0.01,
    }  # fmt: skip
    reference = loop.train(build_config(None, {**settings, "out": str(tmp_path / "full")}, pairs), progress=False)
    cut = {**settings, "out": str(tmp_path / "cut")}
    resumed = killed_then_resumed(lambda: build_config(None, cut, pairs), monkeypatch, kill_after_epoch=1)
    assert [r["train_loss"] for r in resumed["epochs"]] == [r["train_loss"] for r in reference["epochs"]]
    assert [r["test_acc"] for r in resumed["epochs"]] == [r["test_acc"] for r in reference["epochs"]]
    for a, b in zip(snapshots(tmp_path / "full"), snapshots(tmp_path / "cut")):
        assert all(torch.equal(a[name], b[name]) for name in a)


# -- CUDA ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_condensed_layer_on_cuda_computes_and_rewires_like_on_the_cpu():
    mask = uneven_mask(12, 10, 7)
    weight = torch.randn(12, 10, generator=torch.Generator().manual_seed(7), dtype=F64) * mask
    cpu = CondensedLayer("w", CondensedLinear.from_dense(weight, mask, torch.zeros(12, dtype=F64)), int(mask.sum()))
    gpu = CondensedLayer("w", CondensedLinear.from_dense(weight, mask, torch.zeros(12, dtype=F64)).cuda(), cpu.budget)
    x = torch.randn(5, 10, dtype=F64)
    for layer in (cpu, gpu):
        layer.record_gradients(True)
        layer.module(x.to(layer.device)).pow(2).sum().backward()
    torch.testing.assert_close(gpu.gradient_at(torch.arange(120)).cpu(), cpu.gradient_at(torch.arange(120)))
    prune, grow = cpu.active_positions()[::3], (~mask).reshape(-1).nonzero().squeeze(1)[::2]
    for layer in (cpu, gpu):
        layer.rewire(prune, grow, 0.5)
        layer.check(fixed_budget=False)
    assert gpu.active_positions().device.type == "cuda"
    assert torch.equal(gpu.active_positions().cpu(), cpu.active_positions())
    torch.testing.assert_close(gpu.module(x.cuda()).cpu(), cpu.module(x))
