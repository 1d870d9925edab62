"""Per-layer densities per epoch: result.json's `layer_active`, `layers.csv` (one row per epoch and layer),
consistent with the global density, kept across a kill and resume."""

from __future__ import annotations

import csv

import pytest

from evosparse.engine import loop
from evosparse.engine.config import build_config
from support import killed_then_resumed

#: GMP starts dense and prunes to its target during the run, so per-layer densities change between epochs.
SETTINGS = {
    "method": "gmp",
    "hidden": [16],
    "epochs": 4,
    "density": 0.2,
    "batch_size": 128,
    "snapshots": False,
    "params": {"update_interval": 10},
}


@pytest.fixture(autouse=True)
def _no_run_plots(monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


def config(tmp_path, name):
    return build_config(None, {**SETTINGS, "out": str(tmp_path / name)})


def rows(folder):
    with open(folder / "layers.csv") as handle:
        return list(csv.DictReader(handle))


def test_each_epoch_records_every_layers_active_weights_and_they_add_up_to_the_global_density(tmp_path):
    result = loop.train(config(tmp_path, "run"), progress=False)
    layers, epochs = result["layers"], result["epochs"]
    for epoch in epochs:
        assert sum(epoch["layer_active"]) == round(epoch["density"] * result["params_dense"])
    assert epochs[0]["density"] > epochs[-1]["density"]  # GMP is still pruning after epoch 1
    assert all(first > last for first, last in zip(epochs[0]["layer_active"], epochs[-1]["layer_active"]))
    assert epochs[-1]["layer_active"] == [layer["active"] for layer in layers]
    table = rows(tmp_path / "run")
    assert [(int(r["epoch"]), r["layer"]) for r in table] == [
        (e, layer["name"]) for e in (1, 2, 3, 4) for layer in layers
    ]
    for row, (epoch, layer) in zip(table, [(e, layer) for e in epochs for layer in layers]):
        active = epoch["layer_active"][layers.index(layer)]
        assert int(row["active"]) == active and row["shape"] == "x".join(map(str, layer["shape"]))
        assert float(row["density"]) == pytest.approx(active / (layer["shape"][0] * layer["shape"][1]))
        assert float(row["target_density"]) == pytest.approx(layer["target_density"])
    with open(tmp_path / "run" / "metrics.csv") as handle:
        assert "layer_active" not in handle.readline()


def test_a_resumed_run_writes_the_same_per_layer_history(tmp_path, monkeypatch):
    loop.train(config(tmp_path, "full"), progress=False)
    killed_then_resumed(lambda: config(tmp_path, "cut"), monkeypatch, kill_after_epoch=2)
    assert rows(tmp_path / "cut") == rows(tmp_path / "full")
