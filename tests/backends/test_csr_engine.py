"""--backend csr through the Sparsifier and the training engine: parity with masked, refusals, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from evosparse import sparsify
from evosparse.analysis.snapshots import list_snapshots, load_snapshot
from evosparse.backends import csr_topology
from evosparse.backends.csr_layer import CsrLinear
from evosparse.engine import loop
from evosparse.engine.config import build_config
from evosparse.errors import UsageError
from support import killed_then_resumed

LOSSES = ("train_loss", "test_loss")


def run(out: Path, backend: str, method: str, epochs: int = 4, pairs: tuple[str, ...] = (), **overrides) -> dict:
    """A short digits run on ``backend`` (small MLP, 20% density, batch 64)."""
    settings = {
        "method": method,
        "epochs": epochs,
        "hidden": "48,24",
        "density": 0.2,
        "batch_size": 64,
        "backend": backend,
        "out": str(out),
        **overrides,
    }
    return loop.train(build_config(None, settings, list(pairs)), progress=False)


def snapshots(out: Path) -> list[dict[str, torch.Tensor]]:
    return [load_snapshot(path) for _, path in list_snapshots(out)]


def assert_same_run(masked: dict, csr: dict, masked_dir: Path, csr_dir: Path) -> None:
    """Same per-epoch losses (float tolerance), accuracy, change counts and topologies on both backends."""
    assert csr["backend"] == "csr" and masked["backend"] == "masked"
    for a, b in zip(masked["epochs"], csr["epochs"], strict=True):
        for key in LOSSES:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6)
        assert b["connections_changed"] == a["connections_changed"]
        assert b["density"] == a["density"]
    first, second = snapshots(masked_dir), snapshots(csr_dir)
    assert len(first) == len(second) == len(masked["epochs"])
    for epoch_masked, epoch_csr in zip(first, second):
        assert epoch_masked.keys() == epoch_csr.keys()
        for name in epoch_masked:
            assert torch.equal(epoch_masked[name], epoch_csr[name]), name


@pytest.mark.parametrize("method, pairs", [("set", ("zeta=0.3",)), ("static", ())])
def test_masked_and_csr_backends_train_identically(tmp_path, method, pairs):
    masked = run(tmp_path / "masked", "masked", method, pairs=pairs)
    csr = run(tmp_path / "csr", "csr", method, pairs=pairs)
    assert_same_run(masked, csr, tmp_path / "masked", tmp_path / "csr")
    if method == "set":
        assert sum(record["connections_changed"] for record in csr["epochs"]) > 0
        assert not torch.equal(*(list(s.values())[0] for s in snapshots(tmp_path / "csr")[:2]))


def test_csr_run_reports_its_layers_and_counts(tmp_path):
    result = run(tmp_path, "csr", "set", epochs=1)
    layers = result["layers"]
    assert [layer["shape"] for layer in layers] == [[48, 64], [24, 48], [10, 24]]
    assert result["params_dense"] == 48 * 64 + 24 * 48 + 10 * 24
    assert result["params_active"] == sum(layer["active"] for layer in layers)
    assert result["density_final"] == pytest.approx(result["params_active"] / result["params_dense"])


def test_csr_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    reference = run(tmp_path / "full", "csr", "set", optimizer="adam", lr=0.01)
    settings = {
        "method": "set", "epochs": 4, "hidden": "48,24", "density": 0.2, "batch_size": 64, "backend": "csr",
        "out": str(tmp_path / "cut"), "optimizer": "adam", "lr": 0.01,
    }  # fmt: skip
    resumed = killed_then_resumed(lambda: build_config(None, settings), monkeypatch, kill_after_epoch=2)
    assert [r["train_loss"] for r in resumed["epochs"]] == [r["train_loss"] for r in reference["epochs"]]
    assert [r["test_acc"] for r in resumed["epochs"]] == [r["test_acc"] for r in reference["epochs"]]
    for a, b in zip(snapshots(tmp_path / "full"), snapshots(tmp_path / "cut")):
        assert all(torch.equal(a[name], b[name]) for name in a)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def test_sparsifier_swaps_linear_layers_and_optimizer_parameters():
    model = mlp()
    biases = [model[0].bias, model[2].bias]
    extra = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([{"params": list(model.parameters())}, {"params": [extra], "lr": 0.5}], lr=0.1)
    masked_model = mlp()
    masked_model.load_state_dict(model.state_dict())
    masked = sparsify(masked_model, torch.optim.SGD(masked_model.parameters(), lr=0.1), "set", density=0.3, seed=4)
    sparsifier = sparsify(model, optimizer, "set", density=0.3, seed=4, backend="csr")
    layers = [model[0], model[2]]
    assert all(isinstance(layer, CsrLinear) for layer in layers)
    assert [layer.bias for layer in layers] == biases  # the very same Parameters
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters()} | {id(extra)}
    assert optimizer.param_groups[1]["lr"] == 0.5
    for csr_layer, masked_layer in zip(layers, masked.topology.layers):
        assert torch.equal(csr_layer.to_dense_weight(), masked_layer.weight.detach())
        assert torch.equal(csr_topology.dense_mask_for_tests(csr_layer), masked_layer.mask)
    assert sparsifier.density() == masked.density()
    assert [layer.active for layer in sparsifier.topology.layers] == [layer.active for layer in masked.topology.layers]
    assert [layer.module for layer in sparsifier.topology.layers] == layers


@pytest.mark.parametrize(
    "model, method, message",
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), "set", "nn.Linear weights only"),
        (mlp(), "switcher", "method switcher has no csr implementation"),
        (mlp(), "dense", "needs a sparse method"),
        (mlp(), "set", None),
    ],
)
def test_csr_refusals_are_one_line_and_leave_the_model_untouched(model, method, message):
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    backend = "csr" if message else "tensor"
    with pytest.raises(UsageError, match=message or "unknown backend") as info:
        sparsify(model, optimizer, method, density=0.5, backend=backend)
    assert "\n" not in str(info.value)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "method, message", [("switcher", "has no csr implementation"), ("gmp", "starts dense"), ("prune", "starts dense")]
)
def test_cli_config_refuses_csr_for_methods_without_it(method, message):
    with pytest.raises(UsageError, match=f"method {method} {message}") as info:
        build_config(None, {"method": method, "backend": "csr"})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "method, pairs", [("rigl", ("candidates=0",)), ("rigl", ("candidates=40",)), ("srigl", ("gamma_sal=0.9",))]
)
def test_masked_and_csr_rigl_and_srigl_train_identically(tmp_path, method, pairs):
    pairs = ("update_interval=5", "update_until=1.0", *pairs)
    masked = run(tmp_path / "masked", "masked", method, epochs=3, pairs=pairs)
    csr = run(tmp_path / "csr", "csr", method, epochs=3, pairs=pairs)
    assert_same_run(masked, csr, tmp_path / "masked", tmp_path / "csr")
    assert sum(record["connections_changed"] for record in csr["epochs"]) > 0
