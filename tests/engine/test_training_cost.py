"""Training multiply-adds counted the RigL way (3 × the sparse forward per sample, a dense weight gradient on
the steps where a method records one), checked step by step against the masks; a run sums them per epoch
and in total; the dense reference step leaves the run untouched."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

import evosparse
from evosparse.engine import loop, reference_step
from evosparse.engine.config import build_config
from evosparse.engine.objectives import Classification
from evosparse.engine.reference_step import ReferenceStep
from evosparse.engine.training_cost import TrainingCostMeter
from support import batches


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))


def brute_force_forward(model: nn.Sequential, sparsifier) -> int:
    """Σ active weights of every linear layer, read off the masks (each weight is used once per sample)."""
    masks = {layer.module: layer.mask for layer in sparsifier.topology.layers}
    return sum(int(masks[m].sum()) if m in masks else m.weight.numel() for m in model if isinstance(m, nn.Linear))


@pytest.mark.parametrize("method", ["rigl", "gmp"])
def test_each_step_costs_three_sparse_forwards_plus_the_dense_gradients_a_method_records(method):
    model = mlp()
    dense = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    params = {"update_unit": "step", "update_interval": 2, "update_until": 1.0}
    if method == "gmp":
        params |= {"prune_begin": 0.2, "update_until": 0.8}
    s = evosparse.sparsify(model, optimizer, method, density=0.3, total_steps=12, **params)
    meter = TrainingCostMeter(model, torch.zeros(1, 20), s)
    forwards, dense_gradient_steps = set(), 0
    for step, (x, y) in enumerate(batches(12), 1):
        cost = meter.step(x.shape[0])
        forward = brute_force_forward(model, s)
        forwards.add(forward)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        s.step()
        # RigL grows from the dense gradient of the step an update follows; GMP prunes by magnitude alone.
        records = method == "rigl" and s.take_stats().updates > 0
        dense_gradient_steps += records
        assert cost.sparse == x.shape[0] * (3 * forward + (dense - forward if records else 0)), step
        assert cost.dense == x.shape[0] * 3 * dense
    assert dense_gradient_steps == (5 if method == "rigl" else 0)
    if method == "gmp":  # starts dense, prunes as it goes: the count follows every pruning step
        assert max(forwards) == dense and len(forwards) > 2


def tiny_config(tmp_path, method: str, **extra) -> object:
    values = {"method": method, "hidden": [16, 8], "epochs": 2, "density": 0.25, "out": str(tmp_path / method)}
    return build_config(None, values | extra)


@pytest.mark.parametrize("method", ["dense", "static", "set"])
def test_a_run_records_its_training_cost_per_epoch_and_in_total(tmp_path, monkeypatch, method):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)
    result = loop.train(tiny_config(tmp_path, method), progress=False)
    epochs = result["epochs"]
    total = result["training_macs"]
    assert total["sparse"] == sum(e["train_macs"] for e in epochs)
    assert total["dense"] == sum(e["train_macs_dense"] for e in epochs)
    samples = result["train_samples"]
    assert all(e["train_macs_dense"] == 3 * samples * result["inference_macs"]["dense"] for e in epochs)
    # Neither method records dense gradients and an MLP uses each weight once per sample: the training cost
    # relative to dense is the density.
    assert total["relative"] == pytest.approx(result["params_active"] / result["params_dense"])
    assert (method == "dense") == (total["relative"] == 1.0)
    with open(tmp_path / method / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["train_macs"]) for row in rows] == [e["train_macs"] for e in epochs]
    assert json.loads((tmp_path / method / "result.json").read_text())["training_macs"] == total


def test_the_reference_step_is_timed_and_leaves_the_run_exactly_as_without_it(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)
    timed = loop.train(tiny_config(tmp_path / "a", "set", dropout=0.2), progress=False)
    assert all(e["reference_step_s"] > 0 for e in timed["epochs"])
    monkeypatch.setattr(ReferenceStep, "measure", lambda self: None)
    plain = loop.train(tiny_config(tmp_path / "b", "set", dropout=0.2), progress=False)
    for key in ("train_loss", "val_loss", "test_loss", "test_acc"):
        assert [e[key] for e in timed["epochs"]] == [e[key] for e in plain["epochs"]], key


def test_a_model_too_large_for_a_dense_twin_has_no_reference(monkeypatch):
    monkeypatch.setattr(reference_step, "REFERENCE_PARAMETER_LIMIT", 10)
    x, y = torch.zeros(4, 20), torch.zeros(4, dtype=torch.long)
    reference = ReferenceStep(mlp, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), Classification(), x, y)
    assert reference.model is None and reference.measure() is None
